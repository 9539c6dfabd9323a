#!/usr/bin/env node
// Validates every object of rendered Kubernetes YAML (files or stdin) against the API schema of
// its apiVersion/kind, using the kubernetes-models package (JSON schemas generated from the
// Kubernetes OpenAPI spec). Exit 1 with the object and the schema errors on the first failures.
'use strict';
const fs = require('fs');
const yaml = require('js-yaml');

function modelFor(apiVersion, kind) {
  // "apps/v1" -> kubernetes-models/apps/v1/<Kind>; "v1" -> kubernetes-models/v1/<Kind>
  const path = `kubernetes-models/${apiVersion}/${kind}`;
  try {
    const mod = require(path);
    return mod[kind] || mod.default;
  } catch (e) {
    return null;
  }
}

const inputs = process.argv.slice(2);
const texts = inputs.length ? inputs.map((f) => fs.readFileSync(f, 'utf8'))
                            : [fs.readFileSync(0, 'utf8')];
let count = 0;
let failures = 0;
for (const text of texts) {
  for (const obj of yaml.loadAll(text)) {
    if (obj === null || obj === undefined) continue;
    count++;
    const name = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
    if (!obj.apiVersion || !obj.kind) {
      console.error(`object without apiVersion/kind: ${JSON.stringify(obj).slice(0, 200)}`);
      failures++;
      continue;
    }
    const Model = modelFor(obj.apiVersion, obj.kind);
    if (!Model) {
      console.error(`${name}: no schema for ${obj.apiVersion} ${obj.kind} (unknown API)`);
      failures++;
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (e) {
      failures++;
      console.error(`${name}: ${e.message}`);
      if (e.errors) console.error(JSON.stringify(e.errors, null, 2).slice(0, 4000));
    }
  }
}
if (count === 0) {
  console.error('no objects to validate');
  process.exit(1);
}
console.log(`validated ${count} objects, ${failures} invalid`);
process.exit(failures ? 1 : 0);
