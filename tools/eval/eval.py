#!/usr/bin/python3
"""tools/eval: answer quality of a ragserve cluster, measured over gRPC as users get it.

  /usr/bin/python3 tools/eval/eval.py --model data/models/reader --json eval.json
  /usr/bin/python3 tools/eval/eval.py --addr 127.0.0.1:50051 --items 50 --modes seq,ape
  /usr/bin/python3 tools/eval/eval.py --model data/models/reader --sweep --modes "" --json s.json

Items are the held-out evaluation set of tools/train-model/ragdata.py (eval_items(EVAL_SEED):
names the training never saw; the gold passage among k-1 distractors, its position cycling
0..k-1), asked with the held-out phrasing (never trained on) and with the canonical one.
Every request is greedy (temperature 0), one at a time, so reruns give the same tokens.

Modes (--modes, comma-separated):
  none      no passages: the question alone (how much the model knows without reading)
  seq       sequential prefill of instruction + passages + question (the reference)
  ape       APE: passages parallel-encoded, joined with the decoder's default T and S
  parallel  plain parallel encoding (disable_ape: T = S = 1)
  ctxcache  APE with the passages pre-encoded by the context-cache service and fetched from it
  rag       the whole RAG path: the items' passages ingested (pre-encoded) into a collection,
            each question asked through the router (index -> context cache -> decoder); hit@k
  rag-seq   as rag with use_context_cache off (the router asks for sequential prefill)
  corpus    the RAG path over the 400-passage demo corpus (data/corpus) on its questions and on
            held-out paraphrases of them (make_corpus's last phrasing); hit@k
--sweep runs the APE temperature x scale grid on the dev split (ragdata.DEV_SEED) through the
decoder's per-request EncodingSettings: accuracy and top-1 agreement with sequential prefill.

Reported per mode: exact match (stripped answer == generated text), contains (the answer appears in
the generated text as whole words: " 21" does not contain "2"), accuracy per gold position,
agreement with sequential prefill (top-1: teacher-forced, i.e. the mode's greedy token after each
prefix of the sequential answer, sent as resume_token_ids; first: first answer token; same:
identical greedy answer), TTFT (the decoder's or router's stats event, and as the client saw it)
and where the passage KV of each question's first request came from (the decoder's /metrics around
it). When the program starts the cluster it gives the decoder a passage cache of about two items'
passages (--passage-cache-mb from the model's KV size), so a question's first request finds its
passages cold: the ape and parallel modes compute them in the decoder, the ctxcache and rag modes
fetch them from the context cache; the two TTFTs are the cold and the cached case. The
teacher-forced requests that follow find them in RAM.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "train-model"))
import ragclient  # noqa: E402
from ragclient import Mode, answer_ok  # noqa: E402
import ragdata  # noqa: E402

ROOT = ragclient.ROOT
DECODER_MODES = ["seq", "none", "ape", "parallel", "ctxcache"]
ALL_MODES = DECODER_MODES + ["rag", "rag-seq", "corpus"]
DEFAULT_MODES = "none,seq,ape,parallel,ctxcache,rag,corpus"
PHRASINGS = ["heldout", "canonical"]
MODE_OF = {"none": Mode.NONE, "seq": Mode.SEQUENTIAL, "ape": Mode.APE,
           "parallel": Mode.PARALLEL, "ctxcache": Mode.APE}
PASSAGE_SOURCES = ["ram", "disk", "inflight", "computed", "remote"]


def log(msg):
    sys.stderr.write("eval: %s\n" % msg)
    sys.stderr.flush()


def pct(x):
    return "—" if x is None else "%.1f%%" % (100 * x)


def ms(x):
    return "—" if x is None else "%.1f" % x


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- agreement ---------------------------------------------------------------------------------

def teacher_forced(client, item, mode, ref, first_token):
    """The mode's greedy token after each prefix of the reference answer `ref` (tokens, EOS last
    when the reference ended): [predicted token per position]."""
    preds = [first_token]
    for i in range(1, len(ref)):
        preds.append(client.next_token(item["question"], item["passages"], mode, ref[:i]))
    return preds


def agreement(ref, tokens, preds=None):
    """top1 (teacher-forced, when preds), first-token and whole-answer agreement with `ref`."""
    out = {"first": bool(ref) and bool(tokens) and ref[0] == tokens[0], "same": ref == tokens}
    if preds is not None and ref:
        out["top1_hits"] = sum(1 for a, b in zip(ref, preds) if a == b)
        out["top1_n"] = len(ref)
        out["preds"] = preds
    return out


# ---- modes ---------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args, client, cluster=None):
        self.args = args
        self.c = client
        self.cluster = cluster
        self.restarts = []  # (what was running, the error) per decoder restart

    def guard(self, what, fn):
        """fn(); when a service of the cluster this program started died under it (UNAVAILABLE),
        restart it and run fn again (requests are greedy and independent: same result). Every
        restart is recorded and reported: it is a defect of the service, not of the item."""
        import grpc
        for attempt in range(4):
            try:
                return fn()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or self.cluster is None or attempt == 3:
                    raise
                dead = [s for s in ragclient.SERVICES if not self.cluster.alive(s)]
                if not dead:
                    raise
                log("%s: %s died (%s); restarting it" % (what, ",".join(dead), e.details()))
                self.restarts.append({"what": what, "services": dead, "error": e.details()})
                self.cluster.revive()

    def sources(self):
        return {s: self.c.metric("decoder", "ragserve_decoder_passages_total", {"source": s})
                for s in PASSAGE_SOURCES}

    @staticmethod
    def source_delta(before, after):
        out = {}
        for s in PASSAGE_SOURCES:
            if before.get(s) is None or after.get(s) is None:
                return None
            d = int(round(after[s] - before[s]))
            if d:
                out[s] = d
        return out

    def decoder_mode(self, name, items, ref=None, mode=None):
        """Runs one decoder mode over items; ref: the seq results (for agreement)."""
        mode = mode or MODE_OF[name]
        rows = []
        t0 = time.time()
        for i, it in enumerate(items):
            rows.append(self.guard("%s item %d" % (name, i),
                                   lambda: self.decoder_item(mode, i, it, ref)))
        return {"rows": rows, "seconds": time.time() - t0}

    def decoder_item(self, mode, i, it, ref):
        a = self.args
        before = self.sources() if mode.passages else None
        r = self.c.generate(it["question"], it["passages"], mode, a.max_tokens)
        kv = self.source_delta(before, self.sources()) if mode.passages else None
        exact, contains = answer_ok(r["text"], it["answer"])
        row = {"i": i, "gold": it["gold"], "answer": it["answer"], "text": r["text"],
               "tokens": r["tokens"], "finish": r["finish"], "exact": exact,
               "contains": contains, "ttft_ms": r["ttft_ms"],
               "client_ttft_ms": r["client_ttft_ms"], "prompt_tokens": r["prompt_tokens"],
               "cached_prompt_tokens": r["cached_prompt_tokens"], "kv_source": kv}
        if ref is not None:
            rt = ref[i]["tokens"]
            preds = None
            if a.teacher_forced and r["tokens"]:
                preds = teacher_forced(self.c, it, mode, rt, r["tokens"][0])
            row["agree"] = agreement(rt, r["tokens"], preds)
        return row

    def rag_items(self, name, items_by_phrasing, collection, ref):
        """Ingests the items' passages (once) and asks every question through the router."""
        a = self.args
        out = {}
        for phr, items in items_by_phrasing.items():
            rows = []
            t0 = time.time()
            for i, it in enumerate(items):
                def one():
                    before = self.sources()
                    r = self.c.query(collection["name"], it["question"], a.k, a.max_tokens,
                                     use_context_cache=(name == "rag"))
                    return r, self.source_delta(before, self.sources())

                r, kv = self.guard("%s item %d" % (name, i), one)
                gold_id = collection["id_of"][it["passages"][it["gold"]]]
                exact, contains = answer_ok(r["text"], it["answer"])
                row = {"i": i, "gold": it["gold"], "answer": it["answer"], "text": r["text"],
                       "tokens": r["tokens"], "finish": r["finish"], "exact": exact,
                       "contains": contains, "hit": gold_id in r["passages"],
                       "retrieved": r["passages"], "ttft_ms": r["ttft_ms"],
                       "client_ttft_ms": r["client_ttft_ms"],
                       "cached_prompt_tokens": r["cached_prompt_tokens"], "kv_source": kv}
                if ref is not None and phr in ref:
                    row["agree"] = agreement(ref[phr]["rows"][i]["tokens"], r["tokens"])
                rows.append(row)
            out[phr] = {"rows": rows, "seconds": time.time() - t0}
            log("%s/%s: %s" % (name, phr, summary_line(out[phr])))
        return out

    def ingest_items(self, items_by_phrasing):
        """One collection with every item passage (the phrasings share their passages)."""
        id_of, docs = {}, []
        for items in items_by_phrasing.values():
            for i, it in enumerate(items):
                for j, text in enumerate(it["passages"]):
                    if text not in id_of:
                        id_of[text] = "e%04d-%d" % (i, j)
                        docs.append((id_of[text], text, ""))
        name = "eval_items_%d" % self.args.seed
        self.c.create_collection(name, index=self.args.index)
        t0 = time.time()
        ingested, pre = self.guard("ingest", lambda: self.c.ingest(name, docs, pre_encode=True))
        log("ingested %d item passages into %s (%d pre-encoded) in %.1f s"
            % (ingested, name, pre, time.time() - t0))
        return {"name": name, "id_of": id_of, "documents": ingested, "pre_encoded": pre}

    def corpus(self):
        """The demo corpus: its questions and held-out paraphrases through the router."""
        a = self.args
        passages = [json.loads(l) for l in open(os.path.join(a.corpus, "passages.jsonl"))]
        questions = [json.loads(l) for l in open(os.path.join(a.corpus, "questions.jsonl"))]
        para = corpus_paraphrases(passages)
        name = "eval_corpus"
        self.c.create_collection(name, index=a.index)
        docs = [(p["id"], p["text"], json.dumps(p.get("metadata", {}))) for p in passages]
        t0 = time.time()
        ingested, pre = self.guard("ingest", lambda: self.c.ingest(name, docs, pre_encode=True))
        log("ingested %d corpus passages (%d pre-encoded) in %.1f s"
            % (ingested, pre, time.time() - t0))
        sets = {"canonical": [(q["question"], q["answer_contains"], q["answer_passage_id"])
                              for q in questions]}
        if para is None:
            log("corpus: make_corpus.py does not regenerate data/corpus (or has no phrasings): "
                "no paraphrase questions")
        else:
            sets["paraphrase"] = [(para[q["answer_passage_id"]], q["answer_contains"],
                                   q["answer_passage_id"]) for q in questions]
        out = {"documents": ingested, "pre_encoded": pre}
        for phr, qs in sets.items():
            rows = []
            t0 = time.time()
            for i, (q, ans, pid) in enumerate(qs):
                r = self.guard("corpus question %d" % i, lambda: self.c.query(
                    name, q, a.k, a.max_tokens, use_context_cache=True))
                exact, contains = answer_ok(r["text"], ans)
                rows.append({"i": i, "question": q, "answer": ans, "text": r["text"],
                             "tokens": r["tokens"], "exact": exact, "contains": contains,
                             "hit": pid in r["passages"], "retrieved": r["passages"],
                             "ttft_ms": r["ttft_ms"], "client_ttft_ms": r["client_ttft_ms"]})
            out[phr] = {"rows": rows, "seconds": time.time() - t0}
            log("corpus/%s: %s" % (phr, summary_line(out[phr])))
        return out

    def sweep(self):
        """APE T x S grid on the dev split: accuracy and agreement with sequential prefill."""
        a = self.args
        items = ragdata.eval_items(ragdata.DEV_SEED, a.sweep_items, a.k,
                                   phrasing=a.sweep_phrasing,
                                   same_topic_distractors=a.same_topic)
        texts = sorted({t for it in items for t in it["passages"]})
        n = self.c.pre_encode(texts)
        log("sweep: %d dev items (%s phrasing), %d passages pre-encoded in the context cache"
            % (len(items), a.sweep_phrasing, n))
        seq = self.decoder_mode("seq", items, mode=Mode.SEQUENTIAL)
        log("sweep seq: %s" % summary_line(seq))
        ts = [float(x) for x in a.sweep_t.split(",")]
        ss = [float(x) for x in a.sweep_s.split(",")]
        points = [(t, s, False) for t in ts for s in ss] + [(1.0, 1.0, True)]
        cells = []
        for t, s, off in points:
            mode = Mode(temperature=t, scale=s, disable_ape=off)
            rows = []
            for i, it in enumerate(items):
                row = self.guard("sweep T=%g S=%g item %d" % (t, s, i),
                                 lambda: self.decoder_item(mode, i, it, seq["rows"]))
                rows.append({k: row[k] for k in ("answer", "text", "exact", "contains", "agree",
                                                 "tokens")})
            cell = {"T": t, "S": s, "disable_ape": off, "rows": rows,
                    **summarize({"rows": rows})}
            cells.append(cell)
            log("sweep T=%.2f S=%.2f%s: contains %s top-1 %s" % (
                t, s, " (plain parallel)" if off else "", pct(cell["contains"]),
                pct(cell.get("top1"))))
        return {"items": len(items), "phrasing": a.sweep_phrasing, "seed": ragdata.DEV_SEED,
                "seq": summarize(seq), "seq_rows": seq["rows"], "cells": cells, "T": ts,
                "S": ss}


