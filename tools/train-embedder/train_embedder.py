#!/usr/bin/python3
"""Trains the small dense text embedder shipped in data/models/embedder/ (BERT architecture,
WordPiece vocabulary built here, mean pooling, L2-normalised), served by the engine's BERT encoder
(services/engine/bert.h) as a collection's `"embedder": "model:data/models/embedder"`.

Data (all generated here, nothing downloaded), question -> gold passage pairs:
  * corpus kind: passages of tools/make-corpus/make_corpus.py's ten kinds drawn through
    tools/train-model/ragdata.py's training stream (fresh seed, names from its training half, the
    sample corpus's names excluded); the question is one of the fact's phrasings except the
    held-out last one (phrasings[-1] is kept for evaluation, as for the reader model);
  * paraphrase kind: passages and questions of tools/make-paraphrase-set/make_paraphrase_set.py's
    generator (fresh seed) whose concept combination is in neither the benchmark set (seed 5,
    400 passages) nor the fusion dev set (seed 6, 400 passages).
With --recipe 2 the paraphrase kind is replaced by general-language pairs (lexicon.py: WordNet
synonyms and glosses of the passages' words, reworded corpus questions, numbers in words), so
nothing of the paraphrase generator is trained on (docs/EMBEDDER.md, "Recipe 2"). --recipe 3 (the
shipped model, docs/EMBEDDER.md "Recipe 3") adds descriptions of other training-stream passages by
their facts, without names, in batches of two kinds (passages stating a demo-corpus passage's
facts left out), and calendar pairs.
Objective: in-batch negatives InfoNCE (symmetric, temperature 0.05) between the question and the
passage embeddings. Deterministic for a seed (one torch thread).

Usage (the shipped model's command, about 12 CPU-minutes of one core plus data generation; see
docs/EMBEDDER.md):
  OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 10 /usr/bin/python3 \
      tools/train-embedder/train_embedder.py --recipe 3 --hidden 64 --max-steps 3000 \
      --cpu-minutes 40 --minutes 60 --out /tmp/emb/out
"""
import argparse
import importlib.util
import json
import math
import os
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "train-model"))
import lexicon  # noqa: E402
import wordpiece  # noqa: E402
import ragdata  # noqa: E402


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


para = _load(os.path.join(ROOT, "tools", "make-paraphrase-set", "make_paraphrase_set.py"),
             "make_paraphrase_set")


def eval_combos(seed, n):
    """The concept combinations of make_paraphrase_set.py --seed seed --n n (same rng calls)."""
    return set(para.combos(n, random.Random(seed)))


def corpus_pairs(seed, n_passages):
    stream = ragdata.PassageStream(seed, split="train")
    rng = random.Random(seed + 1)
    pairs = []
    for _ in range(n_passages):
        p = stream.next()
        for phrasings, _answer in p["facts"]:
            pairs.append((rng.choice(phrasings[:-1]), p["text"]))
    return pairs


def paraphrase_pairs(seed, n, excluded):
    rng = random.Random(seed)
    pairs = []
    total = len(para.SUBJECTS) * len(para.PROPERTIES) * len(para.PLACES) * len(para.ERAS)
    for c in para.combos(min(total, n + len(excluded)), rng):
        if c in excluded:
            continue
        pairs.append((para.question(*c, rng), para.passage(*c, rng)))
        if len(pairs) == n:
            break
    return pairs


