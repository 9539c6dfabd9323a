#!/usr/bin/python3
"""GGUF loading against an independent numpy writer (no ragserve code on this side).

The writer below implements the published GGUF v3 layout (header, typed metadata incl. arrays,
tensor infos, alignment) and the Q8_0 / Q4_0 / Q4_K / Q6_K block formats (its own simple
quantizers; a numpy reference dequantizer evaluates the format's formulas in float32, one rounding
per operation). It converts make-tiny-model checkpoints the way llama.cpp's converter does
(tensor names, ne order, q/k rows permuted into the rotary order for llama) and checks:
  * tensors: every weight the engine loads from the GGUF (ragserve-gguf-export) equals, bit for
    bit, the HF tensor (F32 / F16 files: the un-permutation is exact) or numpy's dequantization of
    the same blocks put back in HF order (quantized files);
  * logits: ragserve-generate on the .gguf gives the same step logits (max |diff| <= 1e-5) as on
    its safetensors twin (the original checkpoint for F32/F16, numpy's dequantized weights as f32
    for the quantized files) and the same greedy tokens;
  * tokenizer: ids from the GGUF-embedded vocabulary equal those of the HF tokenizer.json twin on
    a text matrix, for a byte-level BPE ("gpt2", from make-tiny-model) and a SentencePiece-style
    one ("llama": tokens + scores, from tests/fuzz/corpus/tokenizer_fuzz/sentencepiece_llama2);
  * services: ragserve-decoder started with --model file.gguf answers a Generate (ragctl, real
    gRPC) exactly as one started on the HF twin directory; ragserve-ctxcache starts on the file;
  * errors: an unsupported architecture and an unsupported tensor type are refused, naming them;
  * quantized kept quantized (the default; the integer kernels of kernels/cpu/quant.h): step
    logits against the float64 numpy forward (tests/reference/forward_ref.py) over numpy's
    dequantization of the same blocks, within NATIVE_TOL per format; dequantized at load
    (--weights-dtype f32) they equal the f32 twin (1e-5);
  * --weights-dtype q8_0 / q4_0 on the shipped reader (data/models/reader, an HF checkpoint
    quantized at load): greedy agreement with its f32 run reported (Q8_0 asserted >= 75%).
Usage: gguf_ref_test.py --bin-dir BUILD/bin --source-dir REPO [--keep]
       gguf_ref_test.py --bin-dir - --source-dir - --write-fuzz-seeds tests/fuzz/corpus/gguf_fuzz
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from forward_ref import forward  # noqa: E402  (the independent float64 Llama forward pass)

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q",
       I64: "q", F64: "d"}
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q8_0": (8, 32, 34),
        "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210)}
TOL = 1e-5
# Kept-quantized files (int8 activations, integer dot products) against the numpy f64 forward over
# the dequantized weights: max |logit diff| / max |logit| bounds per weight format. The activation
# rounding (d_a / 2 per value, d_a = max|x| / 127 per block of 32 for Q8_0/Q4_0 and of 256 for the
# k-quants) is the only error source; measured on the test's 2-layer model (see the test output).
NATIVE_TOL = {"Q8_0": 0.02, "Q4_0": 0.02, "Q4_K": 0.03, "Q6_K": 0.03}
QUANT_ERR = {"Q8_0": 0.01, "Q6_K": 0.05, "Q4_0": 0.15, "Q4_K": 0.15}  # relative L2 error bounds
STEPS = 12


# ---------------------------------------------------------------- writer (the GGUF v3 spec)
def pack_value(vtype, v):
    if vtype == STRING:
        b = v.encode("utf-8") if isinstance(v, str) else v
        return struct.pack("<Q", len(b)) + b
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(pack_value(etype, x) for x in items)
    return struct.pack("<" + FMT[vtype], v)


def write_gguf(path, kv, tensors, alignment=32):
    """kv: [(key, type, value)]; tensors: [(name, type_name, ne, bytes)]."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, vtype, value in kv:
        out += pack_value(STRING, key) + struct.pack("<I", vtype) + pack_value(vtype, value)
    offset = 0
    offsets = []
    for name, tname, ne, data in tensors:
        offsets.append(offset)
        out += pack_value(STRING, name) + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", GGML[tname][0], offset)
        offset += (len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    for (name, tname, ne, data), off in zip(tensors, offsets):
        out += data + b"\0" * (-len(data) % alignment)
    with open(path, "wb") as f:
        f.write(out)


# ---------------------------------------------------------------- block formats
def f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def quant_q8_0(x):
    b = x.reshape(-1, 32)
    d = f16(np.abs(b).max(axis=1) / 127.0)
    df = d.astype(np.float32)
    q = np.clip(np.rint(b / np.where(df == 0, 1, df)[:, None]), -127, 127).astype(np.int8)
    blk = np.zeros(len(b), dtype=[("d", "<f2"), ("q", "i1", 32)])
    blk["d"], blk["q"] = d, q
    return blk.tobytes()


def dequant_q8_0(raw):
    blk = np.frombuffer(raw, dtype=[("d", "<f2"), ("q", "i1", 32)])
    return (blk["q"].astype(np.float32) * blk["d"].astype(np.float32)[:, None]).reshape(-1)


def quant_q4_0(x):
    b = x.reshape(-1, 32)
    mx = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
    d = f16(mx / -8.0)
    df = d.astype(np.float32)
    q = np.clip(np.rint(b / np.where(df == 0, 1, df)[:, None]) + 8, 0, 15).astype(np.uint8)
    blk = np.zeros(len(b), dtype=[("d", "<f2"), ("qs", "u1", 16)])
    blk["d"], blk["qs"] = d, q[:, :16] | (q[:, 16:] << 4)
    return blk.tobytes()


def dequant_q4_0(raw):
    blk = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "u1", 16)])
    q = np.concatenate([blk["qs"] & 15, blk["qs"] >> 4], axis=1).astype(np.int32) - 8
    return (q.astype(np.float32) * blk["d"].astype(np.float32)[:, None]).reshape(-1)