def corpus_paraphrases(passages, seed=7):
    """{passage id: held-out phrasing of its first fact}, by replaying make_corpus.py's generator
    with the corpus's seed; None unless the replay reproduces data/corpus/passages.jsonl."""
    mc = ragdata.mc
    rng = random.Random(seed)
    names = mc.Names(rng)
    out = {}
    for i, p in enumerate(passages):
        res = mc.MAKERS[i % len(mc.MAKERS)](rng, names)
        if len(res) != 3 or res[0] != p["text"]:
            return None
        phrasings, _ = res[2][0]
        out[p["id"]] = phrasings[-1]
    return out


# ---- summaries and tables --------------------------------------------------------------------

def summarize(res, k=None):
    rows = res["rows"]
    s = {"n": len(rows), "exact": mean([r["exact"] for r in rows]),
         "contains": mean([r["contains"] for r in rows])}
    if rows and "hit" in rows[0]:
        s["hit"] = mean([r["hit"] for r in rows])
    if k and rows and "gold" in rows[0]:
        s["by_position"] = [mean([r["contains"] for r in rows if r["gold"] == p])
                            for p in range(k)]
    ag = [r["agree"] for r in rows if "agree" in r]
    if ag:
        s["first"] = mean([x["first"] for x in ag])
        s["same"] = mean([x["same"] for x in ag])
        tn = sum(x.get("top1_n", 0) for x in ag)
        if tn and any("top1_n" in x for x in ag):
            s["top1"] = sum(x.get("top1_hits", 0) for x in ag) / tn
    if rows and "ttft_ms" in rows[0]:
        s["ttft_ms_p50"] = median([r["ttft_ms"] for r in rows])
        s["client_ttft_ms_p50"] = median([r["client_ttft_ms"] for r in rows])
    return s


