"""A small Python client of a ragserve cluster over gRPC, for tools/eval and tests/quality.

The Python stubs are generated at run time from proto/ragserve/v1/*.proto with Debian's protoc and
grpc_python_plugin (python3-grpcio, protobuf-compiler-grpc) into a temporary folder, so the client
always speaks the contract in the checkout and nothing is generated into the tree.

  stubs = load_stubs()
  with Cluster(bin_dir, model, work_dir) as c:        # tools/up on a free block of ports
      cl = Client(stubs, c.addrs)
      r = cl.generate("How long is the Nawerk River?", passages, mode=Mode.SEQUENTIAL)

A cluster started elsewhere is reached with Addrs.from_router("host:port") (the tools/up layout:
router P, index P+1, kvr P+2, ctxcache P+3, decoder P+4, metrics +40).
"""
import atexit
import glob
import importlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVICES = ["router", "index", "kvr", "ctxcache", "decoder"]  # tools/up port order
METRICS_OFFSET = 40

_stubs = None


def load_stubs(root=ROOT):
    """Generates and imports the ragserve.v1 Python modules (once per process)."""
    global _stubs
    if _stubs is not None:
        return _stubs
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise SystemExit("python3-grpcio is missing (apt-get install python3-grpcio); run with "
                         "/usr/bin/python3")
    protoc = shutil.which("protoc") or "/usr/bin/protoc"
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    for tool in (protoc, plugin):
        if not os.path.exists(tool):
            raise SystemExit("%s is missing (apt-get install protobuf-compiler "
                             "protobuf-compiler-grpc)" % tool)
    out = tempfile.mkdtemp(prefix="ragserve-pystubs-")
    atexit.register(shutil.rmtree, out, True)
    protos = sorted(glob.glob(os.path.join(root, "proto", "ragserve", "v1", "*.proto")))
    subprocess.run([protoc, "-I", os.path.join(root, "proto"), "--python_out=" + out,
                    "--grpc_out=" + out, "--plugin=protoc-gen-grpc=" + plugin] + protos,
                   check=True)
    sys.path.insert(0, out)
    ns = types.SimpleNamespace()
    for p in protos:
        name = os.path.splitext(os.path.basename(p))[0]
        setattr(ns, name, importlib.import_module("ragserve.v1.%s_pb2" % name))
        setattr(ns, name + "_grpc", importlib.import_module("ragserve.v1.%s_pb2_grpc" % name))
    _stubs = ns
    return ns


# ---- addresses and a local cluster -------------------------------------------------------------

class Addrs:
    """gRPC and metrics addresses of the services of one cluster."""

    def __init__(self, host, ports):
        self.host = host
        self.ports = dict(ports)

    @classmethod
    def from_router(cls, addr):
        host, port = addr.rsplit(":", 1)
        base = int(port)
        return cls(host, {s: base + i for i, s in enumerate(SERVICES)})

    def grpc(self, service):
        return "%s:%d" % (self.host, self.ports[service])

    def metrics(self, service):
        return "%s:%d" % (self.host, self.ports[service] + METRICS_OFFSET)


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port():
    """A base port P with P..P+4 and their metrics ports P+40..P+44 free (tools/up's layout)."""
    start = 20000 + (os.getpid() * 97) % 20000
    for i in range(400):
        base = 20000 + (start - 20000 + i * 50) % 20000
        ports = [base + j for j in range(len(SERVICES))]
        ports += [p + METRICS_OFFSET for p in ports]
        if all(_port_free(p) for p in ports):
            return base
    raise SystemExit("no free block of ports for the cluster")