Q4K = [("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)]


def quant_q4_k(x):
    b = x.reshape(-1, 8, 32)
    lo, hi = np.minimum(b.min(axis=2), 0), b.max(axis=2)
    sub_scale, sub_min = (hi - lo) / 15.0, -lo
    d = f16(sub_scale.max(axis=1) / 63.0)
    dmin = f16(sub_min.max(axis=1) / 63.0)
    safe = lambda v: np.where(v == 0, 1, v)
    sc = np.clip(np.rint(sub_scale / safe(d.astype(np.float32))[:, None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(sub_min / safe(dmin.astype(np.float32))[:, None]), 0, 63).astype(np.uint8)
    step = d.astype(np.float32)[:, None] * sc
    off = dmin.astype(np.float32)[:, None] * mn
    q = np.clip(np.rint((b + off[:, :, None]) / safe(step)[:, :, None]), 0, 15).astype(np.uint8)
    s = np.zeros((len(b), 12), dtype=np.uint8)
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(len(b), 128)
    blk = np.zeros(len(b), dtype=Q4K)
    blk["d"], blk["dmin"], blk["scales"], blk["qs"] = d, dmin, s, qs
    return blk.tobytes()


def scale_min_k4(s):
    """(sc, m) [blocks, 8] from the 12 packed bytes, as the format defines get_scale_min_k4."""
    sc = np.zeros((len(s), 8), dtype=np.uint8)
    m = np.zeros((len(s), 8), dtype=np.uint8)
    sc[:, :4], m[:, :4] = s[:, 0:4] & 63, s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def dequant_q4_k(raw):
    blk = np.frombuffer(raw, dtype=Q4K)
    sc, m = scale_min_k4(blk["scales"])
    d1 = blk["d"].astype(np.float32)[:, None] * sc.astype(np.float32)     # [n, 8]
    m1 = blk["dmin"].astype(np.float32)[:, None] * m.astype(np.float32)
    qs = blk["qs"].reshape(-1, 4, 32)
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)
    return (d1[:, :, None] * q - m1[:, :, None]).astype(np.float32).reshape(-1)


Q6K = [("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")]


def quant_q6_k(x):
    b = x.reshape(-1, 16, 16)
    sub = np.abs(b).max(axis=2) / 31.0
    d = f16(sub.max(axis=1) / 127.0)
    safe = lambda v: np.where(v == 0, 1, v)
    sc = np.clip(np.rint(sub / safe(d.astype(np.float32))[:, None]), 1, 127).astype(np.int8)
    step = d.astype(np.float32)[:, None] * sc.astype(np.float32)
    L = (np.clip(np.rint(b / safe(step)[:, :, None]), -32, 31) + 32).astype(np.uint8)
    L = L.reshape(-1, 2, 4, 32)  # [blocks, half, quarter, l]: value = half*128 + quarter*32 + l
    ql = np.concatenate([(L[:, :, 0] & 15) | ((L[:, :, 2] & 15) << 4),
                         (L[:, :, 1] & 15) | ((L[:, :, 3] & 15) << 4)], axis=2)
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | \
        ((L[:, :, 3] >> 4) << 6)
    blk = np.zeros(len(b), dtype=Q6K)
    blk["ql"], blk["qh"] = ql.reshape(-1, 128), qh.reshape(-1, 64)
    blk["scales"], blk["d"] = sc, d
    return blk.tobytes()


def dequant_q6_k(raw):
    blk = np.frombuffer(raw, dtype=Q6K)
    ql = blk["ql"].reshape(-1, 2, 64)
    qh = blk["qh"].reshape(-1, 2, 32)
    q = np.stack([(ql[:, :, :32] & 15) | (((qh >> 0) & 3) << 4),
                  (ql[:, :, 32:] & 15) | (((qh >> 2) & 3) << 4),
                  (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4),
                  (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)], axis=2)  # [n, half, 4, 32]
    q = q.reshape(-1, 16, 16).astype(np.int32) - 32
    scale = blk["d"].astype(np.float32)[:, None] * blk["scales"].astype(np.float32)  # [n, 16]
    return (scale[:, :, None] * q.astype(np.float32)).astype(np.float32).reshape(-1)


QUANT = {"Q8_0": (quant_q8_0, dequant_q8_0), "Q4_0": (quant_q4_0, dequant_q4_0),
         "Q4_K": (quant_q4_k, dequant_q4_k), "Q6_K": (quant_q6_k, dequant_q6_k)}


# ---------------------------------------------------------------- safetensors
def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[e["dtype"]]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + end], dtype=dt).reshape(e["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = {"float32": "F32", "float16": "F16"}[str(a.dtype)]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---------------------------------------------------------------- HF -> GGUF (llama.cpp naming)
def rope_permute(w, heads):
    """llama.cpp's converter: within a head, row i and i + hd/2 become rows 2i and 2i+1."""
    shape = w.shape
    return w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def rope_unpermute(w, heads):
    shape = w.shape
    return w.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight",
              "post_attention_layernorm.weight": "ffn_norm.weight",
              "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight",
              "self_attn.o_proj.weight": "attn_output.weight",
              "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.bias": "attn_output.bias",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight"}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    return "blk.%s.%s" % (parts[2], GGUF_NAMES[".".join(parts[3:])])


def tokenizer_kv(tok_json):
    """tokenizer.ggml.* for a byte-level BPE tokenizer.json (as llama.cpp's converter writes)."""
    t = json.load(open(tok_json))
    vocab = dict(t["model"]["vocab"])
    specials = {a["content"]: a["id"] for a in t["added_tokens"]}
    vocab.update(specials)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    types = [3 if tok in specials else 1 for tok, _ in by_id]
    merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
    return [("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, "llama-bpe"),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, [tok for tok, _ in by_id])),
            ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
            ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
            ("tokenizer.ggml.bos_token_id", U32, 0), ("tokenizer.ggml.eos_token_id", U32, 1),
            ("tokenizer.ggml.add_bos_token", BOOL, True)]


def convert(hf_dir, out, wtype, arch_override=None, extra=(), alignment=64):
    """Writes hf_dir as a GGUF with matrices in `wtype` (tensor data aligned to `alignment`,
    declared in general.alignment); returns the expected HF-order tensors (what the engine must
    load) as float32 / float16 arrays."""
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    arch = arch_override or cfg["model_type"]
    hf = {k: np.array(v) for k, v in read_safetensors(os.path.join(hf_dir, "model.safetensors")).items()}
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    permute = cfg["model_type"] != "qwen2"
    a = arch + "."
    kv = [("general.architecture", STRING, arch), ("general.alignment", U32, alignment),
          (a + "block_count", U32, cfg["num_hidden_layers"]),
          (a + "context_length", U32, cfg["max_position_embeddings"]),
          (a + "embedding_length", U32, cfg["hidden_size"]),
          (a + "feed_forward_length", U32, cfg["intermediate_size"]),
          (a + "attention.head_count", U32, heads), (a + "attention.head_count_kv", U32, kv_heads),
          (a + "rope.freq_base", F32, cfg["rope_theta"]),
          (a + "attention.layer_norm_rms_epsilon", F32, cfg["rms_norm_eps"])]
    if os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
        kv += tokenizer_kv(os.path.join(hf_dir, "tokenizer.json"))
    tensors, expected = [], {}
    for name in sorted(hf):
        w = hf[name].astype(np.float32)
        g = gguf_name(name)
        heads_of = heads if "q_proj" in name else kv_heads
        perm = permute and ("q_proj" in name or "k_proj" in name)
        stored = rope_permute(w, heads_of) if perm else w
        ttype = wtype if w.ndim == 2 else "F32"  # 1-D tensors stay F32, as llama.cpp writes them
        if ttype == "F32":
            data, back = stored.astype("<f4").tobytes(), stored
        elif ttype == "F16":
            data = stored.astype("<f2").tobytes()
            back = stored.astype(np.float16)
        else:
            qf, df = QUANT[ttype]
            data = qf(stored.reshape(-1))
            back = df(data).reshape(stored.shape)
            # The blocks carry the weights (a quantizer writing zeros would pass the rest).
            err = np.linalg.norm(back - stored) / np.linalg.norm(stored)
            assert err < QUANT_ERR[ttype], "%s %s: relative error %.3f" % (name, ttype, err)
        expected[name] = rope_unpermute(back, heads_of) if perm else back
        tensors.append((g, ttype, list(reversed(w.shape)), data))
    write_gguf(out, kv, tensors + list(extra), alignment=alignment)
    return expected


# ---------------------------------------------------------------- checks
def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr))
    return r.stdout


def generate(bin_dir, model, prompt_ids, extra=()):
    out = run([os.path.join(bin_dir, "ragserve-generate"), "--model", model, "--prompt-ids",
               ",".join(map(str, prompt_ids)), "--max-tokens", str(STEPS), "--ignore-eos",
               "--step-logits"] + list(extra))
    res = json.loads(out)
    return np.array(res["step_logits"], dtype=np.float64), res["tokens"], res


def check_tensors(bin_dir, gguf, expected, tmp, label):
    st = os.path.join(tmp, "export.safetensors")
    run([os.path.join(bin_dir, "ragserve-gguf-export"), gguf, st])
    got = read_safetensors(st)
    assert set(got) == set(expected), "%s: tensors %s vs %s" % (label, sorted(got), sorted(expected))
    for name, want in expected.items():
        g = got[name]
        w = np.ascontiguousarray(want)
        if g.dtype != w.dtype.newbyteorder("<") and g.dtype != w.dtype:
            raise AssertionError("%s: %s loaded as %s, expected %s" % (label, name, g.dtype, w.dtype))
        if g.tobytes() != w.tobytes():
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64)).max()
            raise AssertionError("%s: %s differs from the numpy reference (max |diff| %g)"
                                 % (label, name, diff))
    return len(expected)