def summary_line(res):
    s = summarize(res)
    parts = ["n %d" % s["n"], "exact %s" % pct(s["exact"]), "contains %s" % pct(s["contains"])]
    if "hit" in s:
        parts.append("hit %s" % pct(s["hit"]))
    if "top1" in s:
        parts.append("top-1 %s" % pct(s["top1"]))
    parts.append("%.1f s" % res["seconds"])
    return ", ".join(parts)


def pooled(results, mode, phrasings):
    rows = []
    for phr in phrasings:
        if phr in results.get(mode, {}):
            rows += results[mode][phr]["rows"]
    return {"rows": rows}


def passage_sources(rows):
    """Passages of the rows' first requests by where their KV came from (None: unknown)."""
    tot = {}
    for r in rows:
        d = r.get("kv_source")
        if d is None:
            return None
        for s, v in d.items():
            tot[s] = tot.get(s, 0) + v
    return tot


def sources_text(results, mode, phrasings):
    tot = passage_sources(pooled(results, mode, phrasings)["rows"])
    return ", ".join("%s %d" % kv for kv in sorted(tot.items())) if tot else "—"


def tables(report):
    a = report["config"]
    res = report["results"]
    out = []
    out.append("## ragserve eval: %s (fingerprint %s)\n" % (a["model"], report["fingerprint"]))
    if a["modes"]:
        out.append("Held-out items: `ragdata.eval_items(seed=%d, n=%d, k=%d%s)` per phrasing, "
                   "greedy, max %d tokens." % (
                       a["seed"], a["items"], a["k"],
                       ", same_topic_distractors=%d" % a["same_topic"] if a.get("same_topic")
                       else "", a["max_tokens"]))
    out.append("Command: `%s`\n" % report["command"])
    if report.get("restarts"):
        rs = report["restarts"]
        out.append("**A service died %d time(s) during this run and was restarted** (the request "
                   "was rerun; first: %s, during %s: %s).\n" % (
                       len(rs), ",".join(rs[0]["services"]), rs[0]["what"], rs[0]["error"]))
    phrs = [p for p in PHRASINGS if p in a["phrasings"]]
    modes = [m for m in a["modes"] if m in res]
    if modes:
        out.append("### Answer accuracy (exact / contains)\n")
        hdr = "| mode |" + "".join(" %s exact | %s contains |" % (p, p) for p in phrs)
        hdr += " contains vs seq |"
        out.append(hdr)
        out.append("|---|" + "---|---|" * len(phrs) + "---|")
        seq_c = summarize(pooled(res, "seq", phrs))["contains"] if "seq" in res else None
        for m in modes:
            line = "| %s |" % m
            for p in phrs:
                if p in res[m]:
                    s = summarize(res[m][p])
                    line += " %s | %s |" % (pct(s["exact"]), pct(s["contains"]))
                else:
                    line += " — | — |"
            c = summarize(pooled(res, m, phrs))["contains"]
            line += " %s |" % (pct(c / seq_c) if seq_c and c is not None else "—")
            out.append(line)
        out.append("")
        pos_modes = [m for m in modes if m in DECODER_MODES + ["rag", "rag-seq"]]
        if pos_modes:
            out.append("### Contains accuracy by gold position (phrasings pooled)\n")
            out.append("| mode |" + "".join(" pos %d |" % p for p in range(a["k"])))
            out.append("|---|" + "---|" * a["k"])
            for m in pos_modes:
                s = summarize(pooled(res, m, phrs), a["k"])
                out.append("| %s |" % m + "".join(" %s |" % pct(x) for x in s["by_position"]))
            out.append("")
        out.append("### Agreement with sequential prefill, TTFT, passage KV source "
                   "(phrasings pooled)\n")
        out.append("| mode | top-1 (teacher-forced) | first token | same answer | hit@%d | "
                   "TTFT p50 ms (server) | TTFT p50 ms (client) | passage KV from |" % a["k"])
        out.append("|---|---|---|---|---|---|---|---|")
        for m in modes:
            s = summarize(pooled(res, m, phrs))
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                m, pct(s.get("top1")), pct(s.get("first")), pct(s.get("same")),
                pct(s.get("hit")), ms(s.get("ttft_ms_p50")), ms(s.get("client_ttft_ms_p50")),
                sources_text(res, m, phrs)))
        out.append("")
    if "corpus" in report:
        c = report["corpus"]
        out.append("### RAG path over the demo corpus (%d passages, top-%d, context cache on)\n"
                   % (c["documents"], a["k"]))
        out.append("| questions | n | hit@%d | exact | contains | TTFT p50 ms (router) |" % a["k"])
        out.append("|---|---|---|---|---|---|")
        for phr in ("canonical", "paraphrase"):
            if phr in c:
                s = summarize(c[phr])
                out.append("| %s | %d | %s | %s | %s | %s |" % (
                    phr, s["n"], pct(s["hit"]), pct(s["exact"]), pct(s["contains"]),
                    ms(s["ttft_ms_p50"])))
        out.append("")
    if "sweep" in report:
        sw = report["sweep"]
        out.append("### APE T x S sweep on the dev split (seed %d, %d items, %s phrasing)\n"
                   % (sw["seed"], sw["items"], sw["phrasing"]))
        out.append("Sequential prefill on the same items: contains %s, exact %s. Cells: contains "
                   "accuracy / top-1 agreement with sequential (teacher-forced); one item is "
                   "%.1f points of accuracy.\n"
                   % (pct(sw["seq"]["contains"]), pct(sw["seq"]["exact"]), 100.0 / sw["items"]))
        out.append("| T \\ S |" + "".join(" %.2f |" % s for s in sw["S"]))
        out.append("|---|" + "---|" * len(sw["S"]))
        grid = {(c["T"], c["S"]): c for c in sw["cells"] if not c["disable_ape"]}
        for t in sw["T"]:
            out.append("| %.2f |" % t + "".join(
                " %s / %s |" % (pct(grid[(t, s)]["contains"]), pct(grid[(t, s)].get("top1")))
                for s in sw["S"]))
        plain = [c for c in sw["cells"] if c["disable_ape"]]
        if plain:
            out.append("\nPlain parallel encoding (disable_ape): contains %s, top-1 %s."
                       % (pct(plain[0]["contains"]), pct(plain[0].get("top1"))))
        best = best_cell(sw)
        if best:
            out.append("Best (contains, then top-1, then closest to T = S = 1): T = %.2f, S = %.2f"
                       " (contains %s, exact %s, top-1 %s)." % (
                           best["T"], best["S"], pct(best["contains"]), pct(best["exact"]),
                           pct(best.get("top1"))))
        out.append("")
    return "\n".join(out)


