#!/usr/bin/env python3
"""Writes RAG items for tools/bench/ape_fidelity_bench: one JSON object a line,
{"passages": [...], "question": ..., "answer": ..., "gold": <index of the gold passage>}.

Items come from tools/train-model/ragdata.py's eval_items (names the training never saw, the gold
passage among k-1 distractors, its position cycling through 0..k-1): --split dev (ragdata.DEV_SEED)
to tune APE's T and S, --split eval (ragdata.EVAL_SEED) for the reported table.

  /usr/bin/python3 tools/bench/make_ape_items.py --split dev --n 100 --k 4 > dev_k4.jsonl
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=["dev", "eval"], required=True)
    ap.add_argument("--n", type=int, default=100, help="items")
    ap.add_argument("--k", type=int, default=4, help="passages per item (gold + k-1 distractors)")
    ap.add_argument("--phrasing", default="heldout", choices=["heldout", "canonical", "train"],
                    help="question phrasing (ragdata.eval_items)")
    ap.add_argument("--same-topic", type=int, default=0,
                    help="distractors of the gold passage's kind (the hard case: same template, "
                         "other names and numbers)")
    ap.add_argument("--spread", action="store_true",
                    help="gold positions spread evenly over 0..k-1 (by default item i's gold is at "
                         "i mod k, so with n < k only the first n positions are measured)")
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", ".."),
                    help="repository root holding tools/train-model/ragdata.py")
    a = ap.parse_args()
    if a.n < 1 or a.k < 1:
        ap.error("--n and --k must be >= 1")
    sys.path.insert(0, os.path.join(os.path.abspath(a.root), "tools", "train-model"))
    import ragdata  # noqa: E402

    seed = ragdata.DEV_SEED if a.split == "dev" else ragdata.EVAL_SEED
    for it in ragdata.eval_items(seed, a.n, a.k, phrasing=a.phrasing,
                                 same_topic_distractors=a.same_topic, spread=a.spread):
        print(json.dumps({"passages": it["passages"], "question": it["question"],
                          "answer": it["answer"], "gold": it["gold"]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