def to_bf16(x):
    """float32 -> bfloat16 bits, round to nearest even (no NaNs here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def check_bf16(bin_dir, tmp, gguf, expected, label):
    """WeightsLoadOptions::dequantize_to = bf16: quantized tensors decode to f32, then round to
    bf16 (norms and biases are F32 tensors and stay f32)."""
    st = os.path.join(tmp, "export-bf16.safetensors")
    run([os.path.join(bin_dir, "ragserve-gguf-export"), gguf, st, "bf16"])
    got = read_safetensors(st)
    for name, want in expected.items():
        w = to_bf16(want) if want.ndim == 2 else np.ascontiguousarray(want, dtype="<f4")
        assert got[name].tobytes() == w.tobytes(), "%s bf16: %s differs" % (label, name)
    print("ok  %-14s dequantized to bf16: %d tensors equal numpy's f32 -> bf16 rounding"
          % (label, len(expected)))


def check_model(bin_dir, tmp, hf_dir, wtype, prompt, label):
    gguf = os.path.join(tmp, "%s.gguf" % label)
    expected = convert(hf_dir, gguf, wtype)
    n = check_tensors(bin_dir, gguf, expected, tmp, label)
    if wtype == "Q4_K":
        check_bf16(bin_dir, tmp, gguf, expected, label)
    if wtype in ("F32", "F16"):
        twin = hf_dir
    else:  # the numpy-dequantized weights as an f32 safetensors checkpoint
        twin = os.path.join(tmp, "%s-twin" % label)
        os.makedirs(twin, exist_ok=True)
        shutil.copy(os.path.join(hf_dir, "config.json"), twin)
        write_safetensors(os.path.join(twin, "model.safetensors"), expected)
    # Quantized files dequantized at load (--weights-dtype f32) are the twin exactly; F32/F16
    # files load as stored.
    exact = ["--weights-dtype", "f32"] if wtype in QUANT else []
    lg, tg, res = generate(bin_dir, gguf, prompt, exact)
    lt, tt, _ = generate(bin_dir, twin, prompt)
    diff = float(np.abs(lg - lt).max())
    assert diff <= TOL, "%s: logits differ from the twin by %g (tolerance %g)" % (label, diff, TOL)
    assert tg == tt, "%s: greedy tokens %s vs twin %s" % (label, tg, tt)
    print("ok  %-14s %2d tensors bit-exact, %d steps: max |logit diff| %.2e, greedy identical%s"
          % (label, n, STEPS, diff, " (dequantized at load)" if exact else ""))
    if wtype in QUANT:
        check_native(bin_dir, hf_dir, gguf, expected, wtype, prompt, label)
    return res


def check_native(bin_dir, hf_dir, gguf, expected, wtype, prompt, label):
    """The file kept quantized (the default: integer kernels on int8-quantized activations)
    against the float64 numpy forward pass (tests/reference/forward_ref.py) over the numpy-
    dequantized weights of the same blocks, teacher-forced on the engine's tokens."""
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    lg, toks, _ = generate(bin_dir, gguf, prompt)
    W = {k: v.astype(np.float64) for k, v in expected.items()}
    ref = forward(cfg, W, prompt + toks[:-1])[len(prompt) - 1:]
    err = float(np.abs(lg - ref).max())
    scale = float(np.abs(ref).max())
    same = sum(int(a == b) for a, b in zip(np.argmax(ref, axis=1), toks))
    tol = NATIVE_TOL[wtype] * scale
    assert err <= tol, "%s native: max |logit - numpy| %.3g > %.3g (%.3g of max |logit| %.3g)" % (
        label, err, tol, NATIVE_TOL[wtype], scale)
    print("ok  %-14s kept %s: max |logit - numpy f64| %.2e (%.2f%% of max |logit| %.2f, bound "
          "%.1f%%), teacher-forced greedy agreement %d/%d" % (
              label, wtype, err, 100 * err / scale, scale, 100 * NATIVE_TOL[wtype], same, STEPS))