def best_cell(sw):
    cells = [c for c in sw["cells"] if not c["disable_ape"]]
    if not cells:
        return None
    return max(cells, key=lambda c: (c["contains"], c.get("top1") or 0,
                                     -abs(c["T"] - 1) - abs(c["S"] - 1)))


def passage_cache_mb(model, k, passage_tokens=128):
    """MiB of f32 passage KV for about two items' passages (k each, up to passage_tokens)."""
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    per_token = cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * 2 * 4
    return max(1, -(-2 * k * passage_tokens * per_token // (1 << 20)))


# ---- main ----------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "data", "models", "reader"),
                    help="model directory for the cluster this program starts")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--addr", default="",
                    help="router host:port of a running cluster (tools/up port layout); "
                         "default: start one on free ports")
    ap.add_argument("--token", default=os.environ.get("RAGSERVE_AUTH_TOKEN", ""))
    ap.add_argument("--work", default="", help="cluster folder (default: a temporary one)")
    ap.add_argument("--items", type=int, default=200, help="held-out items per phrasing")
    ap.add_argument("--k", type=int, default=4, help="passages per question (gold + k-1)")
    ap.add_argument("--seed", type=int, default=ragdata.EVAL_SEED)
    ap.add_argument("--phrasings", default="heldout,canonical")
    ap.add_argument("--same-topic", type=int, default=0,
                    help="distractors of the gold passage's own kind (e.g. 3: four rivers), "
                         "as the RAG path retrieves them")
    ap.add_argument("--modes", default=DEFAULT_MODES,
                    help="comma-separated: " + ",".join(ALL_MODES))
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--no-teacher-forced", dest="teacher_forced", action="store_false",
                    help="skip the teacher-forced top-1 agreement (one request per answer token)")
    ap.add_argument("--index", default="flat", choices=["flat", "hnsw"],
                    help="index kind of the eval collections")
    ap.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpus"))
    ap.add_argument("--sweep", action="store_true", help="APE T x S sweep on the dev split")
    ap.add_argument("--sweep-items", type=int, default=48)
    ap.add_argument("--sweep-phrasing", default="heldout")
    ap.add_argument("--sweep-t", default="0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--sweep-s", default="0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--json", default="", help="write every result (per item) here")
    ap.add_argument("--rescore", default="",
                    help="no cluster: score the answers of a --json report again (after a change "
                         "to the scoring) and print its tables")
    ap.add_argument("--passage-cache-mb", type=int, default=-1,
                    help="the started decoder's passage KV cache (default: about two items' "
                         "passages; 0: none, every request computes or fetches its passages)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per RPC")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ALL_MODES:
            ap.error("unknown mode %r (known: %s)" % (m, ",".join(ALL_MODES)))
    if any(m in modes for m in ("none", "ape", "parallel", "ctxcache", "rag", "rag-seq")) \
            and "seq" not in modes:
        modes.insert(0, "seq")  # the reference of every agreement column
    modes = [m for m in ALL_MODES if m in modes]  # fixed order: ctxcache after ape/parallel
    phrasings = [p for p in args.phrasings.split(",") if p]

    if args.rescore:
        with open(args.rescore) as f:
            report = json.load(f)
        return finish(rescore(report), args)
    stubs = ragclient.load_stubs()
    cluster = None
    if args.addr:
        addrs = ragclient.Addrs.from_router(args.addr)
    else:
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise SystemExit("eval: no model at %s (--model DIR; or --addr of a running cluster)"
                             % args.model)
        import tempfile
        work = args.work or tempfile.mkdtemp(prefix="ragserve-eval-")
        cluster = ragclient.Cluster(
            args.bin, args.model, work, timeout_s=180,
            decoder_args="--passage-cache-mb %d" % (
                passage_cache_mb(args.model, args.k) if args.passage_cache_mb < 0
                else args.passage_cache_mb))
        t0 = time.time()
        cluster.start()
        addrs = cluster.addrs
        log("cluster up on 127.0.0.1:%d.. in %.1f s (%s)" % (cluster.base, time.time() - t0, work))
    client = ragclient.Client(stubs, addrs, token=args.token, timeout_s=args.timeout)
    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
              "config": {"model": args.model if not args.addr else args.addr,
                         "items": args.items, "k": args.k, "seed": args.seed,
                         "phrasings": phrasings, "modes": modes, "max_tokens": args.max_tokens,
                         "teacher_forced": args.teacher_forced, "index": args.index,
                         "same_topic": args.same_topic},
              "results": {}}
    run = None
    try:
        report["fingerprint"] = client.fingerprint()
        run = Runner(args, client, cluster)
        items = {p: ragdata.eval_items(args.seed, args.items, args.k, phrasing=p,
                                       same_topic_distractors=args.same_topic)
                 for p in phrasings}
        res = report["results"]
        for m in [m for m in modes if m in DECODER_MODES]:
            if m == "ctxcache":
                texts = sorted({t for its in items.values() for it in its for t in it["passages"]})
                t0 = time.time()
                n = client.pre_encode(texts)
                log("pre-encoded %d passages in the context cache in %.1f s"
                    % (n, time.time() - t0))
            res[m] = {}
            for p in phrasings:
                ref = res["seq"][p]["rows"] if m != "seq" else None
                res[m][p] = run.decoder_mode(m, items[p], ref)
                log("%s/%s: %s" % (m, p, summary_line(res[m][p])))
        rag_modes = [m for m in modes if m in ("rag", "rag-seq")]
        if rag_modes:
            coll = run.ingest_items(items)
            for m in rag_modes:
                res[m] = run.rag_items(m, items, coll, res.get("seq"))
        if "corpus" in modes:
            report["corpus"] = run.corpus()
        if args.sweep:
            report["sweep"] = run.sweep()
    except Exception as e:  # an RPC failed: say where, with the services' last log lines
        import grpc
        if not isinstance(e, grpc.RpcError):
            raise
        log("an RPC failed: %s %s" % (e.code(), e.details()))
        if cluster:
            for svc in ragclient.SERVICES:
                log("--- %s log (%s):\n%s" % (svc, cluster.dir, cluster.log_tail(svc, 8)))
        raise
    finally:
        client.close()
        if cluster:
            cluster.stop()
        if run is not None:
            report["restarts"] = run.restarts
    return finish(report, args)


