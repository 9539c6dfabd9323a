#!/usr/bin/python3
"""ragserve against llama.cpp itself, on GGUF files llama.cpp wrote.

llama.cpp is the prebuilt library of the pinned npm package @node-llama-cpp/linux-x64
(tests/engine/llamacpp, installed by tools/setup-deps), driven through ragserve-llamacpp-ref
(tests/engine/llamacpp_ref.cc, dlopen; nothing of llama.cpp is linked into ragserve). Steps:
  1. the shipped reader (data/models/reader: llama, 4 layers, hidden 256, ffn 704, GQA, tied
     embeddings, byte-level BPE vocabulary) is written as an F32 GGUF by the independent numpy
     writer of gguf_ref_test.py, and llama.cpp's own quantizer (llama_model_quantize) turns it
     into Q8_0, Q4_0 and Q4_K_M files; the tensor types of each file are read back and checked
     (they also confirm the quantize-params layout the tool assumes);
  2. ragserve's own quantizer (--weights-dtype q8_0 / q4_0 at load) writes the same blocks as
     llama.cpp's for every matrix both store in that format (bit-identical values);
  3. tokenizer: for every file, ragserve's ids (ragserve-tokenize --tokenizer FILE.gguf
     --allow-special) equal llama.cpp's (llama_tokenize, parse_special) on corpus passages,
     unicode text and text with the special tokens written in it;
  4. logits: ragserve-generate on each file (kept quantized: its integer kernels) against
     llama.cpp's forward pass on the same file, teacher-forced on ragserve's greedy tokens: max
     |logit diff| / max |logit| within LOGIT_TOL per format; teacher-forced argmax agreement
     asserted >= ARGMAX_MIN; free-running greedy agreement of the two engines reported, and that
     of ragserve on each quantized file with ragserve on the f32 file.
Exit 77 (ctest: skipped) when the npm package is not installed.
Usage: llamacpp_ref_test.py --bin-dir BUILD/bin --source-dir REPO [--keep]
"""
import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_ref_test import convert, read_safetensors  # noqa: E402  (the numpy GGUF writer)

LIB = "tests/engine/llamacpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
# GGML type ids (the published format) and the llama_ftype each file must declare.
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 6: "Q5_0", 8: "Q8_0", 12: "Q4_K", 14: "Q6_K"}
FTYPE = {"f32": 0, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}
# Matrix types each file may hold (llama.cpp's choices for this model; see docs/GGUF.md).
ALLOWED = {"f32": {"F32"}, "q8_0": {"Q8_0"}, "q4_0": {"Q4_0", "Q6_K"},
           "q4_k_m": {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}}
# max |ragserve - llama.cpp| / max |llama.cpp logit| per file. Both engines run the same blocks;
# the differences are their activation rounding (ragserve: int8 per 32 / 256 values; llama.cpp:
# Q8_0 / Q8_K activations, f16 KV cache, its own summation order), compounded over 4 layers.
LOGIT_TOL = {"f32": 0.002, "q8_0": 0.02, "q4_0": 0.03, "q4_k_m": 0.03}
ARGMAX_MIN = 0.85  # teacher-forced: the same argmax at this share of the steps at least
STEPS = 24
GREEDY_PROMPTS, GREEDY_TOKENS = 6, 32

UNICODE_TEXTS = [
    "Hello world", " leading space", "trailing space ", "two  spaces\tand a tab\nnew line\r\n",
    "naïve café, Ångström, Straße", "日本語のテキスト", "Привет, мир!", "emoji 🙂👍🏽 and ©®",
    "numbers 1234567 3.14159 -42 1e10", "it's we'll they've I'M", "<|begin_of_text|>", "",
    "a<|end_of_text|>b", "<|begin_of_text|>The lighthouse<|end_of_text|>",
    "   ", "\n\n\n", "x" * 300, "mixed ÄÖÜ äöü ß and ı İ",
]


def run(cmd, stdin=None):
    r = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd[:4]), r.returncode, r.stderr))
    return r.stdout


def gguf_types(path):
    """(general.file_type, {tensor name: type name}) from the file's header (the GGUF spec)."""
    with open(path, "rb") as f:
        data = f.read(1 << 22)
    assert data[:4] == b"GGUF", path
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    o = 24
    size = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(o):
        (n,) = struct.unpack_from("<Q", data, o)
        return data[o + 8:o + 8 + n].decode(), o + 8 + n

    def skip(t, o):
        if t == 8:
            return string(o)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, o)
            o += 12
            for _ in range(n):
                o = skip(et, o)
            return o
        return o + size[t]

    file_type = None
    for _ in range(n_kv):
        key, o = string(o)
        (t,) = struct.unpack_from("<I", data, o)
        o += 4
        if key == "general.file_type":
            (file_type,) = struct.unpack_from("<I", data, o)
        o = skip(t, o)
    types = {}
    for _ in range(n_tensors):
        name, o = string(o)
        (nd,) = struct.unpack_from("<I", data, o)
        o += 4 + 8 * nd
        t, _ = struct.unpack_from("<IQ", data, o)
        o += 12
        types[name] = TYPE_NAMES.get(t, "type %d" % t)
    return file_type, types