def check_reader_quantized(bin_dir, source_dir):
    """Greedy agreement of the shipped reader quantized at load with its f32 run (text prompts
    from the corpus, 32 tokens each): tokens equal at the same step, and the steps before the
    first divergence."""
    reader = os.path.join(source_dir, "data/models/reader")
    corpus = os.path.join(source_dir, "data/corpus/passages.jsonl")
    if not os.path.exists(os.path.join(reader, "model.safetensors")) or not os.path.exists(corpus):
        print("skip reader quantized at load: no data/models/reader or corpus")
        return
    texts = [json.loads(l)["text"] for l in open(corpus)][:6]
    for wtype in ("q8_0", "q4_0", "q4_k", "q6_k"):
        same = total = prefix = 0
        for t in texts:
            cmd = [os.path.join(bin_dir, "ragserve-generate"), "--model", reader, "--prompt",
                   t[:400], "--max-tokens", "32", "--ignore-eos"]
            a = json.loads(run(cmd))["tokens"]
            b = json.loads(run(cmd + ["--weights-dtype", wtype]))["tokens"]
            same += sum(int(x == y) for x, y in zip(a, b))
            total += len(a)
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            prefix += k
        print("ok  reader %-5s  quantized at load: greedy tokens equal to f32 at %d/%d steps "
              "(%.0f%%), %d/%d before the first divergence" % (
                  wtype, same, total, 100.0 * same / total, prefix, total))
        if wtype == "q8_0":
            assert same >= 0.75 * total, "reader q8_0: only %d/%d greedy tokens agree" % (same, total)


