#!/usr/bin/python3
"""Checks how Kubernetes manifests wire the ragserve auth Secret (docs/SECURITY.md).

  - No Secret reference is optional (secretKeyRef, envFrom secretRef, secret volumes and projected
    secrets): a missing Secret must fail the rollout, never start a service without auth.
  - The three credentials go to the right workloads: the router gets the public, internal and
    admin tokens; every other ragserve service container gets internal and admin, never public.

Usage: secret_refs.py FILE_OR_DIR...            exit 1 listing the problems
       secret_refs.py --must-fail FIXTURE...    exit 0 only if every fixture has a problem
                                                 (shows that the check catches them)
"""
import os
import sys

import yaml

SERVICES = {"ragserve-router", "ragserve-index", "ragserve-kvr", "ragserve-ctxcache",
            "ragserve-decoder"}
PUBLIC, INTERNAL, ADMIN = "RAGSERVE_AUTH_TOKEN", "RAGSERVE_INTERNAL_TOKEN", "RAGSERVE_ADMIN_TOKEN"


def yaml_files(paths):
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                for f in sorted(files):
                    if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml":
                        yield os.path.join(root, f)
        else:
            yield p


def pod_specs(obj):
    spec = obj.get("spec") or {}
    if obj.get("kind") in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return [spec.get("template", {}).get("spec", {})]
    if obj.get("kind") == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    if obj.get("kind") == "Pod":
        return [spec]
    return []


def optional_refs(pod):
    """Yields a description of every optional Secret reference in a pod spec."""
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for e in c.get("env", []) or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref.get("optional"):
                yield f"container {c['name']} env {e['name']}: secretKeyRef {ref.get('name')} is optional"
        for src in c.get("envFrom", []) or []:
            ref = src.get("secretRef")
            if ref and ref.get("optional"):
                yield f"container {c['name']} envFrom: secretRef {ref.get('name')} is optional"
    for v in pod.get("volumes", []) or []:
        if (v.get("secret") or {}).get("optional"):
            yield f"volume {v['name']}: secret {v['secret'].get('secretName')} is optional"
        for s in (v.get("projected") or {}).get("sources", []) or []:
            if (s.get("secret") or {}).get("optional"):
                yield f"volume {v['name']}: projected secret {s['secret'].get('name')} is optional"


def secret_env(c):
    return {e["name"] for e in c.get("env", []) or []
            if (e.get("valueFrom") or {}).get("secretKeyRef")}


def wiring_problems(pod):
    for c in pod.get("containers", []):
        cmd = (c.get("command") or [""])[0]
        if cmd not in SERVICES:
            continue
        env = secret_env(c)
        want = {PUBLIC, INTERNAL, ADMIN} if cmd == "ragserve-router" else {INTERNAL, ADMIN}
        for name in sorted(want - env):
            yield f"container {c['name']} ({cmd}): {name} is not taken from the auth Secret"
        if cmd != "ragserve-router" and PUBLIC in env:
            yield (f"container {c['name']} ({cmd}): gets the public token {PUBLIC}, which only "
                   "the router needs")


def problems(paths):
    out = []
    for path in yaml_files(paths):
        with open(path) as f:
            for obj in yaml.safe_load_all(f):
                if not isinstance(obj, dict):
                    continue
                name = f"{path}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
                for pod in pod_specs(obj):
                    out += [f"{name}: {p}" for p in optional_refs(pod)]
                    out += [f"{name}: {p}" for p in wiring_problems(pod)]
    return out


def main(argv):
    if argv[:1] == ["--must-fail"]:
        ok = True
        for fixture in argv[1:]:
            found = problems([fixture])
            print(f"{fixture}: {len(found)} problems (expected some)")
            for p in found:
                print("  caught:", p)
            ok = ok and bool(found)
        return 0 if ok and len(argv) > 1 else 1
    found = problems(argv)
    for p in found:
        print("FAIL:", p, file=sys.stderr)
    print(f"{len(found)} problems with auth Secret references")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
