#!/usr/bin/env node
// The public gRPC API from a second language with no generated code: @grpc/grpc-js with
// @grpc/proto-loader reading proto/ragserve/v1/*.proto at run time, against a running cluster.
//
// Usage: node grpc_client_test.js --target HOST:PORT --token T --admin-token A --collection C --question Q
//        --max-tokens N
// Run by tests/e2e/clients_e2e_test.cc, which starts the cluster, ingests collection C and checks
// the answer printed on the last line (JSON: text, token_ids) against its own C++ client's.
// Creates, fills, lists, queries and drops a collection of its own ("node-client").
'use strict';
const assert = require('assert');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    assert(argv[i].startsWith('--') && i + 1 < argv.length, `bad argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['target', 'token', 'admin-token', 'collection', 'question', 'max-tokens']) {
    assert(out[k] !== undefined, `--${k} is required`);
  }
  return out;
}

function loadRagService() {
  const protoDir = path.resolve(__dirname, '..', '..', '..', 'proto');
  const def = protoLoader.loadSync(path.join(protoDir, 'ragserve/v1/rag.proto'), {
    includeDirs: [protoDir],
    keepCase: true,   // field names as in the .proto
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,     // QueryEvent.event names the field that is set
  });
  return grpc.loadPackageDefinition(def).ragserve.v1.RagService;
}

const deadline = () => new Date(Date.now() + 60000);

// The bearer token every call carries (set in main): the public credential, and the admin one
// for the calls that need it (collection create/drop/stats: docs/SECURITY.md).
let auth = new grpc.Metadata();
let adminAuth = new grpc.Metadata();
function bearer(token) {
  const md = new grpc.Metadata();
  md.add('authorization', `Bearer ${token}`);
  return md;
}

function unary(client, method, request, md = auth) {
  return new Promise((resolve, reject) => {
    client[method](request, md, { deadline: deadline() },
      (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

function ingest(client, collection, createSpec, batches) {
  return new Promise((resolve, reject) => {
    const call = client.Ingest(createSpec ? adminAuth : auth, { deadline: deadline() },
      (err, resp) => (err ? reject(err) : resolve(resp)));
    call.write({ collection, create_spec: createSpec });
    for (const documents of batches) call.write({ documents });
    call.end();
  });
}

// The Query stream gathered: passages, deltas' text and ids, stats, in arrival order.
function query(client, request) {
  return new Promise((resolve, reject) => {
    const answer = { order: [], passages: [], text: '', token_ids: [], stats: null };
    const call = client.Query(request, auth, { deadline: deadline() });
    call.on('data', (ev) => {
      answer.order.push(ev.event);
      if (ev.event === 'passages') answer.passages = ev.passages.passages;
      if (ev.event === 'delta') {
        answer.text += ev.delta.text;
        answer.token_ids.push(...ev.delta.token_ids);
      }
      if (ev.event === 'stats') answer.stats = ev.stats;
    });
    call.on('error', reject);
    call.on('end', () => resolve(answer));
  });
}

async function ownCollection(client) {
  const name = 'node-client';
  const spec = { name, dimension: 256, metric: 'METRIC_COSINE', index_kind: 'INDEX_KIND_FLAT' };
  const resp = await ingest(client, name, spec, [
    [{ id: 'n1', text: 'Herons nest by the Ostvik harbour.', metadata_json: '{"k":"v"}' }],
    [{ id: 'n2', text: 'The Ostvik harbour freezes in January.' }],
  ]);
  assert.strictEqual(resp.ingested, 2);
  const listed = await unary(client, 'ListCollections', {});
  const info = listed.collections.find((c) => c.spec.name === name);
  assert(info, `ListCollections lacks ${name}`);
  assert.strictEqual(info.num_documents, 2);
  assert.strictEqual(info.spec.index_kind, 'INDEX_KIND_FLAT');
  const a = await query(client, {
    collection: name, question: 'When does the harbour freeze?', top_k: 2,
    sampling: { max_tokens: 3, ignore_eos: true },
  });
  assert.deepStrictEqual(a.passages.map((p) => p.id).sort(), ['n1', 'n2']);
  assert.strictEqual(a.passages.find((p) => p.id === 'n1').metadata_json, '{"k":"v"}');
  await assert.rejects(unary(client, 'DropCollection', { name }),
    (e) => e.code === grpc.status.PERMISSION_DENIED);  // the public credential may not drop
  await unary(client, 'DropCollection', { name }, adminAuth);
  await assert.rejects(unary(client, 'Stats', { collection: name }, adminAuth),
    (e) => e.code === grpc.status.NOT_FOUND);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const RagService = loadRagService();
  const client = new RagService(args.target, grpc.credentials.createInsecure());
  await assert.rejects(unary(client, 'ListCollections', {}),
    (e) => e.code === grpc.status.UNAUTHENTICATED);
  auth = bearer(args.token);
  adminAuth = bearer(args['admin-token']);
  await assert.rejects(query(client, { collection: args.collection, question: '' }),
    (e) => e.code === grpc.status.INVALID_ARGUMENT);
  await ownCollection(client);
  const maxTokens = Number(args['max-tokens']);
  const a = await query(client, {
    collection: args.collection, question: args.question, top_k: 2,
    sampling: { max_tokens: maxTokens, ignore_eos: true },
  });
  assert.strictEqual(a.order[0], 'passages');
  assert.strictEqual(a.order[a.order.length - 1], 'stats');
  assert(a.order.slice(1, -1).every((e) => e === 'delta'));
  assert.strictEqual(a.token_ids.length, maxTokens);
  assert.strictEqual(a.stats.generated_tokens, maxTokens);
  assert.strictEqual(a.stats.finish_reason, 'length');
  client.close();
  console.log(JSON.stringify({ text: a.text, token_ids: a.token_ids }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