def description_pairs(seed, n_passages, lex, rng):
    """Recipe 3: {topic: [(a description of a passage by its facts, the passage)]} over fresh
    training-stream passages, leaving out any passage whose facts (attribute_signature) are those
    of a demo-corpus passage, so no evaluation passage's facts are described in training."""
    demo = set()
    with open(os.path.join(ROOT, "data", "corpus", "passages.jsonl"), encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            demo.add(lexicon.attribute_signature(p["metadata"]["topic"], p["text"]))
    stream = ragdata.PassageStream(seed, split="train")
    out, skipped = {}, 0
    for _ in range(n_passages):
        p = stream.next()
        if lexicon.attribute_signature(p["topic"], p["text"]) in demo:
            skipped += 1
            continue
        out.setdefault(p["topic"], []).append(
            (lexicon.describe(p, lexicon.head_noun(p), rng, lex), p["text"]))
    print(f"description pairs: {n_passages - skipped}, {skipped} passages left out for stating "
          "a demo passage's facts", flush=True)
    return out


class Bert(torch.nn.Module):
    """Hugging Face BertModel's forward (post-LayerNorm, erf GELU, absolute positions)."""

    def __init__(self, vocab, hidden, layers, heads, inter, max_pos, eps=1e-12):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.word = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(max_pos, hidden)
        self.ttype = torch.nn.Embedding(2, hidden)
        self.emb_ln = torch.nn.LayerNorm(hidden, eps=eps)
        self.layers = torch.nn.ModuleList()
        for _ in range(layers):
            m = torch.nn.Module()
            m.q, m.k, m.v = (torch.nn.Linear(hidden, hidden) for _ in range(3))
            m.o = torch.nn.Linear(hidden, hidden)
            m.ln1 = torch.nn.LayerNorm(hidden, eps=eps)
            m.up = torch.nn.Linear(hidden, inter)
            m.down = torch.nn.Linear(inter, hidden)
            m.ln2 = torch.nn.LayerNorm(hidden, eps=eps)
            self.layers.append(m)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids, mask):
        b, t = ids.shape
        pos = torch.arange(t).unsqueeze(0)
        x = self.emb_ln(self.word(ids) + self.pos(pos) + self.ttype(torch.zeros_like(ids)))
        h, d = self.heads, x.shape[-1] // self.heads
        bias = (1.0 - mask[:, None, None, :].float()) * -1e9
        for m in self.layers:
            q = m.q(x).view(b, t, h, d).transpose(1, 2)
            k = m.k(x).view(b, t, h, d).transpose(1, 2)
            v = m.v(x).view(b, t, h, d).transpose(1, 2)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1) @ v
            x = m.ln1(x + m.o(a.transpose(1, 2).reshape(b, t, h * d)))
            x = m.ln2(x + m.down(F.gelu(m.up(x))))
        mf = mask.unsqueeze(-1).float()
        return F.normalize((x * mf).sum(1) / mf.sum(1), dim=-1)

    def hf_tensors(self):
        """(name, array) in the Hugging Face BertModel naming."""
        out = [("embeddings.word_embeddings.weight", self.word.weight),
               ("embeddings.position_embeddings.weight", self.pos.weight),
               ("embeddings.token_type_embeddings.weight", self.ttype.weight),
               ("embeddings.LayerNorm.weight", self.emb_ln.weight),
               ("embeddings.LayerNorm.bias", self.emb_ln.bias)]
        for i, m in enumerate(self.layers):
            p = f"encoder.layer.{i}."
            for name, mod in (("attention.self.query", m.q), ("attention.self.key", m.k),
                              ("attention.self.value", m.v), ("attention.output.dense", m.o),
                              ("attention.output.LayerNorm", m.ln1),
                              ("intermediate.dense", m.up), ("output.dense", m.down),
                              ("output.LayerNorm", m.ln2)):
                out.append((p + name + ".weight", mod.weight))
                out.append((p + name + ".bias", mod.bias))
        return [(n, t.detach().numpy().astype(np.float32)) for n, t in out]


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, arr in sorted(tensors):
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def batch_ids(tok, texts, max_len):
    return pad([tok.encode(t, max_len) for t in texts])