def check_types(path, kind):
    file_type, types = gguf_types(path)
    mats = {n: t for n, t in types.items() if not n.endswith("norm.weight")}
    assert kind == "f32" or file_type == FTYPE[kind], \
        "%s: general.file_type %s, asked %d" % (path, file_type, FTYPE[kind])
    bad = {n: t for n, t in mats.items() if t not in ALLOWED[kind]}
    assert not bad, "%s: unexpected tensor types %s" % (kind, bad)
    counts = {}
    for t in mats.values():
        counts[t] = counts.get(t, 0) + 1
    return counts, types


def check_tokenizer(bin_dir, lib, gguf, texts, label):
    lines = "".join(json.dumps(t) + "\n" for t in texts)
    ours = [json.loads(l) for l in run([os.path.join(bin_dir, "ragserve-tokenize"), "encode",
                                        "--tokenizer", gguf, "--json-lines", "--allow-special"],
                                       lines).splitlines()]
    ref = [json.loads(l) for l in run([os.path.join(bin_dir, "ragserve-llamacpp-ref"), "--lib",
                                       lib, "tokenize", gguf], lines).splitlines()]
    assert len(ours) == len(ref) == len(texts), (len(ours), len(ref), len(texts))
    n_ids = 0
    for text, got, want in zip(texts, ours, ref):
        assert got == want, "%s: %r -> ragserve %s, llama.cpp %s" % (label, text, got, want)
        n_ids += len(got)
    print("ok  %-7s tokenizer: %d texts, %d ids, equal to llama.cpp's" % (label, len(texts), n_ids))


def check_same_blocks(bin_dir, reader, gguf, kind, tmp):
    """ragserve's own quantizer (--weights-dtype at load, kernels::QuantizeRef) against
    llama.cpp's on the same f32 weights: every matrix both store in `kind` must hold the same
    values (both exported dequantized by ragserve-gguf-export; equal values of the same format
    are equal blocks); a matrix llama.cpp stored in another format (the tied embedding of Q4_0:
    Q6_K) is left out."""
    ours, theirs = os.path.join(tmp, "ours.safetensors"), os.path.join(tmp, "theirs.safetensors")
    run([os.path.join(bin_dir, "ragserve-gguf-export"), reader, ours, kind])
    run([os.path.join(bin_dir, "ragserve-gguf-export"), gguf, theirs])
    a, b = read_safetensors(ours), read_safetensors(theirs)
    _, types = gguf_types(gguf)
    same = 0
    for name in sorted(a):
        if a[name].ndim != 2:
            continue
        g = [n for n in types if n.endswith("token_embd.weight")] if "embed" in name else []
        if g and types[g[0]] != kind.upper():
            continue  # llama.cpp stored the (tied) embedding in another format
        assert a[name].tobytes() == b[name].tobytes(), \
            "%s: ragserve's %s of %s differs from llama.cpp's" % (kind, kind, name)
        same += 1
    print("ok  %-7s ragserve's at-load quantizer = llama.cpp's on %d matrices (bit-identical "
          "values)" % (kind, same))


def generate(bin_dir, gguf, prompt, n):
    out = run([os.path.join(bin_dir, "ragserve-generate"), "--model", gguf, "--prompt-ids",
               ",".join(map(str, prompt)), "--max-tokens", str(n), "--ignore-eos",
               "--step-logits"])
    res = json.loads(out)
    return np.array(res["step_logits"], dtype=np.float64), res["tokens"]


def check_logits(bin_dir, lib, gguf, kind, prompt):
    ours, toks = generate(bin_dir, gguf, prompt, STEPS)
    ids = prompt + toks[:-1]
    ref = np.array(json.loads(run([os.path.join(bin_dir, "ragserve-llamacpp-ref"), "--lib", lib,
                                   "logits", gguf, "--ids", ",".join(map(str, ids)), "--from",
                                   str(len(prompt) - 1)]))["logits"], dtype=np.float64)
    assert ref.shape == ours.shape, (ref.shape, ours.shape)
    err = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    same = int((np.argmax(ref, axis=1) == np.array(toks)).sum())
    rel = err / scale
    print("ok  %-7s logits vs llama.cpp (teacher-forced, %d steps): max |diff| %.3f = %.2f%% of "
          "max |logit| %.1f (bound %.1f%%), same argmax %d/%d"
          % (kind, STEPS, err, 100 * rel, scale, 100 * LOGIT_TOL[kind], same, STEPS))
    assert rel <= LOGIT_TOL[kind], "%s: logits differ from llama.cpp by %.2f%% of max |logit|" % (
        kind, 100 * rel)
    assert same >= ARGMAX_MIN * STEPS, "%s: argmax agrees on %d/%d steps" % (kind, same, STEPS)
    return rel, same