def encode(bin_dir, tok, texts, allow_special):
    cmd = [os.path.join(bin_dir, "ragserve-tokenize"), "encode", "--tokenizer", tok,
           "--json-lines"] + (["--allow-special"] if allow_special else [])
    out = run(cmd, input="".join(json.dumps(t) + "\n" for t in texts))
    return [json.loads(l) for l in out.splitlines()]


TEXTS = ["", " ", "Hello world", "The lighthouse keeper's log: 1873, 42 ships.",
         "  leading and trailing  ", "don't can't it's we'll", "tabs\tand\nnewlines\n\n",
         "\u4f60\u597d\u4e16\u754c", "emoji \U0001F600 and caf\u00e9", "1234567890 3.14159",
         "<|begin_of_text|>special<|end_of_text|>", "<s> and </s> look-alikes"]


def check_tokenizer(bin_dir, twin_json, gguf, label, corpus=()):
    texts = TEXTS + list(corpus)
    for allow in (False, True):
        a = encode(bin_dir, twin_json, texts, allow)
        b = encode(bin_dir, gguf, texts, allow)
        for t, x, y in zip(texts, a, b):
            assert x == y, "%s: %r -> %s (tokenizer.json) vs %s (gguf)" % (label, t, x, y)
    print("ok  %-14s %d texts x {plain, allow-special}: identical ids" % (label, len(texts)))


