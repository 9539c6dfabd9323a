"""Byte-level BPE encoding of a tokenizer.json written by ragserve's trainer (Python side).

An independent re-implementation of what services/engine/tokenizer.cc does for the tokenizers that
services/engine/bpe_trainer.cc writes: Llama-3 regex pre-tokenizer (isolated splits), GPT-2 byte to
unicode mapping, rank-ordered merges, special added tokens. train.py checks it against
`ragserve-tokenize encode` on a sample before it trains, so the model sees exactly the ids the
engine will feed it.
"""
import json

import regex

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) +
          list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class ByteLevelBpe:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        model = doc["model"]
        assert model["type"] == "BPE", model["type"]
        self.vocab = model["vocab"]
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        merges = model["merges"]
        self.ranks = {}
        for r, m in enumerate(merges):
            a, b = m.split(" ") if isinstance(m, str) else m
            self.ranks[(a, b)] = r
        self.special = {t["content"]: t["id"] for t in doc.get("added_tokens", [])}
        for t, i in self.special.items():
            self.id_to_token[i] = t
        self.byte_map = bytes_to_unicode()
        self.unbyte = {c: b for b, c in self.byte_map.items()}
        self.pattern = regex.compile(LLAMA3_PATTERN)
        self.cache = {}
        self.bos_id = self.special.get("<|begin_of_text|>")
        self.eos_id = self.special.get("<|end_of_text|>")
        self.vocab_size = max(self.id_to_token) + 1

    def _word(self, word):
        ids = self.cache.get(word)
        if ids is not None:
            return ids
        parts = [self.byte_map[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        ids = [self.vocab[p] for p in parts]
        if len(self.cache) < 500000:
            self.cache[word] = ids
        return ids

    def encode(self, text):
        """Ids of `text` (no BOS; special tokens written in the text are not matched)."""
        out = []
        for w in self.pattern.findall(text):
            out.extend(self._word(w))
        return out

    def decode(self, ids):
        data = bytearray()
        for i in ids:
            t = self.id_to_token[i]
            if i in self.special.values():
                continue
            data.extend(self.unbyte[c] for c in t)
        return data.decode("utf-8", errors="replace")
