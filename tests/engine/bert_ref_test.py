#!/usr/bin/python3
"""The engine's BERT encoder (services/engine/bert.h) against an independent numpy BERT.

Writes random BERT checkpoints in the Hugging Face layout with numpy only (config.json,
model.safetensors, tokenizer.json, optionally 1_Pooling/config.json), tokenizes a set of tricky
strings with a WordPiece tokenizer written here from the Hugging Face rules (BertNormalizer,
BertPreTokenizer, WordPiece), computes the embeddings with a numpy forward pass, and checks that
the engine (through tests/engine/bert_embed.cc) gives the same token ids and embeddings within
1e-4 (max abs). Variants: mean pooling with f32 weights; CLS pooling from 1_Pooling/config.json
with bf16 weights under a "bert." prefix; a forced pooling option.

Usage: bert_ref_test.py --bin-dir BUILD/bin
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import unicodedata

import numpy as np

TOL = 1e-4

TEXTS = [
    "Hello world",
    "Héllo Wörld! Naïve café résumé.",
    "ÀÉÎÕÜ àéîõü ÇçÑñ",
    "東京タワーは高い。北京大学",
    "한국어 텍스트",
    "Привет, мир! Ещё раз.",
    "مَرْحَبًا بالعالم",
    "ΑΒΓ αβγ Ωμέγα",
    "İstanbul Straße ﬁsh ＡＢＣ１２３",
    "don't stop—now... (really?) [yes] {no} #tag @user $5 100% a+b=c",
    "unknownwordxyz qqqq hellos unhello",
    "supercalifragilisticexpialidocious " + "x" * 120,
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em-space\u3000ideographic",
    "control\x00chars\x07here\u200bzero\ufeffwidth\ufffdreplacement",
    "emoji 😀 mixed 👍🏽 ok",
    "   ",
    "",
    "the quick brown fox jumps over the lazy dog " * 12,
    "a-b_c/d\\e:f;g<h>i",
    "ｶﾀｶﾅ and ㌀ compat",
]

WORDS = ["hello", "world", "hell", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
         "cafe", "resume", "naive", "un", "known", "word", "stop", "now", "really", "yes", "no",
         "tag", "user", "and", "tabs", "new", "lines", "control", "chars", "here", "zero",
         "width", "emoji", "mixed", "ok", "super", "cali", "istanbul", "strasse", "fish", "abc",
         "compat", "мир", "раз", "привет", "ωμεγα"]
CONT = ["s", "o", "lo", "known", "word", "xyz", "ful", "ing", "ed", "fragil", "istic", "ex"]
EXCLUDED_CHARS = {"q", "ы", "😀"}  # so some words become [UNK]


# ---- WordPiece (Hugging Face tokenizers semantics), written independently of the engine ----

def is_cjk(cp):
    return any(a <= cp <= b for a, b in [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                         (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
                                         (0x2B920, 0x2CEAF), (0xF900, 0xFAFF),
                                         (0x2F800, 0x2FA1F)])


def normalize(text):
    out = []
    for ch in text:
        if ch in "\t\n\r":
            out.append(" ")
            continue
        if ord(ch) in (0, 0xFFFD) or unicodedata.category(ch)[0] == "C":
            continue
        if ch.isspace():
            out.append(" ")
        elif is_cjk(ord(ch)):
            out.extend([" ", ch, " "])
        else:
            out.append(ch)
    s = unicodedata.normalize("NFD", "".join(out))
    s = "".join(c for c in s if unicodedata.category(c) != "Mn")
    return "".join(c.lower() for c in s)


def is_punct(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch)[0] == "P"


def words_of(text):
    words = []
    for chunk in normalize(text).split():
        cur = ""
        for ch in chunk:
            if is_punct(ch):
                if cur:
                    words.append(cur)
                words.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


def wordpiece(word, vocab):
    if len(word) > 100:
        return [vocab["[UNK]"]]
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                out.append(vocab[piece])
                start = end
                break
        else:
            return [vocab["[UNK]"]]
    return out


def encode(text, vocab, max_len):
    ids = []
    for w in words_of(text):
        ids.extend(wordpiece(w, vocab))
    return [vocab["[CLS]"]] + ids[:max_len - 2] + [vocab["[SEP]"]]


def make_vocab():
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##" + c for c in CONT]
    chars = sorted({c for t in TEXTS for w in words_of(t) for c in w} - EXCLUDED_CHARS)
    tokens += chars + ["##" + c for c in chars]
    seen, vocab = set(), {}
    for t in tokens:
        if t not in seen:
            seen.add(t)
            vocab[t] = len(vocab) + (7 if len(vocab) >= 5 else 0)  # a gap in the ids
    return vocab


# ---- numpy BERT ----

def bf16_round(a):
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def random_bert(rng, cfg, bf16):
    h, ff = cfg["hidden_size"], cfg["intermediate_size"]

    def m(*shape, std=0.3):
        a = (rng.standard_normal(shape) * std).astype(np.float32)
        return bf16_round(a) if bf16 else a

    w = {"embeddings.word_embeddings.weight": m(cfg["vocab_size"], h, std=1.0),
         "embeddings.position_embeddings.weight": m(cfg["max_position_embeddings"], h, std=0.5),
         "embeddings.token_type_embeddings.weight": m(cfg["type_vocab_size"], h, std=0.5),
         "embeddings.LayerNorm.weight": 1 + m(h, std=0.1),
         "embeddings.LayerNorm.bias": m(h, std=0.1)}
    if bf16:
        w["embeddings.LayerNorm.weight"] = bf16_round(w["embeddings.LayerNorm.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, (o, n) in [("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                             ("attention.self.value", (h, h)),
                             ("attention.output.dense", (h, h)), ("intermediate.dense", (ff, h)),
                             ("output.dense", (h, ff))]:
            w[p + name + ".weight"] = m(o, n, std=1.0 / np.sqrt(n))
            w[p + name + ".bias"] = m(o, std=0.1)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            g = 1 + m(h, std=0.1)
            w[p + name + ".weight"] = bf16_round(g) if bf16 else g
            w[p + name + ".bias"] = m(h, std=0.1)
    return w


def layer_norm(x, g, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def erf(x):
    from math import erf as e
    return np.vectorize(e)(x)


def bert_forward(w, cfg, ids, pooling):
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    d, eps = h // nh, cfg["layer_norm_eps"]
    n = len(ids)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    x = (W["embeddings.word_embeddings.weight"][ids] +
         W["embeddings.position_embeddings.weight"][:n] +
         W["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name, a):
            return a @ W[p + name + ".weight"].T + W[p + name + ".bias"]
        q = lin("attention.self.query", x).reshape(n, nh, d).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, nh, d).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, nh, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(1, 0, 2).reshape(n, h)
        x = layer_norm(x + lin("attention.output.dense", a), W[p + "attention.output.LayerNorm.weight"],
                       W[p + "attention.output.LayerNorm.bias"], eps)
        u = lin("intermediate.dense", x)
        u = 0.5 * u * (1 + erf(u / np.sqrt(2)))
        x = layer_norm(x + lin("output.dense", u), W[p + "output.LayerNorm.weight"],
                       W[p + "output.LayerNorm.bias"], eps)
    e = x[0] if pooling == "cls" else x.mean(0)
    return e / max(np.linalg.norm(e), 1e-12)


# ---- files ----

def write_safetensors(path, tensors, bf16, prefix):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        if bf16:
            raw = (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raw = a.astype("<f4").tobytes()
        header[prefix + name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(a.shape),
                                 "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_model(dirname, cfg, w, vocab, bf16, prefix, pooling_file, max_len):
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(dict(cfg, architectures=["BertModel"], model_type="bert", hidden_act="gelu"), f)
    write_safetensors(os.path.join(dirname, "model.safetensors"), w, bf16, prefix)
    tok = {"version": "1.0",
           "truncation": {"max_length": max_len, "strategy": "LongestFirst", "stride": 0,
                          "direction": "Right"},
           "normalizer": {"type": "BertNormalizer", "clean_text": True,
                          "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
           "pre_tokenizer": {"type": "BertPreTokenizer"},
           "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", vocab["[SEP]"]],
                              "cls": ["[CLS]", vocab["[CLS]"]]},
           "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                     "max_input_chars_per_word": 100, "vocab": vocab}}
    with open(os.path.join(dirname, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    if pooling_file:
        os.makedirs(os.path.join(dirname, "1_Pooling"), exist_ok=True)
        with open(os.path.join(dirname, "1_Pooling", "config.json"), "w") as f:
            json.dump({"word_embedding_dimension": cfg["hidden_size"],
                       "pooling_mode_cls_token": pooling_file == "cls",
                       "pooling_mode_mean_tokens": pooling_file == "mean"}, f)


def run_engine(binary, model_dir, texts, extra):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
        path = f.name
    try:
        out = subprocess.run([binary, "--model", model_dir, "--texts", path] + extra,
                             capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        raise SystemExit(f"bert_embed failed ({out.returncode}): {out.stderr}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    args = ap.parse_args()
    binary = os.path.join(args.bin_dir, "ragserve-bert-embed")
    vocab = make_vocab()
    max_len = 40
    cfg = {"vocab_size": max(vocab.values()) + 4, "hidden_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 96, "max_position_embeddings": 64,
           "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    failures = 0
    variants = [  # (name, bf16, prefix, 1_Pooling file, engine flags, pooling the reference uses)
        ("f32-mean", False, "", None, ["--batch-tokens", "50"], "mean"),
        ("bf16-cls-prefixed", True, "bert.", "cls", [], "cls"),
        ("f32-forced-cls", False, "", "mean", ["--pooling", "cls"], "cls"),
    ]
    rng = np.random.default_rng(22)
    ref_ids = [encode(t, vocab, max_len) for t in TEXTS]
    assert any(vocab["[UNK]"] in ids for ids in ref_ids), "the test set should produce [UNK]"
    assert any(len(ids) == max_len for ids in ref_ids), "the test set should hit truncation"
    with tempfile.TemporaryDirectory() as tmp:
        for name, bf16, prefix, pool_file, flags, pooling in variants:
            w = random_bert(rng, cfg, bf16)
            d = os.path.join(tmp, name)
            write_model(d, cfg, w, vocab, bf16, prefix, pool_file, max_len)
            got = run_engine(binary, d, TEXTS, flags)
            for i, t in enumerate(TEXTS):
                if got["ids"][i] != ref_ids[i]:
                    failures += 1
                    print(f"FAIL {name}: ids of {t!r}\n  engine {got['ids'][i]}\n  python "
                          f"{ref_ids[i]}\n  words {words_of(t)}")
            worst = 0.0
            for i in range(len(TEXTS)):
                ref = bert_forward(w, cfg, ref_ids[i], pooling)
                diff = float(np.max(np.abs(np.array(got["embeddings"][i]) - ref)))
                worst = max(worst, diff)
                if diff > TOL:
                    failures += 1
                    print(f"FAIL {name}: embedding of {TEXTS[i]!r} differs by {diff:.3g}")
            print(f"{name}: {len(TEXTS)} texts, max |engine - numpy| = {worst:.2e}")
    if failures:
        print(f"bert_ref_test: {failures} failure(s)")
        return 1
    print("bert_ref_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