def pad(seqs):
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def evaluate(model, tok, pairs, max_len):
    """hit@1 of each question against all passages of `pairs` (a quick dev check)."""
    model.eval()
    with torch.no_grad():
        qs = torch.cat([model(*batch_ids(tok, [q for q, _ in pairs[i:i + 64]], max_len))
                        for i in range(0, len(pairs), 64)])
        ps = torch.cat([model(*batch_ids(tok, [p for _, p in pairs[i:i + 64]], max_len))
                        for i in range(0, len(pairs), 64)])
    model.train()
    return float(((qs @ ps.T).argmax(1) == torch.arange(len(pairs))).float().mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--corpus-passages", type=int, default=6000)
    ap.add_argument("--paraphrase-pairs", type=int, default=15000)
    ap.add_argument("--recipe", type=int, default=1, choices=(1, 2, 3),
                    help="1: corpus + paraphrase-generator pairs (the shipped run of 2026-12-05); "
                         "2: corpus + general-language pairs (lexicon.py: WordNet, numbers), "
                         "nothing from the paraphrase generator; 3: recipe 2 + descriptions by "
                         "attributes of other passages (same-kind batches) and calendar pairs")
    ap.add_argument("--lexicon-pairs", type=int, default=10000, help="recipe 2: WordNet pairs")
    ap.add_argument("--number-pairs", type=int, default=5000, help="recipe 2: number pairs")
    ap.add_argument("--description-passages", type=int, default=8000,
                    help="recipe 3: passages described by their facts")
    ap.add_argument("--calendar-pairs", type=int, default=1000, help="recipe 3: month pairs")
    ap.add_argument("--cpu-minutes", type=float, default=3.0,
                    help="training budget in CPU time of this process (the machine is shared)")
    ap.add_argument("--minutes", type=float, default=45.0, help="training wall-clock cap")
    ap.add_argument("--max-steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0 = time.time()

    excluded = eval_combos(5, 400) | eval_combos(6, 400)
    corpus = corpus_pairs(args.seed, args.corpus_passages)
    if args.recipe == 1:
        paras = paraphrase_pairs(args.seed + 2, args.paraphrase_pairs, excluded)
    else:
        # The second half of each batch: corpus questions reworded with WordNet synonyms, WordNet
        # synonym and gloss pairs of the passages' words, and numbers in words (lexicon.py).
        lex = lexicon.Lexicon([p for _, p in corpus])
        lrng = random.Random(args.seed + 4)
        paras = [(lex.reword(q, lrng), p) for q, p in corpus]
        paras += [lex.pair(lrng) for _ in range(args.lexicon_pairs)]
        paras += [lexicon.number_pair(lrng) for _ in range(args.number_pairs)]
    descs = {}  # recipe 3: topic -> [(description, passage)]
    if args.recipe == 3:
        paras += [lexicon.calendar_pair(lrng) for _ in range(args.calendar_pairs)]
        descs = description_pairs(args.seed + 5, args.description_passages, lex, lrng)
    dev_c = corpus_pairs(args.seed + 100, 200)
    dev_p = paraphrase_pairs(args.seed + 102, 300, excluded)  # evaluation only
    dev_d = []  # recipe 3: descriptions of 200 other passages, for the log only
    if args.recipe == 3:
        dev_d = [pr for prs in description_pairs(args.seed + 105, 200, lex,
                                                 random.Random(args.seed + 106)).values()
                 for pr in prs]
    all_descs = [pr for topic in sorted(descs) for pr in descs[topic]]
    vocab = wordpiece.build_vocab([t for pr in corpus + paras + all_descs for t in pr],
                                  args.vocab)
    tok = wordpiece.WordPiece(vocab)
    print(f"data: {len(corpus)} corpus pairs, {len(paras)} "
          f"{'paraphrase' if args.recipe == 1 else 'general-language'} pairs, vocab {len(vocab)} "
          f"({time.time() - t0:.0f}s)", flush=True)

    # Token ids once, up front (the pure-Python tokenizer would otherwise cost as much as a step).
    corpus_ids = [(tok.encode(q, args.max_len), tok.encode(p, args.max_len)) for q, p in corpus]
    paras_ids = [(tok.encode(q, args.max_len), tok.encode(p, args.max_len)) for q, p in paras]
    desc_ids = {topic: [(tok.encode(q, args.max_len), tok.encode(p, args.max_len))
                        for q, p in descs[topic]] for topic in sorted(descs)}
    print(f"tokenized ({time.time() - t0:.0f}s)", flush=True)

    model = Bert(len(vocab), args.hidden, args.layers, args.heads, 4 * args.hidden,
                 args.max_len)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed + 3)
    # The learning-rate schedule follows --max-steps only, so a run that reaches them is the same
    # byte for byte whatever the machine's load. The CPU-time budget and the wall-clock cap only
    # stop a run early (training.json then says "stopped_by_budget": such a run is not
    # reproducible). Until 2026-12-06 the schedule's length was estimated from the CPU time
    # measured per step, so the shipped weights of both recipes reproduce in scores, not bytes.
    budget_s, wall_cap_s = args.cpu_minutes * 60, args.minutes * 60
    start, cpu0 = time.time(), time.process_time()
    step, log, stopped_by_budget = 0, [], False
    while step < args.max_steps:
        used = time.process_time() - cpu0
        if used > budget_s or time.time() - start > wall_cap_s:
            stopped_by_budget = True
            print(f"stopped by the CPU / wall budget at step {step} of {args.max_steps}: "
                  "this run is not reproducible", flush=True)
            break
        frac = step / max(1, args.max_steps)
        lr = args.lr * min(1.0, (step + 1) / 50) * max(0.05, 1.0 - frac)
        for g in opt.param_groups:
            g["lr"] = lr
        if desc_ids:
            # Thirds; the descriptions come from two kinds of passage, so a question's negatives
            # include passages of its own kind that differ only in their facts.
            third = args.batch // 3
            batch = rng.sample(corpus_ids, third) + rng.sample(paras_ids, third)
            rest = args.batch - 2 * third
            a, b = rng.sample(sorted(desc_ids), 2)
            batch += rng.sample(desc_ids[a], rest // 2) + rng.sample(desc_ids[b], rest - rest // 2)
        else:
            half = args.batch // 2
            batch = rng.sample(corpus_ids, half) + rng.sample(paras_ids, args.batch - half)
        q = model(*pad([b[0] for b in batch]))
        p = model(*pad([b[1] for b in batch]))
        logits = q @ p.T / args.temperature
        target = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            msg = {"step": step, "loss": round(float(loss), 4), "lr": round(lr, 6),
                   "elapsed_s": round(time.time() - start),
                   "cpu_s": round(time.process_time())}
            if step % 200 == 0:
                msg["dev_hit1_corpus"] = evaluate(model, tok, dev_c, args.max_len)
                msg["dev_hit1_paraphrase"] = evaluate(model, tok, dev_p, args.max_len)
                if dev_d:
                    msg["dev_hit1_description"] = evaluate(model, tok, dev_d, args.max_len)
            print(json.dumps(msg), flush=True)
            log.append(msg)

    final = {"dev_hit1_corpus": evaluate(model, tok, dev_c, args.max_len),
             "dev_hit1_paraphrase": evaluate(model, tok, dev_p, args.max_len)}
    if dev_d:
        final["dev_hit1_description"] = evaluate(model, tok, dev_d, args.max_len)
    print(json.dumps(final), flush=True)
    os.makedirs(os.path.join(args.out, "1_Pooling"), exist_ok=True)
    config = {"architectures": ["BertModel"], "model_type": "bert",
              "vocab_size": len(vocab), "hidden_size": args.hidden,
              "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
              "intermediate_size": 4 * args.hidden, "hidden_act": "gelu",
              "max_position_embeddings": args.max_len, "type_vocab_size": 2,
              "layer_norm_eps": 1e-12, "pad_token_id": 0, "torch_dtype": "float32"}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(args.out, "model.safetensors"), model.hf_tensors(),
                      {"format": "pt"})
    with open(os.path.join(args.out, "tokenizer.json"), "w") as f:
        json.dump(wordpiece.tokenizer_json(vocab, args.max_len), f, ensure_ascii=False)
    with open(os.path.join(args.out, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": args.hidden, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False}, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "args": vars(args), "steps": step,
                   "stopped_by_budget": stopped_by_budget,
                   "wall_s": round(time.time() - t0), "cpu_s": round(time.process_time()),
                   "torch": torch.__version__,
                   "pairs": {"corpus": len(corpus),
                             "paraphrase" if args.recipe == 1 else "general": len(paras),
                             "description": len(all_descs)},
                   "final": final, "log": log}, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} after {step} steps, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
