#!/usr/bin/python3
"""APE temperature x scaling sweep on the dev split (ragdata.DEV_SEED) of a trained reader, with
tools/bench/ape_fidelity_bench, and the choice of the defaults it implies.

  /usr/bin/python3 tools/bench/ape_sweep.py --model data/models/reader --out .ape-sweep \\
      [--n 50] [--ks 4,8] [--phrasings heldout,canonical] [--t 0.5,...] [--s 0.7,...] [--jobs 1]

For every (k, phrasing) it writes the dev items (tools/bench/make_ape_items.py's format), runs the
bench once with every (T, S) pair of the grid plus plain parallel encoding (1:1), and pools the
files: exact match over all items, mean KL and top-1 agreement over all teacher-forced answer
steps. It prints the grid as a markdown table (cell: exact / mean KL / top-1) and the rule's
choice: the most accurate pair on dev, ties broken by the lower mean KL (closer to sequential).
Deterministic (greedy, f32): a rerun prints the same table.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "train-model"))


def floats(text):
    return [float(x) for x in text.split(",") if x]


def write_items(path, seed, n, k, phrasing, same_topic):
    import ragdata
    with open(path, "w", encoding="utf-8") as f:
        for it in ragdata.eval_items(seed, n, k, phrasing=phrasing,
                                     same_topic_distractors=same_topic):
            f.write(json.dumps({"passages": it["passages"], "question": it["question"],
                                "answer": it["answer"], "gold": it["gold"]},
                               ensure_ascii=False) + "\n")


def key_of(row):
    if "T" in row:
        return (round(row["T"], 3), round(row["S"], 3))
    return row["variant"]


def pool(reports):
    """{key: {"exact", "mean_kl", "top1", "n"}} over several bench reports, plus "seq"."""
    acc = {}
    for rep in reports:
        n = rep["n"]
        for row in [dict(rep["sequential"], variant="seq")] + rep["rows"]:
            k = "seq" if row["variant"] == "seq" else key_of(row)
            a = acc.setdefault(k, {"items": 0, "exact_n": 0.0, "steps": 0, "kl": 0.0, "top1": 0.0})
            a["items"] += n
            a["exact_n"] += row["exact"] * n
            if "mean_kl" in row:
                a["steps"] += row["steps"]
                a["kl"] += row["mean_kl"] * row["steps"]
                a["top1"] += row["top1"] * row["steps"]
    out = {}
    for k, a in acc.items():
        s = max(1, a["steps"])
        out[k] = {"exact": a["exact_n"] / a["items"], "mean_kl": a["kl"] / s,
                  "top1": a["top1"] / s, "items": a["items"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "data", "models", "reader"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--out", default=".ape-sweep", help="items, bench JSON and the table")
    ap.add_argument("--split", default="dev", choices=["dev", "eval"])
    ap.add_argument("--n", type=int, default=50, help="items per (k, phrasing)")
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--phrasings", default="heldout,canonical")
    ap.add_argument("--same-topic", type=int, default=0)
    ap.add_argument("--t", default="0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--s", default="0.7,0.8,0.9,1.0")
    ap.add_argument("--jobs", type=int, default=1, help="bench processes at once (one thread each)")
    args = ap.parse_args()
    import ragdata
    seed = ragdata.DEV_SEED if args.split == "dev" else ragdata.EVAL_SEED
    os.makedirs(args.out, exist_ok=True)
    ts, ss = floats(args.t), floats(args.s)
    grid = ",".join("%g:%g" % (t, s) for t in ts for s in ss if (t, s) != (1.0, 1.0)) + ",1:1"
    runs = []
    for k in [int(x) for x in args.ks.split(",")]:
        for p in args.phrasings.split(","):
            stem = os.path.join(args.out, "%s_k%d_%s%s" % (args.split, k, p,
                                                          "_same" if args.same_topic else ""))
            write_items(stem + ".jsonl", seed, args.n, k, p, args.same_topic)
            runs.append(stem)

    def bench(stem):
        cmd = [os.path.join(args.bin, "ape_fidelity_bench"), "--model", args.model, "--items",
               stem + ".jsonl", "--json", stem + ".json", "--ts", grid]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit("%s failed:\n%s" % (" ".join(cmd), r.stderr[-4000:]))
        with open(stem + ".md", "w") as f:
            f.write(r.stdout)
        print("done %s" % stem, file=sys.stderr, flush=True)
        with open(stem + ".json") as f:
            return json.load(f)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        reports = list(ex.map(bench, runs))
    res = pool(reports)
    n = res["seq"]["items"]
    lines = ["APE sweep: %s split, k = %s, phrasings %s, %d items per cell (model %s, weights "
             "xxh64 %s)" % (args.split, args.ks, args.phrasings, n, args.model,
                            reports[0]["weights_xxh64"]),
             "",
             "Sequential prefill: %.2f%%; plain parallel (T = S = 1): %.2f%% / %.3f / %.0f%%; "
             "no passages: %.2f%%" % (
                 100 * res["seq"]["exact"], 100 * res[(1.0, 1.0)]["exact"],
                 res[(1.0, 1.0)]["mean_kl"], 100 * res[(1.0, 1.0)]["top1"],
                 100 * next((v["exact"] for k, v in res.items() if isinstance(k, str)
                             and k != "seq"), float("nan"))),
             "",
             "| T \\ S | " + " | ".join("%g" % s for s in ss) + " |",
             "|---" * (len(ss) + 1) + "|"]
    cells = {k: v for k, v in res.items() if isinstance(k, tuple)}
    best = max(cells.items(), key=lambda kv: (round(kv[1]["exact"] * n), -kv[1]["mean_kl"]))
    for t in ts:
        row = []
        for s in ss:
            c = cells.get((round(t, 3), round(s, 3)))
            txt = "" if c is None else "%.2f%% / %.3f / %.0f%%" % (
                100 * c["exact"], c["mean_kl"], 100 * c["top1"])
            if c is not None and (round(t, 3), round(s, 3)) == best[0]:
                txt = "**" + txt + "**"
            row.append(txt)
        lines.append("| %g | " % t + " | ".join(row) + " |")
    lines += ["", "Best on %s (most exact, ties: lower mean KL): T = %g, S = %g (%.2f%%)" % (
        args.split, best[0][0], best[0][1], 100 * best[1]["exact"])]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(args.out, "sweep.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump({"runs": runs, "pooled": {("%g:%g" % k if isinstance(k, tuple) else k): v
                                            for k, v in res.items()},
                   "best": "%g:%g" % best[0]}, f, indent=1)


if __name__ == "__main__":
    main()