def spm_gguf(fixture, out):
    """A SentencePiece-style GGUF vocabulary from an HF Llama-2 tokenizer.json: scores follow the
    merge order (earlier merge = higher score), as a SentencePiece BPE model's do."""
    t = json.load(open(fixture))
    vocab = t["model"]["vocab"]
    rank = {}
    for r, m in enumerate(t["model"]["merges"]):
        a, b = m.split(" ") if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    special = {a["content"] for a in t["added_tokens"] if a.get("special")}
    types, scores = [], []
    for tok, i in by_id:
        if tok == t["model"].get("unk_token"):
            types.append(2)
        elif tok in special:
            types.append(3)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            types.append(6)
        else:
            types.append(1)
        scores.append(-float(rank.get(tok, -1)) if tok in rank else 0.0)
    kv = [("general.architecture", STRING, "llama"), ("tokenizer.ggml.model", STRING, "llama"),
          ("tokenizer.ggml.tokens", ARRAY, (STRING, [tok for tok, _ in by_id])),
          ("tokenizer.ggml.scores", ARRAY, (F32, scores)),
          ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
          ("tokenizer.ggml.bos_token_id", U32, vocab["<s>"]),
          ("tokenizer.ggml.eos_token_id", U32, vocab["</s>"])]
    write_gguf(out, kv, [])