class Cluster:
    """The five services on loopback through tools/up, stopped on exit (context manager).
    `decoder_args` go to RAGSERVE_UP_ARGS_DECODER (e.g. "--passage-cache-mb 0")."""

    def __init__(self, bin_dir, model, work_dir, base_port=0, decoder_args="", ctxcache_args="",
                 timeout_s=120, quiet=True):
        self.bin_dir = os.path.abspath(bin_dir)
        self.model = os.path.abspath(model)
        self.dir = os.path.abspath(work_dir)
        self.base = base_port or free_base_port()
        self.decoder_args = decoder_args
        self.ctxcache_args = ctxcache_args
        self.timeout_s = timeout_s
        self.quiet = quiet
        self.addrs = Addrs("127.0.0.1", {s: self.base + i for i, s in enumerate(SERVICES)})
        self.started = False

    def _up(self, *args):
        env = dict(os.environ)
        env["RAGSERVE_UP_ARGS_DECODER"] = self.decoder_args
        env["RAGSERVE_UP_ARGS_CTXCACHE"] = self.ctxcache_args
        env["RAGSERVE_UP_TIMEOUT"] = str(self.timeout_s)
        cmd = [os.path.join(ROOT, "tools", "up")] + list(args) + ["--dir", self.dir]
        return subprocess.run(cmd, env=env, capture_output=True, text=True)

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        r = self._up("start", "--bin", self.bin_dir, "--model", self.model,
                     "--base-port", str(self.base))
        if r.returncode != 0:
            raise SystemExit("cluster did not start (tools/up start):\n%s%s"
                             % (r.stdout, r.stderr))
        self.started = True
        if not self.quiet:
            sys.stderr.write(r.stdout)
        return self

    def stop(self):
        if self.started:
            r = self._up("stop")
            self.started = False
            if r.returncode != 0:
                sys.stderr.write("tools/up stop: %s%s" % (r.stdout, r.stderr))

    def alive(self, service):
        """Whether the service's process (tools/up's pid file) is still running."""
        try:
            with open(os.path.join(self.dir, "run", service + ".pid")) as f:
                pid = int(f.read())
            with open("/proc/%d/status" % pid) as f:
                return not any(l.startswith("State:") and "Z" in l.split()[1] for l in f)
        except (OSError, ValueError):
            return False

    def revive(self):
        """Restarts the services that died (tools/up start skips the running ones) and waits
        until all are healthy again."""
        for svc in SERVICES:
            if not self.alive(svc):  # a zombie still answers tools/up's kill -0
                try:
                    os.remove(os.path.join(self.dir, "run", svc + ".pid"))
                except OSError:
                    pass
        r = self._up("start", "--bin", self.bin_dir, "--model", self.model,
                     "--base-port", str(self.base))
        if r.returncode != 0:
            raise SystemExit("cluster could not be revived (tools/up start):\n%s%s"
                             % (r.stdout, r.stderr))
        time.sleep(2.5)  # the router polls its workers every second

    def log_tail(self, service, lines=20):
        try:
            with open(os.path.join(self.dir, "logs", service + ".log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---- the client ----------------------------------------------------------------------------------

class Mode:
    """How the decoder builds the prompt of one Generate call."""

    def __init__(self, passages=True, sequential=False, temperature=0.0, scale=0.0,
                 disable_ape=False):
        self.passages = passages
        self.sequential = sequential
        self.temperature = temperature
        self.scale = scale
        self.disable_ape = disable_ape


Mode.NONE = Mode(passages=False)
Mode.SEQUENTIAL = Mode(sequential=True)
Mode.APE = Mode()
Mode.PARALLEL = Mode(disable_ape=True)

EOS = -1  # stands for "the model ended the answer here" in token lists


class Client:
    def __init__(self, stubs, addrs, token="", timeout_s=120):
        import grpc
        self.s = stubs
        self.addrs = addrs
        self.timeout = timeout_s
        self.md = [("authorization", "Bearer " + token)] if token else []
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        self._ch = {svc: grpc.insecure_channel(addrs.grpc(svc), options=opts)
                    for svc in ("router", "ctxcache", "decoder")}
        self.decoder = stubs.decoder_grpc.DecoderServiceStub(self._ch["decoder"])
        self.ctxcache = stubs.ctxcache_grpc.ContextCacheServiceStub(self._ch["ctxcache"])
        self.router = stubs.rag_grpc.RagServiceStub(self._ch["router"])

    def close(self):
        for ch in self._ch.values():
            ch.close()

    def sampling(self, max_tokens, seed=1):
        return self.s.common.SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed)

    def generate(self, question, passages, mode, max_tokens, resume=(), ids=None):
        """One greedy Generate call. Returns {tokens, text, finish, stats, client_ttft_ms}; tokens
        end with EOS when the model ended the answer."""
        d = self.s.decoder
        req = d.GenerateRequest(question=question, sampling=self.sampling(max_tokens),
                                sequential_context=mode.sequential,
                                resume_token_ids=list(resume))
        if mode.passages:
            for j, text in enumerate(passages):
                req.passages.add(id=ids[j] if ids else "p%d" % j, text=text)
            req.encoding.temperature = mode.temperature
            req.encoding.scale = mode.scale
            req.encoding.disable_ape = mode.disable_ape
        t0 = time.perf_counter()
        first = None
        tokens, text, stats = [], "", None
        for ev in self.decoder.Generate(req, timeout=self.timeout, metadata=self.md):
            if ev.HasField("delta"):
                if first is None and ev.delta.token_ids:
                    first = (time.perf_counter() - t0) * 1000
                tokens += list(ev.delta.token_ids)
                text += ev.delta.text
            elif ev.HasField("stats"):
                stats = ev.stats
        finish = stats.finish_reason if stats else ""
        if finish == "eos":
            tokens.append(EOS)
        return {"tokens": tokens, "text": text, "finish": finish,
                "ttft_ms": stats.timings.ttft_ms if stats else None,
                "prompt_tokens": stats.prompt_tokens if stats else None,
                "cached_prompt_tokens": stats.cached_prompt_tokens if stats else None,
                "client_ttft_ms": first}

    def next_token(self, question, passages, mode, prefix_tokens):
        """The greedy token the mode picks after `prefix_tokens` of an answer (teacher forcing
        through resume_token_ids); EOS when it ends the answer there."""
        r = self.generate(question, passages, mode, len(prefix_tokens) + 1, resume=prefix_tokens)
        return r["tokens"][0] if r["tokens"] else None

    def fingerprint(self):
        st = self.ctxcache.Stats(self.s.ctxcache.CtxStatsRequest(), timeout=self.timeout,
                                 metadata=self.md)
        return st.model.hex

    def pre_encode(self, texts, batch=64):
        """Encodes passages in the context-cache service. Returns the number encoded."""
        c = self.s.ctxcache
        fp = self.s.common.ModelFingerprint(hex=self.fingerprint())
        n = 0
        for i in range(0, len(texts), batch):
            req = c.EncodeRequest(model=fp)
            for j, t in enumerate(texts[i:i + batch]):
                req.passages.add(id="e%d" % (i + j), text=t)
            resp = self.ctxcache.Encode(req, timeout=max(self.timeout, 600), metadata=self.md)
            n += len(resp.results)
        return n

    def create_collection(self, name, index="flat", dimension=1024, drop=True, retrieval=""):
        """retrieval: "dense" | "bm25" | "hybrid" | "" (the server's default, hybrid)."""
        ix = self.s.index
        if drop:
            try:
                self.router.DropCollection(ix.DropCollectionRequest(name=name),
                                           timeout=self.timeout, metadata=self.md)
            except Exception:  # noqa: BLE001 -- absent is fine
                pass
        kinds = {"flat": ix.INDEX_KIND_FLAT, "hnsw": ix.INDEX_KIND_HNSW}
        spec = ix.CollectionSpec(name=name, dimension=dimension,
                                 metric=self.s.common.METRIC_COSINE, index_kind=kinds[index],
                                 embedder="hashing")
        if retrieval:
            spec.retrieval = {"dense": ix.RETRIEVAL_MODE_DENSE, "bm25": ix.RETRIEVAL_MODE_BM25,
                              "hybrid": ix.RETRIEVAL_MODE_HYBRID}[retrieval]
        self.router.CreateCollection(ix.CreateCollectionRequest(spec=spec), timeout=self.timeout,
                                     metadata=self.md)

    def ingest(self, collection, docs, pre_encode=True, batch=64):
        """docs: [(id, text, metadata_json)]. Returns (ingested, pre_encoded)."""
        r = self.s.rag

        def requests():
            for i in range(0, len(docs), batch):
                req = r.IngestRequest(collection=collection, pre_encode=pre_encode)
                for did, text, meta in docs[i:i + batch]:
                    req.documents.add(id=did, text=text, metadata_json=meta)
                yield req

        resp = self.router.Ingest(requests(), timeout=max(self.timeout, 900), metadata=self.md)
        return resp.ingested, resp.pre_encoded

    def query(self, collection, question, top_k, max_tokens, use_context_cache=True):
        """A RAG query through the router: {passages: [ids], tokens, text, ttft_ms, ...}."""
        r = self.s.rag
        req = r.QueryRequest(collection=collection, question=question, top_k=top_k,
                             sampling=self.sampling(max_tokens),
                             use_context_cache=use_context_cache)
        t0 = time.perf_counter()
        first = None
        ids, tokens, text, stats = [], [], "", None
        for ev in self.router.Query(req, timeout=self.timeout, metadata=self.md):
            if ev.HasField("passages"):
                ids = [p.id for p in ev.passages.passages]
            elif ev.HasField("delta"):
                if first is None and ev.delta.token_ids:
                    first = (time.perf_counter() - t0) * 1000
                tokens += list(ev.delta.token_ids)
                text += ev.delta.text
            elif ev.HasField("stats"):
                stats = ev.stats
        finish = stats.finish_reason if stats else ""
        if finish == "eos":
            tokens.append(EOS)
        return {"passages": ids, "tokens": tokens, "text": text, "finish": finish,
                "ttft_ms": stats.timings.ttft_ms if stats else None,
                "prompt_tokens": stats.prompt_tokens if stats else None,
                "cached_prompt_tokens": stats.cached_prompt_tokens if stats else None,
                "client_ttft_ms": first}

    def metric(self, service, name, labels=None):
        """Sum of a Prometheus counter/gauge on a service's /metrics (None if unreachable)."""
        import urllib.request
        try:
            with urllib.request.urlopen("http://%s/metrics" % self.addrs.metrics(service),
                                        timeout=5) as f:
                body = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        total = 0.0
        pat = re.compile(r"^%s(\{[^}]*\})?\s+(\S+)$" % re.escape(name))
        for line in body.splitlines():
            m = pat.match(line)
            if not m:
                continue
            if labels and not all('%s="%s"' % kv in (m.group(1) or "") for kv in labels.items()):
                continue
            total += float(m.group(2))
        return total


def answer_ok(text, answer):
    """(exact, contains): exact = the stripped generated text is the answer; contains = the answer
    appears in the text as whole words (" 21 days" does not contain "2"; " 1857." does)."""
    a = answer.strip()
    found = re.search(r"(?<![0-9A-Za-z])%s(?![0-9A-Za-z])" % re.escape(a), text)
    return text.strip() == a, found is not None
