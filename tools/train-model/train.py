#!/usr/bin/python3
"""Trains ragserve's demo reader: a small Llama-architecture model that answers questions from
retrieved passages, on the CPU with Debian's python3-torch, deterministically from a seed.

  /usr/bin/python3 tools/train-model/train.py --tokenize-bin build/bin/ragserve-tokenize \\
      --out data/models/reader --work .train-work --tokens 6.5e6

Steps: (1) train a byte-level BPE tokenizer with the project's own trainer (ragserve-tokenize)
on generated training passages and questions; (2) train the model on generated RAG reading with a
curriculum (one to three passages, mostly of one kind -> a few -> many, with position gaps so the
question sees passages thousands of positions away, and long rows of dozens of passages);
(3) export config.json + model.safetensors + tokenizer.json in the Hugging Face layout, the loss
log (CSV) and a loss-curve plot. A continuation (--recipe 4 or 5 --init-from DIR) skips (1) and starts
(2) from an exported model's weights and tokenizer instead of random weights.

Each training row is one context (BOS + prefix + passages) followed by several question/answer
segments. A segment attends to the whole context and to itself but not to the other segments, and
every segment starts at the position right after the context: each row trains several independent
questions for the price of one context. The loss is the answer tokens' cross-entropy (answer +
EOS, weight --answer-weight) plus the question tokens' (--question-weight) and a small
language-model loss on the passage tokens (--lm-weight). Checkpoints (--work) make a run
resumable; a resumed run continues the same data stream and reaches the same weights.
See docs/MODEL.md for the recipe, the measured curve and the evaluation.
"""
import argparse
import copy
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

# One BLAS thread: OpenBLAS's own pool (beside torch's) spins and, on a 2-core machine shared with
# anything else, made steps ~8x slower (measured). torch's threads are set by --threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The byte-level BPE oracle of the tokenizer tests: the one Python encoder of the project.
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import ragdata  # noqa: E402
import model as model_lib  # noqa: E402
from model import Config, Reader, export  # noqa: E402
from tokenizer_ref import RefTokenizer  # noqa: E402

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


