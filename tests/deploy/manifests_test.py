#!/usr/bin/python3
"""Checks deploy/k8s against the Kubernetes API schema and against the binaries themselves.

For every overlay: render it (kubectl kustomize), validate every object with the kubernetes-models
schemas (deploy/validate), lint with yamllint, then for every ragserve container:
  - a service binary must accept its command, args and environment (--check-flags);
  - a tool (make-tiny-model, ragserve-index-build) is run for real, with its in-pod paths mapped
    to a temporary directory and the repository's corpus;
  - its --port / --metrics-port (/ --http-port) match the declared container ports and the gRPC
    probes;
  - the memory its flags allow (stores, request budgets, gRPC quota) leaves room under its
    container's memory limit;
every Service's targetPort must name or number a port of the pods it selects; the auth Secret
is required and wired as secret_refs.py checks; every
HorizontalPodAutoscaler targets a workload of the overlay and scales on metrics something serves
(a custom per-pod metric needs a prometheus-adapter rule in the overlay that serves it; the gpu
overlay's decoders scale on queue depth, not CPU). The Grafana dashboards under deploy/grafana
are well-formed and every query parses as PromQL (promtool check rules); that they name only
exported series is checked against live services by tests/e2e/serving_metrics_e2e_test.cc.
Usage: manifests_test.py <repo root> <build bin dir>. Exit 77 (ctest: skipped) without kubectl.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import secret_refs  # noqa: E402  (the auth Secret checks, also a ctest of their own)

ROOT, BIN = sys.argv[1], sys.argv[2]
K8S = os.path.join(ROOT, "deploy", "k8s")
VALIDATE = os.path.join(ROOT, "deploy", "validate")
SERVICES = {"ragserve-router", "ragserve-index", "ragserve-kvr", "ragserve-ctxcache",
            "ragserve-decoder"}
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg, file=sys.stderr)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def flag_value(args, name):
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def pod_specs(obj):
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def pod_labels(obj):
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return obj["spec"]["template"]["metadata"].get("labels", {})
    return None


def container_env(c, configmaps):
    env = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref:
            env.update(configmaps.get(ref["name"], {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e:
            env[e["name"]] = "pod-0"
        elif "secretKeyRef" in e:
            # Distinct per key: the services refuse one token for two credentials.
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = f"secret-from-k8s-{ref['name']}-{ref['key']}"
    return env


def map_paths(arg, tmp):
    arg = arg.replace("/usr/share/ragserve/corpus", os.path.join(ROOT, "data", "corpus"))
    arg = arg.replace("/usr/share/ragserve/models", os.path.join(ROOT, "data", "models"))
    for prefix in ("/models", "/var/lib/ragserve"):
        arg = arg.replace(prefix, os.path.join(tmp, prefix.strip("/").replace("/", "_")))
    return arg


# MiB each service may hold by its flags (stores and request budgets), as (flag, default MiB,
# MiB per unit of the flag): the defaults of services/*/main.cc and services/common/config.h.
MEMORY_FLAGS = {
    "ragserve-kvr": [("--memory-limit-gib", 8 * 1024, 1024)],
    "ragserve-index": [("--memory-limit-mb", 4096, 1)],
    "ragserve-ctxcache": [("--ram-mb", 1024, 1)],
    "ragserve-decoder": [("--kv-budget-mb", 4096, 1), ("--passage-cache-mb", 1024, 1)],
}
# Every service: what queued and running requests (the router has a second such budget for its
# queries) and the gRPC transport may hold.
REQUEST_FLAGS = [("--executor-queue-mb", 256, 1), ("--grpc-memory-mb", 256, 1)]
# Left for the binary, a model's weights, what the index holds beyond its collections' estimate
# (RocksDB's caches) and transient copies of requests beyond the flags' accounting (docs/RELIABILITY.md "Floods": what each service's limit is made of).
MEMORY_ROOM_MIB = 512


def quantity_mib(q):
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024, "K": 1e3 / 2**20,
             "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[:-len(u)]) * f
    return float(q) / 2**20


def check_memory(where, binary, args, env, c):
    """The memory a service's flags allow, plus MEMORY_ROOM_MIB, fits its container's limit."""
    limit = c.get("resources", {}).get("limits", {}).get("memory")
    if limit is None:
        fail(f"{where}: {binary} has no memory limit")
        return
    total, parts = 0.0, []
    flags = MEMORY_FLAGS.get(binary, []) + REQUEST_FLAGS
    if binary == "ragserve-router":
        flags = flags + [REQUEST_FLAGS[0]]  # the query queue's budget of the same size
    for flag, default, per_unit in flags:
        value = flag_value(args, flag)
        if value is None:
            value = env.get("RAGSERVE_" + flag[2:].upper().replace("-", "_"))
        mib = default if value is None else float(value) * per_unit
        total += mib
        parts.append(f"{flag} {mib:.0f}")
    if total + MEMORY_ROOM_MIB > quantity_mib(limit):
        fail(f"{where}: its flags allow {total:.0f} MiB ({', '.join(parts)}); with "
             f"{MEMORY_ROOM_MIB} MiB of room that passes its memory limit {limit}")


def check_container(where, c, configmaps, tmp, ran_tools):
    if not c.get("image", "").startswith("ragserve"):
        return
    cmd = c.get("command") or []
    if not cmd:
        fail(f"{where}: ragserve container without an explicit command")
        return
    binary = os.path.join(BIN, cmd[0])
    if not os.path.exists(binary):
        fail(f"{where}: runs {cmd[0]}, which the build does not produce")
        return
    args = list(cmd[1:]) + list(c.get("args", []))
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("RAGSERVE_")}
    env.update(container_env(c, configmaps))
    if cmd[0] in SERVICES:
        r = run([binary] + args + ["--check-flags"], env=env)
        if r.returncode != 0:
            fail(f"{where}: {cmd[0]} rejects its manifest args {args}: {r.stdout}{r.stderr}")
        check_memory(where, cmd[0], args, env, c)
        ports = {p["containerPort"]: p.get("name", "") for p in c.get("ports", [])}
        port, mport = flag_value(args, "--port"), flag_value(args, "--metrics-port")
        if port is None or int(port) not in ports or not ports[int(port)].endswith("grpc"):
            fail(f"{where}: --port={port} is not a declared *grpc container port {ports}")
        if mport is None or int(mport) not in ports or "metrics" not in ports[int(mport)]:
            fail(f"{where}: --metrics-port={mport} is not a declared metrics port {ports}")
        hport = flag_value(args, "--http-port")
        if hport is not None and int(hport) != 0 and ports.get(int(hport)) != "http":
            fail(f"{where}: --http-port={hport} is not a declared http container port {ports}")
        for probe in ("readinessProbe", "livenessProbe"):
            p = c.get(probe, {}).get("grpc", {}).get("port")
            if p is None or str(p) != str(port):
                fail(f"{where}: {probe} is not a gRPC probe on --port {port} (got {p})")
    else:
        key = (cmd[0], tuple(args))
        if key in ran_tools:
            return
        ran_tools.add(key)
        mapped = [map_paths(a, tmp) for a in args]
        for a in mapped:
            if "=" in a and a.split("=", 1)[1].startswith(tmp):
                os.makedirs(os.path.dirname(a.split("=", 1)[1]), exist_ok=True)
        r = run([binary] + mapped, env=env, timeout=600)
        if r.returncode != 0:
            fail(f"{where}: {cmd[0]} {mapped} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")


def adapter_metrics(objs):
    """Custom metric names served by the prometheus-adapter rules ConfigMaps of a render."""
    served = set()
    for o in objs:
        if o["kind"] != "ConfigMap" or "prometheus-adapter" not in o["metadata"]["name"]:
            continue
        for rule in yaml.safe_load(o["data"]["config.yaml"]).get("rules", []):
            series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
            served.add(rule.get("name", {}).get("as", series))
    return served


def check_autoscalers(overlay, objs):
    workloads = {(o["kind"], o["metadata"]["name"]) for o in objs if pod_labels(o) is not None}
    served = adapter_metrics(objs)
    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        where = f"{overlay} HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        spec = hpa["spec"]
        ref = spec["scaleTargetRef"]
        if (ref["kind"], ref["name"]) not in workloads:
            fail(f"{where}: scales {ref['kind']}/{ref['name']}, which the overlay lacks")
        if spec.get("minReplicas", 1) > spec["maxReplicas"]:
            fail(f"{where}: minReplicas {spec.get('minReplicas')} > maxReplicas {spec['maxReplicas']}")
        for m in spec.get("metrics", []):
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in served:
                fail(f"{where}: custom metric {m['pods']['metric']['name']} is served by no "
                     f"prometheus-adapter rule of the overlay (served: {sorted(served)})")
        if overlay == "gpu" and ref["name"] == "decoder":
            kinds = [(m["type"], m.get("pods", {}).get("metric", {}).get("name")) for m in
                     spec.get("metrics", [])]
            if kinds != [("Pods", "ragserve_num_requests_waiting")]:
                fail(f"{where}: GPU decoders must scale on queue depth "
                     f"(Pods metric ragserve_num_requests_waiting) only, got {kinds}")


def check_dashboards(tmp):
    folder = os.path.join(ROOT, "deploy", "grafana")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name)) as f:
            dash = json.load(f)
        exprs = []
        for p in dash["panels"]:
            if p["type"] == "row":
                continue
            if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
                fail(f"grafana/{name}: panel '{p.get('title')}' has a target without a query")
            exprs += [(p["title"], t["expr"]) for t in p.get("targets", [])]
        if not dash.get("uid") or not exprs:
            fail(f"grafana/{name}: no uid or no queries")
        # Grafana's variables replaced by values, each query becomes a recording rule that
        # promtool parses.
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}",
             "expr": e.replace("$__rate_interval", "5m").replace("$model_name", ".*")}
            for i, (_, e) in enumerate(exprs)]}]}
        path = os.path.join(tmp, name + ".rules.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(rules, f)
        r = run(["promtool", "check", "rules", path])
        if r.returncode != 0:
            fail(f"grafana/{name}: a query is not valid PromQL: {r.stdout}{r.stderr}")
        print(f"grafana/{name}: {len(exprs)} queries parse")


def check_overlay(overlay, tmp):
    r = run(["kubectl", "kustomize", os.path.join(K8S, "overlays", overlay)])
    if r.returncode != 0:
        fail(f"{overlay}: kubectl kustomize failed: {r.stderr}")
        return
    rendered = os.path.join(tmp, overlay + ".yaml")
    with open(rendered, "w") as f:
        f.write(r.stdout)
    v = run(["node", os.path.join(VALIDATE, "validate.js"), rendered],
            env=dict(os.environ, NODE_PATH=os.path.join(VALIDATE, "node_modules")))
    print(f"{overlay}: {v.stdout.strip()}")
    if v.returncode != 0:
        fail(f"{overlay}: schema validation failed:\n{v.stderr[-4000:]}")
    objs = [o for o in yaml.safe_load_all(r.stdout) if o]
    for p in secret_refs.problems([rendered]):
        fail(f"{overlay}: {p}")
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    ran_tools = set()
    work = os.path.join(tmp, overlay + "-volumes")  # fresh volumes per overlay
    os.makedirs(work)
    for o in objs:
        for spec in pod_specs(o):
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                check_container(f"{overlay} {o['kind']}/{o['metadata']['name']}/{c['name']}", c,
                                configmaps, work, ran_tools)
    check_autoscalers(overlay, objs)
    # Services: selector matches pods, target ports exist on them.
    workloads = [o for o in objs if pod_labels(o) is not None]
    for svc in (o for o in objs if o["kind"] == "Service"):
        sel = svc["spec"].get("selector", {})
        pods = [w for w in workloads if all(pod_labels(w).get(k) == v for k, v in sel.items())]
        if not pods:
            fail(f"{overlay} Service/{svc['metadata']['name']}: selects no workload")
            continue
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            ok = False
            for w in pods:
                for c in w["spec"]["template"]["spec"]["containers"]:
                    for cp in c.get("ports", []):
                        if target in (cp.get("name"), cp["containerPort"]) and \
                                cp["containerPort"] == p["port"]:
                            ok = True
            if not ok:
                fail(f"{overlay} Service/{svc['metadata']['name']}: port {p['port']} -> "
                     f"{target} matches no container port of the same number")


def main():
    if shutil.which("kubectl") is None:
        print("SKIPPED: kubectl is not installed (it renders the kustomize overlays)")
        return 77
    if not os.path.isdir(os.path.join(VALIDATE, "node_modules", "kubernetes-models")):
        fail("deploy/validate/node_modules missing: run tools/setup-deps (npm ci)")
        return 1
    lint = run(["yamllint", "-c", os.path.join(ROOT, "deploy", ".yamllint"), os.path.join(ROOT, "deploy")])
    if lint.returncode != 0:
        fail(f"yamllint:\n{lint.stdout}{lint.stderr}")
    tmp = tempfile.mkdtemp(prefix="manifests-")
    for overlay in sorted(os.listdir(os.path.join(K8S, "overlays"))):
        check_overlay(overlay, tmp)
    check_dashboards(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