def check_rope_factors(bin_dir, tmp, hf_dir):
    """rope_freqs.weight (llama.cpp's llama3 scaling): each rotary frequency divided by its factor."""
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    factors = np.linspace(1.0, 8.0, hd // 2).astype(np.float32)
    path = os.path.join(tmp, "rope-freqs.gguf")
    convert(hf_dir, path, "F32",
            extra=[("rope_freqs.weight", "F32", [hd // 2], factors.astype("<f4").tobytes())])
    got = json.loads(run([os.path.join(bin_dir, "ragserve-gguf-export"), path,
                          os.path.join(tmp, "x.safetensors")]))
    base = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    want = base / factors.astype(np.float64)
    rel = np.abs(np.array(got["rope_inv_freq"]) - want) / want
    assert rel.max() < 1e-6, "rope_freqs: relative error %g" % rel.max()
    print("ok  rope_freqs     %d rotary frequencies divided by the file's factors" % (hd // 2))


def check_errors(bin_dir, tmp, hf_dir):
    bad_arch = os.path.join(tmp, "falcon.gguf")
    convert(hf_dir, bad_arch, "F32", arch_override="falcon")
    r = subprocess.run([os.path.join(bin_dir, "ragserve-gguf-export"), bad_arch,
                        os.path.join(tmp, "x.safetensors")], capture_output=True, text=True)
    assert r.returncode != 0 and "falcon" in r.stderr and "architecture" in r.stderr, r.stderr
    # A Q5_K matrix (valid blocks of zeros): refused naming the type and the tensor.
    q5 = os.path.join(tmp, "q5k.gguf")
    convert(hf_dir, q5, "F32")
    data = bytearray(open(q5, "rb").read())
    name = b"blk.0.ffn_up.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, GGML["Q5_K"][0])
    open(q5, "wb").write(bytes(data))
    r = subprocess.run([os.path.join(bin_dir, "ragserve-gguf-export"), q5,
                        os.path.join(tmp, "x.safetensors")], capture_output=True, text=True)
    assert r.returncode != 0 and "Q5_K" in r.stderr and "blk.0.ffn_up.weight" in r.stderr, r.stderr
    print("ok  errors         unsupported architecture and tensor type named")


def start_service(bin_dir, binary, model, tmp, name, extra=()):
    """Starts a service binary on free ports; returns (process, grpc port) once it is ready."""
    ready = os.path.join(tmp, name + ".ready")
    p = subprocess.Popen([os.path.join(bin_dir, binary), "--model", model, "--host", "127.0.0.1",
                          "--port", "0", "--metrics-port", "0", "--ready-file", ready] + list(extra),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if os.path.exists(ready):
            return p, json.load(open(ready))["grpc_port"]
        if p.poll() is not None:
            raise RuntimeError("%s --model %s exited: %s" % (binary, model, p.stderr.read()))
        time.sleep(0.05)
    p.kill()
    raise RuntimeError("%s --model %s: not ready after 30 s" % (binary, model))


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def check_services(bin_dir, tmp, gguf, twin_dir, prompt):
    """The decode worker serves the .gguf as it serves its HF twin directory (real gRPC, ragctl);
    the context-cache service starts on it too (both load through ctxcache::LoadModelDir)."""
    outs = []
    for name, model in (("gguf", gguf), ("twin", twin_dir)):
        p, port = start_service(bin_dir, "ragserve-decoder", model, tmp, "decoder-" + name)
        try:
            out = run([os.path.join(bin_dir, "ragctl"), "--addr", "127.0.0.1:%d" % port,
                       "generate", "--raw", prompt, "--max-tokens", "16"])
        finally:
            stop(p)
        text, stats = out.rsplit("\nstats:", 1)
        outs.append((text, stats.split(", TTFT")[0]))
    assert outs[0] == outs[1], "decoder on .gguf %r vs on the HF twin %r" % (outs[0], outs[1])
    p, _ = start_service(bin_dir, "ragserve-ctxcache", gguf, tmp, "ctxcache",
                         ["--data-dir", os.path.join(tmp, "ctxcache-data")])
    stop(p)
    print("ok  services       decoder on the .gguf = on its HF twin (%s); ctxcache loads it"
          % outs[0][1].strip())


def write_fuzz_seeds(out):
    """The seeds of tests/fuzz/corpus/gguf_fuzz (small files covering every value kind, the
    decoded tensor types, both tokenizer models and a truncation)."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(3)
    a = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1),
         ("llama.embedding_length", U32, 256), ("llama.feed_forward_length", U32, 256),
         ("llama.attention.head_count", U32, 4), ("llama.attention.head_count_kv", U32, 2),
         ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5), ("llama.vocab_size", U32, 5)]
    spm = [("tokenizer.ggml.model", STRING, "llama"),
           ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<unk>", "<s>", "\u2581", "a", "\u2581a"])),
           ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, -1.0, -1.0, -2.0])),
           ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 1, 1, 1])),
           ("tokenizer.ggml.bos_token_id", U32, 1)]
    bpe = [("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, "qwen2"),
           ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<|end|>", "H", "i", "Hi", "\u0120"])),
           ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 1, 1, 1, 1])),
           ("tokenizer.ggml.merges", ARRAY, (STRING, ["H i"])),
           ("tokenizer.ggml.eos_token_id", U32, 0)]
    x = rng.standard_normal(256).astype(np.float32)
    tensors = [("token_embd.weight", "F32", [4, 2], x[:8].astype("<f4").tobytes()),
               ("blk.0.attn_q.weight", "Q8_0", [32, 1], quant_q8_0(x[:32])),
               ("blk.0.ffn_up.weight", "Q4_K", [256, 1], quant_q4_k(x)),
               ("blk.0.ffn_down.weight", "Q6_K", [256, 1], quant_q6_k(x)),
               ("blk.0.attn_k.weight", "Q4_0", [32, 1], quant_q4_0(x[:32]))]
    write_gguf(os.path.join(out, "tiny_model"), a + spm, tensors)
    write_gguf(os.path.join(out, "gpt2_vocab"), bpe, [])
    write_gguf(os.path.join(out, "aligned_64"), [("general.alignment", U32, 64)],
               [("a", "F16", [3], np.ones(3, "<f2").tobytes()), ("b", "F32", [2], b"\0" * 8)],
               alignment=64)
    kinds = [("u8", U8, 1), ("i8", I8, -1), ("u16", U16, 2), ("i16", I16, -2), ("u32", U32, 3),
             ("i32", I32, -3), ("f32", F32, 0.5), ("bool", BOOL, True), ("str", STRING, "s"),
             ("u64", U64, 2**63 + 1), ("i64", I64, -4), ("f64", F64, 0.25),
             ("arr_u8", ARRAY, (U8, [1, 2])), ("arr_bool", ARRAY, (BOOL, [True, False])),
             ("arr_f64", ARRAY, (F64, [1.5])), ("arr_str", ARRAY, (STRING, ["x", ""]))]
    write_gguf(os.path.join(out, "all_value_types"), kinds, [])
    data = open(os.path.join(out, "tiny_model"), "rb").read()
    open(os.path.join(out, "truncated"), "wb").write(data[:len(data) - 100])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--write-fuzz-seeds", metavar="DIR", help="only write the fuzz seeds to DIR")
    args = ap.parse_args()
    if args.write_fuzz_seeds:
        write_fuzz_seeds(args.write_fuzz_seeds)
        return 0
    tmp = tempfile.mkdtemp(prefix="gguf_ref_")
    try:
        corpus = os.path.join(args.source_dir, "data/corpus/passages.jsonl")
        base = [os.path.join(args.bin_dir, "make-tiny-model"), "--layers", "2", "--hidden", "256",
                "--heads", "4", "--kv-heads", "2", "--intermediate", "512", "--vocab", "512",
                "--seed", "11"]
        llama = os.path.join(tmp, "llama")
        tok_args = ["--corpus", corpus] if os.path.exists(corpus) else ["--no-tokenizer"]
        run(base + ["--out", llama] + tok_args)
        qwen = os.path.join(tmp, "qwen2")
        run(base + ["--out", qwen, "--model-type", "qwen2", "--no-tokenizer",
                    "--tie-word-embeddings"])
        f16 = os.path.join(tmp, "llama-f16")
        run(base + ["--out", f16, "--no-tokenizer", "--dtype", "f16", "--attention-bias"])
        prompt = [5, 17, 42, 99, 300, 7, 256, 11]
        res = check_model(args.bin_dir, tmp, llama, "F32", prompt, "llama-F32")
        check_model(args.bin_dir, tmp, f16, "F16", prompt, "llama-F16-bias")
        check_model(args.bin_dir, tmp, qwen, "F32", prompt, "qwen2-F32-tied")
        for q in ("Q8_0", "Q4_0", "Q4_K", "Q6_K"):
            check_model(args.bin_dir, tmp, llama, q, prompt, "llama-" + q)
        check_model(args.bin_dir, tmp, qwen, "Q4_K", prompt, "qwen2-Q4_K")
        if os.path.exists(os.path.join(llama, "tokenizer.json")):
            texts = [json.loads(l)["text"] for l in open(corpus)][:20]
            # tokenizer.ggml.pre "llama-bpe" means Llama-3's BPE, which takes a pre-token that is
            # itself in the vocabulary whole (HF: "ignore_merges": true); the twin says the same.
            twin = json.load(open(os.path.join(llama, "tokenizer.json")))
            twin["model"]["ignore_merges"] = True
            twin_path = os.path.join(tmp, "twin-tokenizer.json")
            json.dump(twin, open(twin_path, "w"))
            gguf = os.path.join(tmp, "llama-F32.gguf")
            check_tokenizer(args.bin_dir, twin_path, gguf, "gpt2-bpe", texts)
            # The .gguf alone is a model: a text prompt goes through its embedded vocabulary.
            g = json.loads(run([os.path.join(args.bin_dir, "ragserve-generate"), "--model", gguf,
                                "--prompt", TEXTS[3], "--add-bos", "--max-tokens", "2"]))
            want = [0] + encode(args.bin_dir, twin_path, [TEXTS[3]], False)[0]
            assert g["prompt_ids"] == want, (g["prompt_ids"], want)
            print("ok  text prompt    .gguf alone: BOS + the twin's ids, %d tokens generated"
                  % len(g["tokens"]))
            twin_dir = os.path.join(tmp, "llama-twin-dir")
            shutil.copytree(llama, twin_dir)
            shutil.copy(twin_path, os.path.join(twin_dir, "tokenizer.json"))
            check_services(args.bin_dir, tmp, gguf, twin_dir, TEXTS[3])
        fixture = os.path.join(args.source_dir,
                               "tests/fuzz/corpus/tokenizer_fuzz/sentencepiece_llama2")
        spm = os.path.join(tmp, "spm.gguf")
        spm_gguf(fixture, spm)
        check_tokenizer(args.bin_dir, fixture, spm, "llama-spm")
        check_rope_factors(args.bin_dir, tmp, llama)
        check_errors(args.bin_dir, tmp, llama)
        check_reader_quantized(args.bin_dir, args.source_dir)
        print("PASS")
        return 0
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