def greedy_runs(bin_dir, lib, gguf, kind, prompts):
    """Free-running greedy continuations of each prompt by ragserve and by llama.cpp; prints how
    often they agree and returns ragserve's."""
    same = total = prefix = 0
    ours = []
    for p in prompts:
        _, a = generate(bin_dir, gguf, p, GREEDY_TOKENS)
        b = json.loads(run([os.path.join(bin_dir, "ragserve-llamacpp-ref"), "--lib", lib,
                            "generate", gguf, "--ids", ",".join(map(str, p)), "--max-tokens",
                            str(GREEDY_TOKENS)]))["tokens"]
        ours.append(a)
        s, _, k = agreement(a, b)
        same, total, prefix = same + s, total + len(a), prefix + k
    print("    %-7s greedy (free-running, %d prompts x %d tokens): ragserve = llama.cpp on %d/%d "
          "tokens (%.0f%%), %d before the first divergence"
          % (kind, len(prompts), GREEDY_TOKENS, same, total, 100.0 * same / total, prefix))
    return ours


def agreement(a, b):
    """(tokens equal at the same step, steps, steps before the first divergence)."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return sum(int(x == y) for x, y in zip(a, b)), len(a), k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    lib = os.path.join(a.source_dir, LIB)
    if platform.machine() != "x86_64" or not os.path.isdir(lib):
        print("SKIP: llama.cpp reference not installed (%s): run tools/setup-deps" % LIB)
        return 77
    reader = os.path.join(a.source_dir, "data/models/reader")
    corpus = os.path.join(a.source_dir, "data/corpus/passages.jsonl")
    tool = os.path.join(a.bin_dir, "ragserve-llamacpp-ref")
    info = json.loads(run([tool, "--lib", lib, "info"]))
    print("llama.cpp %s, %s" % (info["version"], info["system_info"].strip()))
    passages = [json.loads(l)["text"] for l in open(corpus)]
    texts = passages[:24] + UNICODE_TEXTS
    tmp = tempfile.mkdtemp(prefix="llamacpp-ref-")
    try:
        f32 = os.path.join(tmp, "reader-f32.gguf")
        # llama.cpp's writer lays tensor data out at its default 32-byte alignment even when the
        # input declares general.alignment 64 (the output then declares 64 and loads nowhere):
        # the input is written at 32.
        convert(reader, f32, "F32", alignment=32)
        files = {"f32": f32}
        for kind in ("q8_0", "q4_0", "q4_k_m"):
            files[kind] = os.path.join(tmp, "reader-%s.gguf" % kind)
            q = json.loads(run([tool, "--lib", lib, "--threads", "2", "quantize", f32, files[kind],
                                kind]))
            counts, types = check_types(files[kind], kind)
            print("ok  %-7s llama.cpp quantized in %.2f s: matrices %s; ffn_down (704 wide) %s"
                  % (kind, q["seconds"], counts, sorted({types["blk.%d.ffn_down.weight" % i]
                                                         for i in range(4)})))
        for kind in ("q8_0", "q4_0"):
            check_same_blocks(a.bin_dir, reader, files[kind], kind, tmp)
        for kind, path in files.items():
            check_tokenizer(a.bin_dir, lib, path, texts, kind)
        # Prompts: the first 400 characters of the first corpus passages, no BOS (the protocol of
        # gguf_ref_test.py's reader-quantized-at-load agreement, so the numbers compare); ids
        # from the file's vocabulary (ragserve's = llama.cpp's, checked above).
        tok = [os.path.join(a.bin_dir, "ragserve-tokenize"), "encode", "--tokenizer", f32,
               "--json-lines"]
        prompts = [json.loads(l) for l in run(
            tok, "".join(json.dumps(p[:400]) + "\n" for p in passages[:GREEDY_PROMPTS]))
            .splitlines()]
        greedy = {}
        for kind, path in files.items():
            check_logits(a.bin_dir, lib, path, kind, prompts[0])
            greedy[kind] = greedy_runs(a.bin_dir, lib, path, kind, prompts)
        for kind in ("q8_0", "q4_0", "q4_k_m"):
            r = [agreement(x, y) for x, y in zip(greedy[kind], greedy["f32"])]
            same, total, prefix = (sum(v[i] for v in r) for i in range(3))
            print("    %-7s ragserve on llama.cpp's %s file vs the f32 reader: same greedy token at "
                  "%d/%d steps (%.0f%%), %d before the first divergence"
                  % (kind, kind.upper(), same, total, 100.0 * same / total, prefix))
    finally:
        if a.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