class Encoder:
    """Ids of text as the engine computes them (check_tokenizer compares with ragserve-tokenize)."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        self.ref = RefTokenizer(doc)
        added = {t["content"]: t["id"] for t in doc.get("added_tokens") or []}
        self.bos_id, self.eos_id = added.get(SPECIALS[0]), added.get(SPECIALS[1])
        self.vocab_size = max(self.ref.id_to_bytes) + 1

    def encode(self, text):
        """No BOS; special tokens written in the text are not matched."""
        return self.ref.encode(text, allow_special=False)


# ---- tokenizer ---------------------------------------------------------------------------------

def train_tokenizer(args, tmpl, path):
    """Byte-level BPE from ragserve's own trainer over generated training text."""
    stream = ragdata.PassageStream(args.seed + 7, "train")
    corpus = path + ".corpus.jsonl"
    rng = random.Random(args.seed + 8)
    with open(corpus, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": tmpl.prefix}) + "\n")
        for _ in range(args.tokenizer_passages):
            p = stream.next()
            f.write(json.dumps({"text": tmpl.passage(p["text"])}) + "\n")
            phrasings, ans = rng.choice(p["facts"])
            q = tmpl.question(rng.choice(phrasings[:-1])) + " " + ans
            f.write(json.dumps({"text": q}) + "\n")
        # Names are made of a few dozen syllables (make_corpus.Names); without lists of them in
        # the tokenizer's text, BPE spends its merges on the passages' English and spells a
        # name in ~6 pieces, mostly single letters, which no small model matches (MODEL.md).
        for _ in range(args.tokenizer_names // 10):
            names = [stream.names.make(rng.choice(ragdata.NAME_KINDS)) for _ in range(10)]
            f.write(json.dumps({"text": ", ".join(names) + "."}) + "\n")
    cmd = [args.tokenize_bin, "train", "--corpus", corpus, "--vocab-size", str(args.vocab),
           "--out", path]
    for s in SPECIALS:
        cmd += ["--special", s]
    subprocess.run(cmd, check=True)
    os.remove(corpus)


def check_tokenizer(args, enc, tmpl, path):
    """The Python encoder must give the engine's ids (ragserve-tokenize) on a sample."""
    stream = ragdata.PassageStream(args.seed + 99, "eval")
    texts = [tmpl.prefix, tmpl.question("How long is the Nawerk River?"), " 1434", " cobalt blue"]
    texts += [tmpl.passage(stream.next()["text"]) for _ in range(50)]
    inp = "".join(json.dumps(t) + "\n" for t in texts)
    out = subprocess.run([args.tokenize_bin, "encode", "--tokenizer", path, "--json-lines"],
                         input=inp, capture_output=True, text=True, check=True).stdout.splitlines()
    for t, line in zip(texts, out):
        want = json.loads(line)
        got = enc.encode(t)
        if got != want:
            raise SystemExit("tokenizer mismatch on %r:\n python %s\n engine %s" % (t, got, want))
    print("tokenizer: Python encoder agrees with ragserve-tokenize on %d texts" % len(texts))


# ---- data --------------------------------------------------------------------------------------

class Stage:
    def __init__(self, passages, questions, gap_prob, hard_prob, tokens=0, long_prob=0.0,
                 long_passages=(0, 0), long_questions=0, hard_all=False, drill_prob=0.0,
                 drill_passages=(4, 16), repeat_prob=0.0, copy_prob=0.0, copy_len=(24, 96)):
        self.passages = passages        # (min, max) passages per context
        self.questions = questions      # question segments per row
        self.gap_prob = gap_prob        # rows whose passages are spread over up to --span positions
        self.hard_prob = hard_prob      # rows whose distractors share the gold passages' kind
        self.hard_all = hard_all        # in those rows every passage is of that kind (else 2..n)
        self.tokens = tokens            # tokens per step (0: --tokens-per-step)
        self.long_prob = long_prob      # steps made of one long row (long_passages passages,
        self.long_passages = long_passages  # 2-8K tokens, long_questions questions; attention
        self.long_questions = long_questions  # in chunks: see Rows.long_row)
        self.drill_prob = drill_prob    # rows of one-fact binding drills (ragdata.drill_passages)
        self.drill_passages = drill_passages
        self.repeat_prob = repeat_prob  # rows of name lists to continue (ragdata.repeat_passages)
        self.copy_prob = copy_prob      # rows of random tokens said twice (Rows.copy_row)
        self.copy_len = copy_len


# The curriculum (--recipe): a phase ends when its dev exact match reaches its bar ("bar", on
# PHASE_DEV_K passages, training phrasings; with "bar_same_kind" both with distractors of random
# kinds and with distractors of the gold passage's kind), or at the latest at its share of the run
# (--phase-caps), so the long-context phase always gets its part. Phase 0 (few passages, small
# steps) is where the copying circuit has to appear; everything later builds on it.
#   "2": the second run, which made the shipped weights (docs/MODEL.md): phase 0 of one or two
#        passages of random kinds; same-kind distractors from phase 1 on.
#   "3": the third run (docs/MODEL.md, not shipped): most multi-passage rows of phase 0 hold
#        passages of one kind, so that it learns to bind the question's name to its passage, not
#        its kind (the second run learned kind matching first and never unlearned it); answer
#        loss weight 3; 8 heads of 32; the last phase mixes long rows (dozens of passages, 2-8K
#        tokens) into the steps, for the long-prompt needle.
#   "4": a continuation (--init-from a recipe-2 model; docs/MODEL.md): one phase of 2-6 passages
#        in which 75% of the rows hold passages of one kind only (four rivers: only the name
#        tells the gold passage apart), the rest rows of random kinds as in recipe 2, at a lower
#        learning rate; answer weight 1 and 4 heads as recipe 2. It teaches the shipped reader to
#        bind the question's name to its passage without forgetting what it reads.
#   "5": a continuation (--init-from the shipped recipe-4 model; docs/MODEL.md): more training
#        phrasings per fact (ragdata.EXTRA: six or seven more wordings of every fact, checked
#        against the held-out phrasings by ragdata.check_extra_phrasings; a question is asked
#        with any of the maker's training phrasings and these alike, and 10% of the questions
#        get a prefix such as "Quick question: "), because the held-out phrasing trailed the
#        trained ones by 5-9 points; 2-6 passages, 12 questions per row (recipe 4: 6, so a
#        fact is asked in two or three wordings per row and a token of context pays for twice
#        the answers), 40% of the rows of one kind (recipe 4: 75%), a lower learning rate than
#        recipe 4 (3e-4; it was run short on a machine shared with a fuzz run: docs/MODEL.md).
#   "6": a continuation (--init-from the shipped model) for name binding from the other side:
#        30% of the questions ask for the name from a value ("Which name goes with 1,434 km?",
#        answer: the passage's name; only values found in one passage of the row). To answer,
#        the tokens around a value must know the name of their passage: the feature a forward
#        question needs at the value (its passage's name) and that same-kind rows alone did not
#        build (recipe 4). 2-4 passages, 60% of the rows of one kind, recipe 5's wordings.
#   "7": a continuation for the induction circuit under binding: half the rows are drills of
#        4-16 one-fact passages of one shape ("Kelimanay's number is 4821.": only the name tells
#        them apart; ragdata.drill_passages), asked forward and (30%) reverse; the other half
#        recipe 6's rows. Learning rate 1e-3: a circuit the model does not have yet.
#   "8": a probe from scratch (not a reader to ship): does binding appear when drills are there
#        from the first step, before kind matching is learned? 60% drill rows of 2-8 one-fact
#        passages, the rest 1-3 passages of one kind (50%) or random kinds, 8 questions per row.
#   "9": a probe from scratch: an induction warm-up. Half the rows are 1-4 lists of names and
#        ask for the rest of the list that begins with a given name (each answer token is what
#        followed the current one in that list: the induction pattern), 30% of the rest drills.
#   "10": recipe 9's name lists alone (every row): does induction form when nothing competes?
#   "11": recipe 10 with 30% copy rows (random tokens said twice, Rows.copy_row: the plain
#        induction task), a probe from scratch.
#   "12": recipe 7's continuation with 20% copy rows (does the shipped reader form induction?).
#   "13": copy rows alone, a probe from scratch (tools/train-model/induction_probe.py is the
#        cheaper tool for such probes).
#   "14": recipe 2 exactly, with one change: its tokenizer (4,096 ids) is trained with 60,000
#        generated names in its text, so a name is ~3 pieces with a distinctive first one, not
#        ~6 pieces of which half are single letters (docs/MODEL.md, "The ninth session's probes").
# "defaults" fill the options left unset on the command line, over COMMON_DEFAULTS.
COMMON_DEFAULTS = {"heads": 4, "kv_heads": 2, "answer_weight": 1.0, "check_every": 50,
                   "needle_k": 0, "vocab": 1024, "tokenizer_names": 0}
RECIPES = {
    "2": {"phases": [Stage((1, 2), 4, 0.0, 0.0, 1024),
                     Stage((2, 5), 6, 0.1, 0.3, 2048),
                     Stage((3, 8), 8, 0.35, 0.4, 3072)],
          "bar": [0.9, 0.85, 2.0], "bar_same_kind": False,
          "defaults": {"eval_every": 200, "lr": 2e-3, "warmup": 60}},
    "3": {"phases": [Stage((1, 3), 4, 0.0, 0.9, 1024),
                     Stage((2, 6), 6, 0.1, 0.6, 2048),
                     Stage((3, 8), 8, 0.3, 0.5, 3072, long_prob=0.3, long_passages=(20, 72),
                           long_questions=16)],
          "bar": [0.85, 0.8, 2.0], "bar_same_kind": True,
          "defaults": {"heads": 8, "kv_heads": 4, "answer_weight": 3.0, "eval_every": 400,
                       "check_every": 100, "needle_k": 40, "lr": 2e-3, "warmup": 60}},
    "4": {"phases": [Stage((2, 6), 6, 0.2, 0.75, 2048, hard_all=True)],
          "bar": [2.0], "bar_same_kind": False, "init_from": True,
          "defaults": {"eval_every": 150, "lr": 1e-3, "warmup": 30}},
    "5": {"phases": [Stage((2, 6), 12, 0.2, 0.4, 2048, hard_all=True)],
          "bar": [2.0], "bar_same_kind": False, "init_from": True,
          "extra_phrasings": True, "wrap_prob": 0.1,
          "defaults": {"eval_every": 150, "lr": 3e-4, "warmup": 30}},
    "6": {"phases": [Stage((2, 4), 10, 0.1, 0.6, 2048, hard_all=True)],
          "bar": [2.0], "bar_same_kind": False, "init_from": True,
          "extra_phrasings": True, "wrap_prob": 0.1, "reverse_prob": 0.3,
          "defaults": {"eval_every": 100, "lr": 5e-4, "warmup": 30}},
    "7": {"phases": [Stage((2, 6), 10, 0.1, 0.6, 2048, hard_all=True, drill_prob=0.5)],
          "bar": [2.0], "bar_same_kind": False, "init_from": True,
          "extra_phrasings": True, "wrap_prob": 0.1, "reverse_prob": 0.3,
          "defaults": {"eval_every": 100, "lr": 1e-3, "warmup": 30}},
    "8": {"phases": [Stage((1, 3), 8, 0.0, 0.5, 1024, hard_all=True, drill_prob=0.6,
                           drill_passages=(2, 8))],
          "bar": [2.0], "bar_same_kind": False,
          "defaults": {"eval_every": 200, "lr": 2e-3, "warmup": 60}},
    "9": {"phases": [Stage((1, 3), 6, 0.0, 0.5, 1024, hard_all=True, drill_prob=0.3,
                           drill_passages=(2, 8), repeat_prob=0.5)],
          "bar": [2.0], "bar_same_kind": False,
          "defaults": {"eval_every": 200, "lr": 2e-3, "warmup": 60}},
    "10": {"phases": [Stage((1, 3), 6, 0.0, 0.0, 1024, repeat_prob=1.0)],
           "bar": [2.0], "bar_same_kind": False,
           "defaults": {"eval_every": 200, "lr": 2e-3, "warmup": 60}},
    "11": {"phases": [Stage((1, 3), 6, 0.0, 0.0, 1024, repeat_prob=1.0, copy_prob=0.3)],
           "bar": [2.0], "bar_same_kind": False,
           "defaults": {"eval_every": 200, "lr": 2e-3, "warmup": 60}},
    "12": {"phases": [Stage((2, 6), 10, 0.1, 0.6, 2048, hard_all=True, drill_prob=0.5,
                            copy_prob=0.2)],
           "bar": [2.0], "bar_same_kind": False, "init_from": True,
           "extra_phrasings": True, "wrap_prob": 0.1, "reverse_prob": 0.3,
           "defaults": {"eval_every": 100, "lr": 1e-3, "warmup": 30}},
    "13": {"phases": [Stage((1, 3), 6, 0.0, 0.0, 1024, copy_prob=1.0)],
           "bar": [2.0], "bar_same_kind": False,
           "defaults": {"eval_every": 400, "lr": 2e-3, "warmup": 60}},
}
RECIPES["14"] = dict(RECIPES["2"], defaults=dict(RECIPES["2"]["defaults"], vocab=4096,
                                                  tokenizer_names=60000))
DEFAULT_RECIPE = "2"  # the shipped weights'
PHASE_DEV_K = [2, 4, 4]


def stage_at(frac):
    """The fixed-fraction curriculum of the first run (kept for --curriculum fixed)."""
    if frac < 0.12:
        return Stage((1, 2), 4, 0.0, 0.0)
    if frac < 0.40:
        return Stage((2, 5), 6, 0.1, 0.2)
    return Stage((3, 8), 8, 0.35, 0.3)


class Rows:
    """Builds training rows from an endless passage stream."""

    def __init__(self, args, enc, tmpl, extra_phrasings=False, wrap_prob=0.0, reverse_prob=0.0):
        self.args = args
        self.reverse_prob = reverse_prob        # recipe 6: share of name-from-value questions
        self.extra_phrasings = extra_phrasings  # recipe 5: ragdata.EXTRA's wordings too
        self.wrap_prob = wrap_prob              # recipe 5: share of questions with a prefix
        self.enc = enc
        self.tmpl = tmpl
        self.stream = ragdata.PassageStream(args.seed, "train")
        self.rng = random.Random(args.seed + 1)
        self.head = [enc.bos_id] + enc.encode(tmpl.prefix)

    def passages(self, st):
        if st.repeat_prob and self.rng.random() < st.repeat_prob:
            return ragdata.repeat_passages(self.rng, self.stream.names, self.rng.randint(1, 4))
        if st.drill_prob and self.rng.random() < st.drill_prob:
            n = self.rng.randint(*st.drill_passages)
            return ragdata.drill_passages(self.rng, self.stream.names, n)
        n = self.rng.randint(*st.passages)
        if self.rng.random() < st.hard_prob and n > 1:
            topic = self.rng.choice(ragdata.TOPICS)
            same = n if st.hard_all else self.rng.randint(2, n)
            out = [self.stream.next(topic) for _ in range(same)]
            out += [self.stream.next() for _ in range(n - same)]
            self.rng.shuffle(out)
            return out
        return [self.stream.next() for _ in range(n)]

    def copy_row(self, st):
        """BOS + n random tokens + the same n tokens again, trained on the repeat only: the
        plain induction task (each token of the repeat is what followed its previous token the
        first time), with no name pieces in the way; recipes 11-13 found that it forms no
        induction head here either (docs/MODEL.md). Weight code -3."""
        n = self.rng.randint(*st.copy_len)
        x = [self.rng.randrange(2, self.enc.vocab_size) for _ in range(n)]
        ids = [self.enc.bos_id] + x + x
        targets = ids[1:] + [-1]
        weights = [0.0] * (n + 1) + [-3.0] * (n - 1) + [0.0]
        return ids, list(range(len(ids))), targets, weights, n + 1, [(n + 1, n)], []

    def long_row(self, st):
        """One long row: BOS + prefix + dozens of passages of random kinds (about as many of each
        kind as a retrieval would bring) + st.long_questions questions. Attention in blocks (the
        engine's prompt is dense, but T x T scores of 2-8K tokens would cost more than the rest
        of the step): the prefix is causal; the passages attend to the prefix and causally to the
        passages of their chunk (--chunk-tokens, about as far back as the dense rows reach); every
        question attends to the whole context and itself. So the questions learn to find one
        passage among thousands of tokens at the cost of short rows."""
        n = self.rng.randint(*st.long_passages)
        ps = [self.stream.next() for _ in range(n)]
        r = self.row(st, ps, st.long_questions, gapped=False)
        return r + (self.blocks(r, len(self.head)),)

    def blocks(self, r, head_len):
        ids, _, _, _, ctx_len, segments, spans = r
        T = len(ids)
        inf = float("-inf")
        out = [model_lib.Block(0, head_len, None,
                               torch.full((head_len, head_len), inf).triu(1), k_hi=head_len)]
        chunk = []  # passage spans of the current chunk

        def flush():
            lo, hi = chunk[0][0], chunk[-1][1]
            n = hi - lo
            keys = torch.cat([torch.arange(head_len), torch.arange(lo, hi)])
            bias = torch.zeros(n, head_len + n)
            bias[:, head_len:] = torch.full((n, n), inf).triu(1)
            out.append(model_lib.Block(lo, hi, keys, bias))
            chunk.clear()

        for a, b in spans:
            if chunk and b - chunk[0][0] > self.args.chunk_tokens:
                flush()
            chunk.append((a, b))
        if chunk:
            flush()
        bias = torch.full((T - ctx_len, T), inf)
        bias[:, :ctx_len] = 0
        for s0, L in segments:
            q = s0 - ctx_len
            bias[q:q + L, s0:s0 + L] = torch.full((L, L), inf).triu(1)
        out.append(model_lib.Block(ctx_len, T, None, bias, k_hi=T))
        return out

    def row(self, st, ps=None, questions=0, gapped=True):
        """-> (ids, pos, targets, weights, ctx_len, segments, passage spans) for one context +
        question segments."""
        rng, enc = self.rng, self.enc
        if ps is None and st.copy_prob and rng.random() < st.copy_prob:
            return self.copy_row(st)
        ps = ps or self.passages(st)
        questions = questions or st.questions
        ids = list(self.head)
        pos = list(range(len(ids)))
        tgt_w = [0.0] * len(ids)
        p_ids = [enc.encode(self.tmpl.passage(p["text"])) for p in ps]
        ctx_len = len(ids) + sum(len(x) for x in p_ids)
        gaps = [0] * len(ps)
        if gapped and rng.random() < st.gap_prob:
            room = max(0, self.args.span - ctx_len - 64)
            cuts = sorted(rng.randint(0, room) for _ in range(len(ps)))
            gaps = [b - a for a, b in zip([0] + cuts[:-1], cuts)]
        p = len(ids)
        spans = []
        for x, g in zip(p_ids, gaps):
            p += g
            spans.append((len(ids), len(ids) + len(x)))
            ids += x
            pos += range(p, p + len(x))
            tgt_w += [self.args.lm_weight] * len(x)
            p += len(x)
        # Language-model targets inside the context; the last context token predicts nothing.
        targets = ids[1:] + [-1]
        weights = tgt_w[1:] + [0.0]
        # Question segments: pick (passage, fact) pairs, distinct passages first.
        order = list(range(len(ps)))
        rng.shuffle(order)
        picks = [order[i % len(order)] for i in range(questions)]
        segments = []
        texts = [p["text"] for p in ps]
        for k, pi in enumerate(picks):
            facts = ps[pi]["facts"]
            fi = (k // len(order) + rng.randrange(len(facts))) % len(facts)
            phrasings, answer = facts[fi]
            reverse = self.reverse_prob and rng.random() < self.reverse_prob and \
                ragdata.unique_value(texts, pi, answer)
            if reverse:
                text, answer = ragdata.reverse_question(rng, ps[pi], answer)
            elif self.extra_phrasings and ps[pi]["topic"] in ragdata.EXTRA:  # not [-1]: held out
                text = rng.choice(phrasings[:-1] + ragdata.extra_phrasings(ps[pi])[fi])
                if rng.random() < self.wrap_prob:
                    text = rng.choice(ragdata.WRAPPERS) + text
            else:
                text = rng.choice(phrasings[:-1])
            q = enc.encode(self.tmpl.question(text))
            a = enc.encode(" " + answer) + [enc.eos_id]
            seg = q + a
            start = len(ids)
            ids += seg
            pos += range(p, p + len(seg))
            t = seg[1:] + [-1]
            # Codes (split in collate): -2 question targets, -1 answer targets (+ EOS). The
            # question's own tokens are trained too: its subject's name can only be predicted by
            # copying it from a passage, the induction signal that retrieval builds on.
            w = [-2.0] * (len(q) - 1) + [-1.0] * len(a) + [0.0]
            targets += t
            weights += w
            segments.append((start, len(seg)))
        return ids, pos, targets, weights, ctx_len, segments, spans


def collate(rows, with_mask=True):
    """Pads rows into tensors with the segment attention masks (mask None without with_mask)."""
    T = max(len(r[0]) for r in rows)
    B = len(rows)
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    tgt = torch.full((B, T), -1, dtype=torch.long)
    w_ans = torch.zeros(B, T)
    w_q = torch.zeros(B, T)
    w_lm = torch.zeros(B, T)
    w_copy = torch.zeros(B, T)
    mask = torch.zeros(B, T, T, dtype=torch.bool) if with_mask else None
    causal = torch.ones(T, T, dtype=torch.bool).tril() if with_mask else None
    for b, (i, p, t, w, ctx_len, segs) in enumerate(r[:6] for r in rows):
        n = len(i)
        ids[b, :n] = torch.tensor(i)
        pos[b, :n] = torch.tensor(p)
        tgt[b, :n] = torch.tensor(t)
        wt = torch.tensor(w)
        w_ans[b, :n] = (wt == -1).float()
        w_q[b, :n] = (wt == -2).float()
        w_lm[b, :n] = (wt > 0).float()
        w_copy[b, :n] = (wt == -3).float()
        if not with_mask:
            continue
        mask[b, :ctx_len, :ctx_len] = causal[:ctx_len, :ctx_len]
        for s, L in segs:
            mask[b, s:s + L, :ctx_len] = True
            mask[b, s:s + L, s:s + L] = causal[:L, :L]
        idx = torch.arange(n, T)
        mask[b, idx, idx] = True  # padding attends to itself only
    return ids, pos, tgt, w_ans, w_q, w_lm, w_copy, mask


def batch(rows_gen, st, budget):
    """-> (tensors, blocks or None, tokens) of one step: rows up to the token budget, or one long
    row (a share st.long_prob of the steps)."""
    if st.long_prob > 0 and rows_gen.rng.random() < st.long_prob:
        r = rows_gen.long_row(st)
        ids, pos, tgt, w_ans, w_q, w_lm, w_copy, _ = collate([r[:7]], with_mask=False)
        return (ids, pos, tgt, w_ans, w_q, w_lm, w_copy, None), r[7], len(r[0])
    rows, tokens = [], 0
    while tokens < budget:
        r = rows_gen.row(st)
        rows.append(r)
        tokens += len(r[0])
    return collate(rows), None, tokens


# ---- evaluation (teacher-forced exact match == greedy exact match) ------------------------------

def prompt_ids(enc, tmpl, item):
    ids = [enc.bos_id] + enc.encode(tmpl.prefix)
    for p in item["passages"]:
        ids += enc.encode(tmpl.passage(p))
    return ids + enc.encode(tmpl.question(item["question"]))


@torch.no_grad()
def exact_match(model, enc, tmpl, items, bs=8):
    """Fraction of items whose greedy answer is exactly ' <answer>' + EOS: greedy decoding
    reproduces the answer iff the argmax is right at every answer position given the right
    prefix, so one teacher-forced forward per item decides it. Prompts longer than 2,048 tokens
    (the needle) go one at a time, with causal attention in chunks of queries."""
    model.eval()
    good = 0
    long_items = [it for it in items if len(it["passages"]) > 16]
    items = [it for it in items if len(it["passages"]) <= 16]
    for it in long_items:
        pr = prompt_ids(enc, tmpl, it)
        a = enc.encode(" " + it["answer"]) + [enc.eos_id]
        seq = pr + a
        ids = torch.tensor([seq])
        pos = torch.arange(len(seq)).unsqueeze(0)
        pred = model(ids, pos, None, model_lib.causal_blocks(len(seq))).argmax(-1)
        good += pred[0, len(pr) - 1:len(pr) - 1 + len(a)].tolist() == a
    for i in range(0, len(items), bs):
        chunk = items[i:i + bs]
        rows = []
        for it in chunk:
            pr = prompt_ids(enc, tmpl, it)
            a = enc.encode(" " + it["answer"]) + [enc.eos_id]
            rows.append((pr, a))
        T = max(len(p) + len(a) for p, a in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        for b, (p, a) in enumerate(rows):
            seq = p + a
            ids[b, :len(seq)] = torch.tensor(seq)
        pos = torch.arange(T).unsqueeze(0).expand(len(rows), T)
        mask = torch.ones(T, T, dtype=torch.bool).tril().unsqueeze(0).expand(len(rows), T, T)
        pred = model(ids, pos, mask).argmax(-1)
        for b, (p, a) in enumerate(rows):
            got = pred[b, len(p) - 1:len(p) - 1 + len(a)].tolist()
            good += got == a
    model.train()
    return good / (len(items) + len(long_items))


# ---- training ----------------------------------------------------------------------------------

def progress(step, tokens, args):
    """Fraction of the run done: by tokens with --tokens (steps differ in size by phase), else by
    steps."""
    if args.tokens:
        return tokens / args.tokens
    return step / args.steps


def lr_at(step, frac, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def plot(log_path, png_path):
    try:
        import matplotlib
    except ImportError:
        sys.exit("--plot needs python3-matplotlib (apt-get install python3-matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, [float(r["answer_loss"]) for r in rows], label="answer loss", lw=0.8)
    ax.plot(steps, [float(r["lm_loss"]) for r in rows], label="passage LM loss", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_yscale("log")
    ev = [(int(r["step"]), float(r["dev_em"])) for r in rows if r["dev_em"]]
    held = [(int(r["step"]), float(r["dev_em_heldout"])) for r in rows
            if r.get("dev_em_heldout")]
    if ev:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in ev], [e for _, e in ev], "k.-",
                 label="dev exact match (4 passages, training phrasings)")
        if held:
            ax2.plot([s for s, _ in held], [e for _, e in held], "r.--",
                     label="dev exact match (4 passages, held-out phrasing)")
        for col, style, label in (
                ("dev_em_same", "b.-", "dev exact match (4 passages of one kind)"),
                ("needle_em", "gs-", "needle dev (gold among dozens of passages)")):
            pts = [(int(r["step"]), float(r[col])) for r in rows if r.get(col)]
            if pts:
                ax2.plot([s for s, _ in pts], [e for _, e in pts], style, label=label, ms=3)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("dev exact match")
        ax2.legend(loc="center right", fontsize=8)
    last = None
    for r in rows:  # curriculum phase changes
        ph = r.get("phase")
        if ph and last is not None and ph != last:
            ax.axvline(int(r["step"]), color="grey", ls=":", lw=0.8)
            ax.text(int(r["step"]), ax.get_ylim()[1], " phase %s" % ph, va="top", fontsize=8,
                    color="grey")
        last = ph
    ax.legend(loc="upper right")
    ax.set_title("reader training (tools/train-model/train.py)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokenize-bin", default="build/bin/ragserve-tokenize")
    ap.add_argument("--out", default="data/models/reader")
    ap.add_argument("--work", default=".train-work", help="checkpoints, logs, tokenizer")
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest when other work shares the cores)")
    ap.add_argument("--steps", type=int, default=2000,
                    help="run length in steps (ignored with --tokens)")
    ap.add_argument("--tokens", type=float, default=0,
                    help="run length in training tokens (the learning-rate schedule and the "
                         "phase caps follow it)")
    ap.add_argument("--curriculum", default="adaptive", choices=["adaptive", "fixed"])
    ap.add_argument("--phase-caps", default="0.35,0.65",
                    help="latest end of phases 0 and 1, as fractions of the run")
    ap.add_argument("--tokens-per-step", type=int, default=0,
                    help="tokens per step (0: the phase's, 1,024-3,072; 3,072 with --passages)")
    ap.add_argument("--lr", type=float, help="(recipe) peak learning rate")
    ap.add_argument("--warmup", type=int, help="(recipe) warm-up steps")
    ap.add_argument("--init-from", default="",
                    help="a continuation: start from this exported model (config.json, "
                         "model.safetensors; its tokenizer.json becomes the run's) instead of "
                         "random weights; the optimizer starts fresh")
    ap.add_argument("--no-init-eval", dest="init_eval", action="store_false",
                    help="with --init-from: skip the dev scores of the loaded weights before the "
                         "first step")
    ap.add_argument("--lm-weight", type=float, default=0.25)
    ap.add_argument("--question-weight", type=float, default=0.5)
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                    help="curriculum and the defaults of the options marked (recipe); see RECIPES")
    ap.add_argument("--answer-weight", type=float,
                    help="(recipe) weight of the answer tokens' loss (the question's is "
                         "--question-weight, the passages' --lm-weight)")
    ap.add_argument("--long-prob", type=float, default=-1,
                    help="share of the steps made of one long row (default: the phase's)")
    ap.add_argument("--chunk-tokens", type=int, default=1024,
                    help="long rows: passages attend to the passages of their chunk of about "
                         "this many tokens")
    ap.add_argument("--passages", default="", help="LO,HI: fixed passages per row (no curriculum)")
    ap.add_argument("--questions", type=int, default=4, help="question segments with --passages")
    ap.add_argument("--hard-prob", type=float, default=-1,
                    help="with --passages: share of rows with same-kind distractors (default: "
                         "the phase's)")
    ap.add_argument("--const-lr", type=float, default=0,
                    help="a constant learning rate instead of the schedule (a continuation)")
    ap.add_argument("--span", type=int, default=9000, help="position span of gapped rows")
    ap.add_argument("--vocab", type=int, help="(recipe) tokenizer vocabulary; 1,024 by default")
    ap.add_argument("--tokenizer-passages", type=int, default=6000)
    ap.add_argument("--tokenizer-names", type=int,
                    help="(recipe) generated names added to the tokenizer's training text")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, help="(recipe)")
    ap.add_argument("--kv-heads", type=int, help="(recipe)")
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--rope-theta", type=float, default=100000.0)
    ap.add_argument("--eval-every", type=int, help="(recipe) steps between full dev evaluations")
    ap.add_argument("--start-phase", type=int, default=0,
                    help="curriculum phase of a fresh run (probes of later phases)")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--dev-items", type=int, default=64)
    ap.add_argument("--check-every", type=int,
                    help="(recipe) steps between the phase-bar checks of the early phases")
    ap.add_argument("--needle-k", type=int,
                    help="(recipe) passages of the needle dev check (last phase; 0: none)")
    ap.add_argument("--needle-items", type=int, default=6)
    ap.add_argument("--needle-every", type=int, default=1200,
                    help="steps between needle dev checks in the last phase (and at the end; a "
                         "multiple of --eval-every; one 4K-token prompt costs ~10 s here)")
    ap.add_argument("--plot", default="", help="write the loss curve PNG here at the end")
    args = ap.parse_args()
    recipe = RECIPES[args.recipe]
    for k, v in dict(COMMON_DEFAULTS, **recipe["defaults"]).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    PHASES, PHASE_BAR = recipe["phases"], recipe["bar"]
    if recipe.get("init_from") and not args.init_from:
        ap.error("--recipe %s continues a trained model: give --init-from DIR" % args.recipe)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    tmpl = ragdata.Template()
    tok_path = os.path.join(args.work, "tokenizer.json")
    if args.init_from and not os.path.exists(tok_path):  # the ids the weights were trained on
        shutil.copyfile(os.path.join(args.init_from, "tokenizer.json"), tok_path)
    if not os.path.exists(tok_path):
        train_tokenizer(args, tmpl, tok_path)
    enc = Encoder(tok_path)
    check_tokenizer(args, enc, tmpl, tok_path)

    cfg = Config(enc.vocab_size, args.hidden, args.layers, args.heads, args.kv_heads,
                 args.intermediate, args.rope_theta)
    model = Reader(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print("model: %d parameters, vocab %d" % (n_params, enc.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    rows = Rows(args, enc, tmpl, recipe.get("extra_phrasings", False),
                recipe.get("wrap_prob", 0.0), recipe.get("reverse_prob", 0.0))
    if rows.extra_phrasings:
        bad = ragdata.check_extra_phrasings()
        if bad:
            raise SystemExit("extra phrasings too close to held-out ones:\n" + "\n".join(bad))

    dev_k = {k: ragdata.eval_items(ragdata.DEV_SEED, args.dev_items, k, phrasing="train")
             for k in set(PHASE_DEV_K)}
    # Same-kind dev: every distractor of the gold passage's kind (what retrieval brings).
    dev_same = {k: ragdata.eval_items(ragdata.DEV_SEED + 1, args.dev_items, k, phrasing="train",
                                      same_topic_distractors=k - 1)
                for k in set(PHASE_DEV_K)}
    dev_needle = ragdata.eval_items(ragdata.DEV_SEED + 2, args.needle_items, args.needle_k,
                                    phrasing="canonical", spread=True) if args.needle_k else []
    dev_held = ragdata.eval_items(ragdata.DEV_SEED, args.dev_items, 4, phrasing="heldout")
    dev_drill = ragdata.drill_items(ragdata.DEV_SEED + 3, args.dev_items, 8) \
        if any(p.drill_prob for p in PHASES) else []
    dev_repeat = ragdata.repeat_items(ragdata.DEV_SEED + 4, args.dev_items, 3) \
        if any(p.repeat_prob for p in PHASES) else []
    caps = [float(x) for x in args.phase_caps.split(",")] + [2.0]

    ckpt = os.path.join(args.work, "checkpoint.pt")
    log_path = os.path.join(args.work, "train_log.csv")
    step, elapsed, tokens_seen, phase, phase_log = 0, 0.0, 0, args.start_phase, []
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        tokens_seen = state.get("tokens", 0)
        phase, phase_log = state.get("phase", 0), state.get("phase_log", [])
        rows.stream.rng.setstate(state["stream_rng"])
        rows.stream.names.used = state["names_used"]
        rows.rng.setstate(state["rows_rng"])
        torch.set_rng_state(state["torch_rng"])
        print("resumed at step %d (%.0f s trained, phase %d)" % (step, elapsed, phase))
    else:
        if args.init_from:
            model_lib.load_hf(model, args.init_from)
        if args.init_from and args.init_eval:
            print("initialized from %s: dev_em %.4f same_em %.4f heldout_em %.4f (4 passages)" % (
                args.init_from, exact_match(model, enc, tmpl, dev_k[4]),
                exact_match(model, enc, tmpl, dev_same[4]),
                exact_match(model, enc, tmpl, dev_held)), flush=True)
        with open(log_path, "w") as f:
            f.write("step,seconds,tokens,lr,answer_loss,lm_loss,dev_em,phase,phase_dev_em,"
                    "dev_em_heldout,dev_em_same,phase_dev_same,needle_em\n")

    def done():
        return tokens_seen >= args.tokens if args.tokens else step >= args.steps

    t0 = time.time() - elapsed
    tokens_run = 0
    while not done():
        frac = progress(step, tokens_seen, args)
        if args.curriculum == "fixed":
            st = stage_at(frac)
        else:
            st = PHASES[phase]
        if args.passages:  # a fixed stage instead of the curriculum (a later phase of a run)
            lo, hi = (int(x) for x in args.passages.split(","))
            st = Stage((lo, hi), args.questions, st.gap_prob,
                       st.hard_prob if args.hard_prob < 0 else args.hard_prob, 3072)
        if args.long_prob >= 0:
            st = copy.copy(st)
            st.long_prob = args.long_prob
            if not st.long_questions:  # a phase without long rows: recipe 3's
                long = RECIPES["3"]["phases"][-1]
                st.long_passages, st.long_questions = long.long_passages, long.long_questions
        budget = args.tokens_per_step or st.tokens or 3072
        (ids, pos, tgt, w_ans, w_q, w_lm, w_copy, mask), blocks, ntok = batch(rows, st, budget)
        lr = args.const_lr or lr_at(step, frac, args)
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(ids, pos, mask, blocks)
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1).clamp(min=0),
                             reduction="none").view(tgt.shape)
        ans = (ce * w_ans).sum() / w_ans.sum().clamp(min=1)
        qs = (ce * w_q).sum() / w_q.sum().clamp(min=1)
        lm = (ce * w_lm).sum() / w_lm.sum().clamp(min=1e-6)
        cp = (ce * w_copy).sum() / w_copy.sum().clamp(min=1)
        loss = args.answer_weight * (ans + cp) + args.question_weight * qs + args.lm_weight * lm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_run += ntok
        tokens_seen += ntok
        dev_em = phase_em = held_em = same_em = phase_same = needle_em = ""
        # Early phases check their own dev scores (random-kind and same-kind distractors) every
        # --check-every steps (they decide their end); the 4-passage dev scores (training and
        # held-out phrasings, same-kind) are logged every --eval-every, the needle every
        # --needle-every steps of the last phase.
        full = step % args.eval_every == 0 or done()
        check = phase < len(PHASES) - 1 and args.curriculum == "adaptive" and \
            step % max(1, args.check_every) == 0
        if full or check:
            frac = progress(step, tokens_seen, args)
            k = PHASE_DEV_K[phase]
            em4 = exact_match(model, enc, tmpl, dev_k[4]) if full or k == 4 else None
            same_bar = recipe["bar_same_kind"]  # else the same-kind score is only logged
            same4 = exact_match(model, enc, tmpl, dev_same[4]) \
                if full or (k == 4 and same_bar) else None
            if full:
                dev_em = "%.4f" % em4
                same_em = "%.4f" % same4
                held_em = "%.4f" % exact_match(model, enc, tmpl, dev_held)
            em = em4 if k == 4 else exact_match(model, enc, tmpl, dev_k[k])
            sem = same4 if k == 4 else \
                exact_match(model, enc, tmpl, dev_same[k]) if same_bar else None
            phase_em = "%.4f" % em
            phase_same = "%.4f" % sem if sem is not None else ""
            if full and dev_repeat:
                print("repeat dev exact match (the rest of one of 3 name lists): %.4f" %
                      exact_match(model, enc, tmpl, dev_repeat), flush=True)
            if full and dev_drill:
                print("drill dev exact match (8 one-fact passages of one shape): %.4f" %
                      exact_match(model, enc, tmpl, dev_drill), flush=True)
            if dev_needle and phase == len(PHASES) - 1 and (
                    step % args.needle_every == 0 or done()):
                needle_em = "%.4f" % exact_match(model, enc, tmpl, dev_needle)
            export(model, args.out, tok_path, enc.bos_id, enc.eos_id)  # the latest, for evals
            bar = PHASE_BAR[phase] if phase < len(PHASES) else 2.0
            score = min(em, sem) if same_bar else em
            if args.curriculum == "adaptive" and phase < len(PHASES) - 1 and (
                    score >= bar or frac >= caps[phase]):
                why = "cap %.2f of the run" % caps[phase]
                if score >= bar:
                    why = "dev %.3f%s >= %.2f" % (
                        em, ", same kind %.3f" % sem if same_bar else "", bar)
                phase_log.append({"phase": phase + 1, "step": step, "tokens": tokens_seen,
                                  "why": why})
                print("curriculum: phase %d -> %d at step %d (%s)" % (phase, phase + 1, step,
                                                                        why), flush=True)
                phase += 1
        now = time.time() - t0
        with open(log_path, "a") as f:
            f.write("%d,%.1f,%d,%.6f,%.4f,%.4f,%s,%d,%s,%s,%s,%s,%s\n" % (
                step, now, ntok, lr, ans.item(), lm.item(), dev_em, phase, phase_em, held_em,
                same_em, phase_same, needle_em))
        if step % 10 == 0 or dev_em or phase_em:
            print("step %d  %.0fs  %.2fM tok  %.0f tok/s  lr %.2e  answer %.3f  question %.3f  "
                  "lm %.3f%s  phase %d%s%s%s%s%s%s%s" % (
                      step, now, tokens_seen / 1e6, tokens_run / max(1e-9, now - elapsed), lr,
                      ans.item(), qs.item(), lm.item(),
                      "  copy %.3f" % cp.item() if w_copy.sum() > 0 else "", phase,
                      " long" if blocks else "",
                      (" dev_em " + dev_em) if dev_em else "",
                      (" same_em " + same_em) if same_em else "",
                      (" heldout_em " + held_em) if held_em else "",
                      (" phase_em " + phase_em) if phase_em else "",
                      (" phase_same " + phase_same) if phase_same else "",
                      (" needle_em " + needle_em) if needle_em else ""), flush=True)
        if step % args.ckpt_every == 0 or done():
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": now, "tokens": tokens_seen, "phase": phase,
                        "phase_log": phase_log, "stream_rng": rows.stream.rng.getstate(),
                        "names_used": rows.stream.names.used, "rows_rng": rows.rng.getstate(),
                        "torch_rng": torch.get_rng_state(), "args": vars(args)}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    export(model, args.out, tok_path, enc.bos_id, enc.eos_id)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "args": vars(args), "parameters": n_params,
                   "steps": step, "tokens": tokens_seen, "curriculum": phase_log,
                   "seconds": round(time.time() - t0, 1)}, f, indent=2)
        f.write("\n")
    if args.plot:
        plot(log_path, args.plot)
    print("wrote %s (%d parameters, %d steps, %.0f s)" % (args.out, n_params, step,
                                                          time.time() - t0))


def plot_main(argv):
    """train.py --plot-only LOG PNG: the loss curve of a finished (or running) run."""
    plot(argv[0], argv[1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plot-only"]:
        plot_main(sys.argv[2:])
    else:
        main()
