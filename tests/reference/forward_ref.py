#!/usr/bin/python3
"""Independent numpy reference of the Llama / Mistral / Qwen2 forward pass.

Makes small random models with make-tiny-model, runs ragserve-generate (greedy, 64 steps, the
logits of every step), reads config.json and model.safetensors itself (no ragserve code), runs the
same token sequence through a float64 numpy forward and checks:
  * max |logit_engine - logit_numpy| <= 1e-3 over every generated step (f32/f16/bf16 weights are
    widened exactly on both sides, so the tolerance is the same);
  * the greedy tokens are identical for all 64 steps (teacher-forced argmax of the reference
    equals the engine's token at each step, which is equivalent to free-running greedy agreement).
Usage: forward_ref.py --bin-dir BUILD/bin --source-dir REPO [--keep]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

STEPS = 64
TOL = 1e-3


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[base + b:base + end]
        shape = e["shape"]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif e["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            a = u.view(np.float32).astype(np.float64)
        else:
            raise ValueError("dtype %s" % e["dtype"])
        out[name] = a.reshape(shape)
    return out


def inv_freq(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    f = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        f = f / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * np.pi / f
        smooth = (old / wl - lo) / (hi - lo)
        scaled = np.where(wl > lo_wl, f / factor, f)
        mid = (wl <= lo_wl) & (wl >= hi_wl)
        scaled = np.where(mid, (1 - smooth) * f / factor + smooth * f, scaled)
        f = scaled
    return f


def rope(x, pos, invf):
    # x: [T, heads, hd]; HF rotate_half convention.
    ang = pos[:, None] * invf[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(cfg, W, ids):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", H // nh)
    eps = cfg["rms_norm_eps"]
    mt = cfg["model_type"]
    qkv_bias = mt == "qwen2" or cfg.get("attention_bias", False)
    o_bias = mt != "qwen2" and cfg.get("attention_bias", False)
    window = cfg.get("sliding_window") if mt == "mistral" else None
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    invf = inv_freq(cfg, hd)
    x = W["model.embed_tokens.weight"][np.array(ids)]
    i_idx = np.arange(T)[:, None]
    j_idx = np.arange(T)[None, :]
    mask = j_idx <= i_idx
    if window:
        mask &= (i_idx - j_idx) < window
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = h @ W[p + "self_attn.q_proj.weight"].T
        k = h @ W[p + "self_attn.k_proj.weight"].T
        v = h @ W[p + "self_attn.v_proj.weight"].T
        if qkv_bias:
            q = q + W[p + "self_attn.q_proj.bias"]
            k = k + W[p + "self_attn.k_proj.bias"]
            v = v + W[p + "self_attn.v_proj.bias"]
        q = rope(q.reshape(T, nh, hd), pos, invf)
        k = rope(k.reshape(T, nkv, hd), pos, invf)
        v = v.reshape(T, nkv, hd)
        att = np.zeros((T, nh, hd))
        g = nh // nkv
        for hh in range(nh):
            kv = hh // g
            s = (q[:, hh, :] @ k[:, kv, :].T) / np.sqrt(hd)
            s = np.where(mask, s, -np.inf)
            s = s - s.max(axis=1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=1, keepdims=True)
            att[:, hh, :] = pr @ v[:, kv, :]
        o = att.reshape(T, nh * hd) @ W[p + "self_attn.o_proj.weight"].T
        if o_bias:
            o = o + W[p + "self_attn.o_proj.bias"]
        x = x + o
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        gt = h @ W[p + "mlp.gate_proj.weight"].T
        up = h @ W[p + "mlp.up_proj.weight"].T
        x = x + ((gt / (1 + np.exp(-gt))) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight")
    if head is None:
        head = W["model.embed_tokens.weight"]
    return x @ head.T


VARIANTS = [
    # name, make-tiny-model flags, ragserve-generate extra flags
    ("llama_f32", ["--model-type", "llama", "--layers", "2", "--hidden", "64", "--heads", "4",
                   "--kv-heads", "4", "--intermediate", "160", "--vocab", "300"], []),
    ("qwen2_gqa_bias_llama3_f32",
     ["--model-type", "qwen2", "--layers", "2", "--hidden", "96", "--heads", "6", "--kv-heads",
      "2", "--intermediate", "192", "--vocab", "320", "--rope-scaling", "llama3",
      "--rope-factor", "8", "--rope-original-max", "64", "--rope-theta", "500000", "--seed", "7"],
     ["--chunk", "5"]),
    ("mistral_window_f16", ["--model-type", "mistral", "--layers", "2", "--hidden", "64",
                            "--heads", "4", "--kv-heads", "2", "--intermediate", "128",
                            "--vocab", "300", "--sliding-window", "24", "--dtype", "f16",
                            "--seed", "3"], ["--chunk", "7"]),
    ("llama_bf16_tied_linear_bias",
     ["--model-type", "llama", "--layers", "3", "--hidden", "64", "--heads", "8", "--kv-heads",
      "2", "--intermediate", "96", "--vocab", "280", "--rope-scaling", "linear", "--rope-factor",
      "2", "--tie-word-embeddings", "--attention-bias", "--dtype", "bf16", "--seed", "11"], []),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.environ.get("RAGSERVE_BIN_DIR"))
    ap.add_argument("--source-dir", default=os.environ.get("RAGSERVE_SOURCE_DIR"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    corpus = os.path.join(args.source_dir, "data/corpus/passages.jsonl")
    tmp = tempfile.mkdtemp(prefix="forward_ref_")
    failures = []
    try:
        for name, make_flags, gen_flags in VARIANTS:
            d = os.path.join(tmp, name)
            subprocess.run([os.path.join(args.bin_dir, "make-tiny-model"), "--out", d,
                            "--corpus", corpus] + make_flags, check=True,
                           stdout=subprocess.DEVNULL)
            cfg = json.load(open(os.path.join(d, "config.json")))
            rng = np.random.default_rng(len(name))
            prompt = [int(t) for t in rng.integers(2, cfg["vocab_size"], size=13)]
            out = subprocess.run(
                [os.path.join(args.bin_dir, "ragserve-generate"), "--model", d, "--prompt-ids",
                 ",".join(map(str, prompt)), "--max-tokens", str(STEPS), "--ignore-eos",
                 "--step-logits"] + gen_flags, check=True, stdout=subprocess.PIPE).stdout
            res = json.loads(out)
            toks = res["tokens"]
            eng = np.array(res["step_logits"], dtype=np.float64)
            W = read_safetensors(os.path.join(d, "model.safetensors"))
            ref = forward(cfg, W, prompt + toks[:-1])[len(prompt) - 1:]
            err = float(np.max(np.abs(ref - eng)))
            ref_tokens = [int(t) for t in np.argmax(ref, axis=1)]
            same = sum(int(a == b) for a, b in zip(ref_tokens, toks))
            spread = float(np.mean(np.std(ref, axis=1)))
            print("%-30s steps=%d max_abs_logit_err=%.3g greedy_match=%d/%d logit_std=%.3g" %
                  (name, len(toks), err, same, STEPS, spread))
            if len(toks) != STEPS or eng.shape != ref.shape:
                failures.append("%s: got %d tokens, logits %s vs %s" %
                                (name, len(toks), eng.shape, ref.shape))
            if not err <= TOL:
                failures.append("%s: max abs logit error %.3g > %g" % (name, err, TOL))
            if same != STEPS:
                failures.append("%s: greedy tokens differ (%d/%d equal)" % (name, same, STEPS))
            if spread < 0.1:
                failures.append("%s: degenerate logits (std %.3g)" % (name, spread))
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