def rescore(report):
    """Scores every stored answer again with answer_ok (rows without their text keep theirs)."""
    def rows_of(rep):
        for by in rep.get("results", {}).values():
            for r in by.values():
                yield from r["rows"]
        for p in ("canonical", "paraphrase"):
            yield from rep.get("corpus", {}).get(p, {}).get("rows", [])
        yield from rep.get("sweep", {}).get("seq_rows", [])
        for c in rep.get("sweep", {}).get("cells", []):
            yield from c.get("rows", [])

    for row in rows_of(report):
        if "text" in row and "answer" in row:
            row["exact"], row["contains"] = answer_ok(row["text"], row["answer"])
    sw = report.get("sweep")
    if sw:
        if "seq_rows" in sw:
            sw["seq"] = summarize({"rows": sw["seq_rows"]})
        for c in sw["cells"]:
            if "rows" in c:
                c.update(summarize({"rows": c["rows"]}))
    return report


def finish(report, args):
    k = report["config"]["k"]
    report["summary"] = {m: {p: summarize(r, k) for p, r in by.items()}
                         for m, by in report["results"].items()}
    if "corpus" in report:
        report["summary"]["corpus"] = {p: summarize(report["corpus"][p])
                                       for p in ("canonical", "paraphrase")
                                       if p in report["corpus"]}
    text = tables(report)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log("wrote %s" % args.json)
    return report


if __name__ == "__main__":
    main()
