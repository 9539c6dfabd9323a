#!/usr/bin/python3
"""Independent reference of the BM25 index (index/bm25.h): scores within 1e-5.

Builds a seeded random corpus (mixed case, accents, Greek/Cyrillic, digits, punctuation-only
documents, replaced and removed labels), runs it through bm25_dump (the C++ index) and checks
every returned hit against a from-scratch Python BM25 over the same tokenizer rules:
NFKC + case folding, words = runs of Unicode letters, marks and numbers.

Usage: bm25_ref.py --dump PATH/TO/bm25_dump
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

MAX_TERM_BYTES = 128
TOL = 1e-5

VOCAB = ("ferry lighthouse river bridge island keeper violet colour coast spring evening "
         "Café café CAFÉ naïve Straße STRASSE Ωmega ωμέγα Москва москва 1873 42 x2 "
         "the a of and to in is was lantern fishermen golden Über über résumé").split()


def terms(text):
    norm = unicodedata.normalize("NFKC", unicodedata.normalize("NFKD", text).casefold())
    out, cur = [], ""
    for ch in norm:
        if unicodedata.category(ch)[0] in "LMN":
            if len((cur + ch).encode()) <= MAX_TERM_BYTES:
                cur += ch
        elif cur:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def reference_scores(docs, query, k1, b):
    """docs: {label: [terms]} with no empty lists -> {label: score} for docs sharing a term."""
    n = len(docs)
    avgdl = sum(len(t) for t in docs.values()) / n
    df = {}
    for t in docs.values():
        for term in set(t):
            df[term] = df.get(term, 0) + 1
    scores = {}
    for term in set(terms(query)):
        if term not in df:
            continue
        idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
        for label, t in docs.items():
            tf = t.count(term)
            if tf:
                s = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avgdl))
                scores[label] = scores.get(label, 0.0) + s
    return scores


def random_text(rng):
    if rng.random() < 0.05:
        return rng.choice(["", "... !!! ---", "   ", "«»"])
    words = []
    for _ in range(rng.randint(1, 60)):
        w = rng.choice(VOCAB)
        if rng.random() < 0.2:
            w = w.upper()
        words.append(w + rng.choice(["", "", "", ",", ".", "!", ")", "'s"]))
    if rng.random() < 0.1:
        words.append("z" * 200)  # longer than a term may be
    return " ".join(words)


def check_case(dump, rng, k1, b, tmp):
    docs_in = [[label, random_text(rng)] for label in range(300)]
    docs_in += [[label, random_text(rng)] for label in rng.sample(range(300), 20)]  # replaced
    removed = rng.sample(range(300), 25) + [10_000]
    queries = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 6))) for _ in range(40)]
    queries += ["the the the ferry", "UNKNOWNWORD", "café, CAFÉ! cafe\u0301", "Ωmega 1873"]
    k = 10
    req = {"k1": k1, "b": b, "k": k, "docs": docs_in, "remove": removed, "queries": queries,
           "save": os.path.join(tmp, "bm25.idx")}
    out = subprocess.run([dump], input=json.dumps(req), capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bm25_dump failed: {out.stderr}")
    got = json.loads(out.stdout)
    docs = {}
    for label, text in docs_in:
        docs[label] = terms(text)
    for label in removed:
        docs.pop(label, None)
    docs = {label: t for label, t in docs.items() if t}
    failures = 0
    checked = 0
    for qi, q in enumerate(queries):
        ref = reference_scores(docs, q, k1, b)
        hits = got["results"][qi]
        ranked = sorted(ref.values(), reverse=True)
        if len(hits) != min(k, len(ref)):
            print(f"k1={k1} b={b} query {q!r}: {len(hits)} hits, reference {min(k, len(ref))}")
            failures += 1
            continue
        for j, (label, score) in enumerate(hits):
            checked += 1
            if label not in ref or abs(ref[label] - score) > TOL:
                print(f"k1={k1} b={b} query {q!r}: label {label} score {score}, "
                      f"reference {ref.get(label)}")
                failures += 1
            elif abs(ranked[j] - score) > TOL:
                print(f"k1={k1} b={b} query {q!r}: rank {j} score {score}, "
                      f"reference rank {j} is {ranked[j]}")
                failures += 1
    if got["reloaded"] != got["results"]:
        print(f"k1={k1} b={b}: results differ after Save + Load")
        failures += 1
    return failures, checked


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    args = ap.parse_args()
    rng = random.Random(22)
    failures = checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k1, b in [(1.2, 0.75), (2.0, 0.0), (0.5, 1.0), (0.0, 0.5)]:
            f, c = check_case(args.dump, rng, k1, b, tmp)
            failures += f
            checked += c
    if checked < 500:
        sys.exit(f"only {checked} hits checked: the test corpus is too sparse")
    if failures:
        sys.exit(f"{failures} mismatches against the reference")
    print(f"bm25_ref: {checked} hits within {TOL} of the reference")


if __name__ == "__main__":
    main()
