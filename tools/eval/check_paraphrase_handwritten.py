#!/usr/bin/python3
"""Checks data/eval/paraphrase-handwritten.jsonl against the demo corpus (data/corpus).

Every line must name a passage of data/corpus/passages.jsonl; a "name"-style question must contain
its passage's invented name (so exactly one passage can answer it, as make_corpus.py guarantees);
a "description"-style question must not contain the name, and its "unique_by" attributes (read
from the passage text by the templates' fixed wording; a [lo, hi] list is an inclusive range of a
number) must hold for its gold passage and for no other passage of the same kind. With --stats it
prints how many of each question's content words occur in its gold passage. Python stdlib only.

Usage: check_paraphrase_handwritten.py [--eval data/eval/paraphrase-handwritten.jsonl]
                                       [--passages data/corpus/passages.jsonl] [--stats]
"""
import argparse
import collections
import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# One pattern per passage kind of tools/make-corpus/make_corpus.py: the facts a description uses.
PATTERNS = {
    "island": r"(?P<name>\w+) Island lies.*built in (?P<year>\d+), is painted (?P<colour>[\w ]+?) "
              r"from base.*keeper was (?P<keeper>[\w ]+?)\.",
    "person": r"(?P<name>\w+ \w+) was an? (?P<trade>\w+) from the town of (?P<town>\w+)\. "
              r"Born in (?P<year>\d+)",
    "invention": r"The (?P<name>\w+) (?P<device>\w+) was a machine designed for (?P<use>[\w ]+?)\. "
                 r"It was first demonstrated in (?P<year>\d+) by (?P<maker>[\w ]+?),",
    "species": r"The (?P<name>\w+) (?P<creature>\w+) is a small creature found only in the "
               r"(?P<habitat>[\w ]+?) of a remote.*is an? (?P<colour>[\w ]+?) stripe",
    "town": r"(?P<name>\w+) is a market town built around a square paved with (?P<material>\w+)\. "
            r"It was founded in (?P<year>\d+)",
    "river": r"The (?P<name>\w+) River rises.*It is (?P<km>\d+) kilometres",
    "ship": r"The sailing ship (?P<name>\w+) was launched in (?P<year>\d+).*She carried "
            r"(?P<masts>\d+) masts",
    "mountain": r"Mount (?P<name>\w+) stands.*reaches (?P<height>\d+) metres",
    "festival": r"The (?P<name>\w+) Festival is held every year in (?P<month>\w+) and lasts "
                r"(?P<days>\d+) days",
    "bridge": r"The (?P<name>\w+) Bridge crosses a wide, slow river on (?P<arches>\d+) arches of "
              r"(?P<material>\w+)\.",
}
STOP = set("the a an of in on by to is was and for with from at which what who how many much does "
           "did do its it their they when where one be been has have had that this as or into out "
           "up over about around some".split())


def attributes(passages):
    out = {}
    for p in passages:
        kind = p["metadata"]["topic"]
        m = re.search(PATTERNS[kind], p["text"])
        if not m:
            sys.exit("passage %s (%s) does not match its template" % (p["id"], kind))
        out[p["id"]] = dict(m.groupdict(), kind=kind)
    return out


def holds(attrs, unique_by):
    for key, want in unique_by.items():
        if isinstance(want, list):
            if not want[0] <= int(attrs[key]) <= want[1]:
                return False
        elif attrs[key] != want:
            return False
    return True


def content_words(text):
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", default=os.path.join(ROOT, "data/eval/paraphrase-handwritten.jsonl"))
    ap.add_argument("--passages", default=os.path.join(ROOT, "data/corpus/passages.jsonl"))
    ap.add_argument("--stats", action="store_true")
    args = ap.parse_args()
    with open(args.passages, encoding="utf-8") as f:
        passages = [json.loads(line) for line in f if line.strip()]
    text = {p["id"]: p["text"] for p in passages}
    attrs = attributes(passages)
    with open(args.eval, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    errors, seen, counts = [], set(), collections.Counter()
    overlap = collections.defaultdict(list)
    for r in rows:
        pid, q = r["answer_passage_id"], r["question"]
        if pid not in attrs:
            errors.append("%s: no such passage" % pid)
            continue
        if pid in seen:
            errors.append("%s: asked twice" % pid)
        seen.add(pid)
        a = attrs[pid]
        in_q = a["name"].split()[0].lower() in q.lower()
        if r["style"] == "name" and not in_q:
            errors.append("%s: a name-style question without the name '%s'" % (pid, a["name"]))
        elif r["style"] == "description":
            if in_q:
                errors.append("%s: a description-style question names '%s'" % (pid, a["name"]))
            match = sorted(i for i, o in attrs.items()
                           if o["kind"] == a["kind"] and holds(o, r["unique_by"]))
            if match != [pid]:
                errors.append("%s: unique_by %s matches %s" % (pid, r["unique_by"], match))
        if r["split"] not in ("dev", "test"):
            errors.append("%s: split '%s'" % (pid, r["split"]))
        counts[(r["split"], r["style"])] += 1
        words = content_words(q)
        gold = set(content_words(text[pid]))
        overlap[r["style"]].append(sum(w in gold for w in words) / max(1, len(words)))
    for e in errors:
        print("error:", e)
    print("%d questions, %d passages: %s" % (len(rows), len(seen), dict(sorted(counts.items()))))
    if args.stats:
        for style, v in sorted(overlap.items()):
            print("%s: mean share of content words found in the gold passage %.3f, none shared: %d"
                  % (style, sum(v) / len(v), sum(x == 0 for x in v)))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
