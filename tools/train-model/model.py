"""The reader model in torch: exactly the Llama architecture the engine serves (RMSNorm, RoPE with
rotate_half, SwiGLU, grouped-query attention, tied or untied embeddings), plus its export to the
Hugging Face layout (config.json + model.safetensors) that services/engine loads.

Attention takes an explicit boolean mask [B, T, T] and explicit position ids [B, T], so one
training row can hold a context followed by several question/answer segments that each see the
context but not each other, all starting at the same position (see train.py).
"""
import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, vocab_size, hidden=256, layers=4, heads=4, kv_heads=2, intermediate=704,
                 rope_theta=100000.0, max_positions=16384, rms_eps=1e-5, tie=True):
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.layers = layers
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = hidden // heads
        self.intermediate = intermediate
        self.rope_theta = rope_theta
        self.max_positions = max_positions
        self.rms_eps = rms_eps
        self.tie = tie

    def hf(self, bos_id, eos_id):
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie,
            "attention_bias": False,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "torch_dtype": "float32",
        }


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(pos, head_dim, theta):
    """cos/sin [B, T, head_dim] for rotate_half RoPE at integer positions pos [B, T]."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = pos.to(torch.float64).unsqueeze(-1) * inv  # [B, T, hd/2]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Block:
    """Queries [q_lo, q_hi) of one row attend to the keys at `keys` (a LongTensor of positions in
    the row, or None for keys [0, k_hi)) with an additive bias [q_hi - q_lo, len(keys)] (0 or
    -inf). A row cut into blocks costs the sum of the blocks' sizes, not T x T: long training rows
    (passages attend to the prefix and their chunk, questions to everything) and long evaluation
    prompts (causal attention in chunks of queries) stay linear in memory."""

    def __init__(self, q_lo, q_hi, keys, bias, k_hi=0):
        self.q_lo, self.q_hi, self.keys, self.bias, self.k_hi = q_lo, q_hi, keys, bias, k_hi


def attend_blocks(q, k, v, blocks):
    """q: [H, T, hd], k/v: [H, T, hd] (kv already repeated to H), blocks covering the queries in
    order -> [H, T, hd]."""
    outs = []
    for bl in blocks:
        if bl.keys is None:
            kk, vv = k[:, :bl.k_hi], v[:, :bl.k_hi]
        else:
            kk, vv = k.index_select(1, bl.keys), v.index_select(1, bl.keys)
        s = torch.baddbmm(bl.bias.unsqueeze(0), q[:, bl.q_lo:bl.q_hi], kk.transpose(-1, -2))
        outs.append(torch.bmm(torch.softmax(s, dim=-1), vv))
    return torch.cat(outs, dim=1)


def causal_blocks(T, chunk=1024):
    """Plain causal attention over T tokens as blocks of `chunk` queries (evaluation of long
    prompts: [H, chunk, T] scores instead of [H, T, T])."""
    out = []
    for lo in range(0, T, chunk):
        hi = min(T, lo + chunk)
        bias = torch.zeros(hi - lo, hi)
        bias[:, lo:] = torch.full((hi - lo, hi - lo), float("-inf")).triu(1)
        out.append(Block(lo, hi, None, bias, k_hi=hi))
    return out


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.input_layernorm = RMSNorm(c.hidden, c.rms_eps)
        self.q_proj = nn.Linear(c.hidden, c.heads * hd, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(c.heads * hd, c.hidden, bias=False)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.rms_eps)
        self.gate_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, c.hidden, bias=False)
        self.scores_hook = None  # probes: called with (row, pre-softmax scores [heads, T, T])

    def forward(self, x, cos, sin, bias, blocks=None):
        c = self.c
        B, T, _ = x.shape
        hd = c.head_dim
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, c.heads, hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, c.kv_heads, hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, c.kv_heads, hd).transpose(1, 2)
        cs, sn = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * cs + rotate_half(q) * sn) * (1.0 / math.sqrt(hd))
        k = k * cs + rotate_half(k) * sn
        g = c.heads // c.kv_heads
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        if blocks is not None:
            a = attend_blocks(q[0], k[0], v[0], blocks).unsqueeze(0)
        else:
            # One row at a time: the [heads, T, T] scores of a row stay small enough for the
            # allocator to reuse; whole-batch [B, heads, T, T] temporaries made a training step
            # ~3x slower here (fresh pages for every large tensor; measured on the 2-core VM).
            rows = []
            for b in range(B):
                s = torch.baddbmm(bias[b], q[b], k[b].transpose(-1, -2))
                if self.scores_hook is not None:
                    self.scores_hook(b, s)
                rows.append(torch.bmm(torch.softmax(s, dim=-1), v[b]))
            a = torch.stack(rows)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, c.heads * hd))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Reader(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.layers)])
        self.norm = RMSNorm(c.hidden, c.rms_eps)
        self.lm_head = None if c.tie else nn.Linear(c.hidden, c.vocab_size, bias=False)
        self.apply(self._init)
        # Residual output projections start small (GPT-2 style), which trains faster at depth.
        for layer in self.layers:
            for lin in (layer.o_proj, layer.down_proj):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * c.layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids, pos, mask, blocks=None):
        """ids, pos: [B, T] int64; mask: [B, T, T] bool (True = may attend), or blocks (a list of
        Block covering the queries of a single row, B = 1; mask None). -> logits [B, T, V]"""
        x = self.embed_tokens(ids)
        cos, sin = rope_tables(pos, self.c.head_dim, self.c.rope_theta)
        bias = None
        if blocks is None:
            bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))
            bias = bias.unsqueeze(1)  # [B, 1, T, T]: row b's bias broadcasts over the heads
        for layer in self.layers:
            x = layer(x, cos, sin, bias, blocks)
        x = self.norm(x)
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return x @ w.t()

    def hf_state(self):
        """Tensors under the Hugging Face Llama names."""
        out = {"model.embed_tokens.weight": self.embed_tokens.weight,
               "model.norm.weight": self.norm.weight}
        if self.lm_head is not None:
            out["lm_head.weight"] = self.lm_head.weight
        for i, l in enumerate(self.layers):
            p = "model.layers.%d." % i
            out[p + "input_layernorm.weight"] = l.input_layernorm.weight
            out[p + "post_attention_layernorm.weight"] = l.post_attention_layernorm.weight
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[p + "self_attn.%s.weight" % n] = getattr(l, n).weight
            for n in ("gate_proj", "up_proj", "down_proj"):
                out[p + "mlp.%s.weight" % n] = getattr(l, n).weight
        return out


def write_safetensors(path, tensors):
    """The safetensors format: u64 little-endian header size, JSON header, raw little-endian data."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """{name: float32 tensor} of a safetensors file written by write_safetensors (F32 only)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        if h["dtype"] != "F32":
            raise SystemExit("%s: %s is %s, only F32 is read" % (path, name, h["dtype"]))
        a, b = h["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).view(h["shape"])
    return out


def load_hf(model, model_dir):
    """Loads config.json + model.safetensors of an exported model (export below) into `model`,
    whose Config must match the file's: the start of a continuation run (train.py --init-from)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        want = json.load(f)
    have = model.c.hf(want.get("bos_token_id"), want.get("eos_token_id"))
    diff = {k: (want.get(k), v) for k, v in have.items() if want.get(k) != v}
    if diff:
        raise SystemExit("%s: config differs from the model's (file, model): %s"
                         % (model_dir, diff))
    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    params = model.hf_state()
    if set(tensors) != set(params):
        raise SystemExit("%s: tensors differ: %s" % (model_dir, sorted(set(tensors) ^ set(params))))
    with torch.no_grad():
        for name, p in params.items():
            if tuple(tensors[name].shape) != tuple(p.shape):
                raise SystemExit("%s: %s has shape %s, the model %s" % (
                    model_dir, name, list(tensors[name].shape), list(p.shape)))
            p.copy_(tensors[name])


def export(model, out_dir, tokenizer_json, bos_id, eos_id):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.c.hf(bos_id, eos_id), f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out_dir, "model.safetensors"), model.hf_state())
    with open(tokenizer_json, "rb") as src, open(os.path.join(out_dir, "tokenizer.json"), "wb") as d:
        d.write(src.read())
