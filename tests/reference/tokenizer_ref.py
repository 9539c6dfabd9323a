#!/usr/bin/python3
"""Independent byte-level BPE reference for ragserve's tokenizer (Debian's python3-regex).

Trains a tokenizer.json with `ragserve-tokenize train` on the sample corpus, derives variants of it
(the pre-tokenizer of GPT-2, Llama-3 and Qwen2; a non-special added token with lstrip/rstrip), and
encodes the corpus passages, the questions and a list of hard strings (emoji, CJK, combining marks,
runs of spaces/newlines, digits, contractions, special-token look-alikes) both with the C++ binary
(`ragserve-tokenize encode --json-lines`) and with the plain Python BPE below, which reads only the
tokenizer.json (no ragserve code). Checks, for every variant and string:
  * the ids are identical (with and without --allow-special);
  * decoding the reference ids with the vocab gives back the input bytes exactly (unless an
    lstrip/rstrip added token absorbed whitespace);
  * without --allow-special no special token id appears.
Usage: tokenizer_ref.py --bin-dir BUILD/bin --source-dir REPO [--vocab-size N] [--keep]
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

import regex

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
         r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>"]

HARD = [
    "",
    " ",
    "Hello world",
    "  leading and trailing  ",
    "don't can't won't it's I'm you're we've they'll she'd",
    "DON'T IT'S WE'VE THEY'LL O'Neil's rock'n'roll",
    "'s 's's '''",
    "1 12 123 1234 12345 1234567890 3.14159 1,000,000 -42 +7e10 0x1F",
    "In 1873, 42% of 7,500 people paid $3.50 each.",
    "a  b   c    d\t\te\n\nf\n\n\ng \n \n h\r\ni\r\n\r\nj",
    "         ",
    "\n\n\n\n",
    "trailing newline\n",
    " \t \n",
    "tab\tseparated\tvalues\t",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e2d\u6587\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4",
    "\U0001f600\U0001f389 party \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 "
    "\U0001f1f3\U0001f1f4 \u2764\ufe0f",
    "e\u0301 a\u0308 n\u0303 Zalgo: Z\u0351\u0357\u0345a\u0352\u034cl\u0350g\u0353o\u0315",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m stra\u00dfe",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea "
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22",
    "\u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 \u0f00",
    "nbsp\u00a0here zero\u200bwidth line\u2028sep em\u2003space ideo\u3000space",
    "ctrl \x01\x02\x7f bell\x07 unit\x1fsep",
    "<|end_of_text|> is special, <|begin_of_text|>so is this",
    "<|im_start|>user\nHi<|im_end|>",
    "<|end_of_text|<|end_of_text|>>",
    "x<keep> y <keep>  z<keep>",
    "!!!??? ... --- *** ((( ))) [[]] {{}} @#$%^&*",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "def f(x):\n    return x ** 2  # square\n",
    "\U0001d400\U0001d401 \U00010348 \U0010fffd",
]


def bytes_to_unicode():
    # GPT-2's table: printable Latin-1 bytes map to themselves, the rest to 256, 257, ...
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


class RefTokenizer:
    def __init__(self, doc):
        model = doc["model"]
        assert model["type"] == "BPE"
        self.vocab = model["vocab"]
        self.ranks = {}
        for i, m in enumerate(model["merges"]):
            a, b = m.split(" ") if isinstance(m, str) else m
            self.ranks.setdefault((a, b), i)
        self.added = [(t["content"], t["id"], t.get("special", False), t.get("lstrip", False),
                       t.get("rstrip", False)) for t in doc.get("added_tokens") or []]
        self.id_to_bytes = {}
        self.b2u = bytes_to_unicode()
        u2b = {u: b for b, u in self.b2u.items()}
        for tok, i in self.vocab.items():
            self.id_to_bytes[i] = bytes(u2b[c] for c in tok)
        for content, i, _, _, _ in self.added:
            self.id_to_bytes[i] = content.encode("utf-8")
        self.special_ids = {i for _, i, s, _, _ in self.added if s}
        self.splits = []  # list of compiled patterns, applied in order (Isolated behaviour)
        self._collect(doc["pre_tokenizer"])
        self.cache = {}

    def _collect(self, p):
        if p["type"] == "Sequence":
            for q in p["pretokenizers"]:
                self._collect(q)
        elif p["type"] == "Split":
            assert p.get("behavior", "Isolated") == "Isolated" and not p.get("invert", False)
            self.splits.append(regex.compile(p["pattern"]["Regex"]))
        elif p["type"] == "ByteLevel":
            assert not p.get("add_prefix_space", False)
            if p.get("use_regex", True):
                self.splits.append(regex.compile(GPT2))
        else:
            raise ValueError("pre_tokenizer %s" % p["type"])

    def bpe(self, word):
        parts = [self.b2u[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return [self.vocab[p] for p in parts]

    def encode_plain(self, text):
        pieces = [text] if text else []
        for pat in self.splits:
            nxt = []
            for s in pieces:
                last = 0
                for m in pat.finditer(s):
                    if m.start() > last:
                        nxt.append(s[last:m.start()])
                    if m.end() > m.start():
                        nxt.append(m.group(0))
                    last = m.end()
                if last < len(s):
                    nxt.append(s[last:])
            pieces = nxt
        ids = []
        for w in pieces:
            if w not in self.cache:
                self.cache[w] = self.bpe(w)
            ids.extend(self.cache[w])
        return ids

    def encode(self, text, allow_special):
        usable = [a for a in self.added if allow_special or not a[2]]
        usable.sort(key=lambda a: -len(a[0]))  # longest first at each position
        if not usable:
            return self.encode_plain(text)
        ids, seg, pos = [], 0, 0
        while pos < len(text):
            hit = next((a for a in usable if text.startswith(a[0], pos)), None)
            if hit is None:
                pos += 1
                continue
            content, i, _, lstrip, rstrip = hit
            end = pos
            if lstrip:
                while end > seg and text[end - 1] in " \t\n\r\f\v":
                    end -= 1
            ids.extend(self.encode_plain(text[seg:end]))
            ids.append(i)
            pos += len(content)
            if rstrip:
                while pos < len(text) and text[pos] in " \t\n\r\f\v":
                    pos += 1
            seg = pos
        ids.extend(self.encode_plain(text[seg:]))
        return ids

    def decode(self, ids):
        return b"".join(self.id_to_bytes[i] for i in ids)


def run_cpp(bin_dir, tok_path, texts, allow_special):
    cmd = [os.path.join(bin_dir, "ragserve-tokenize"), "encode", "--tokenizer", tok_path,
           "--json-lines"]
    if allow_special:
        cmd.append("--allow-special")
    inp = "".join(json.dumps(t) + "\n" for t in texts)
    out = subprocess.run(cmd, input=inp.encode("utf-8"), capture_output=True, check=True)
    lines = out.stdout.decode("utf-8").splitlines()
    assert len(lines) == len(texts), (len(lines), len(texts))
    return [json.loads(l) for l in lines]


def variants(base):
    out = {"llama3_split (as trained)": base}
    d = copy.deepcopy(base)
    d["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True}
    out["gpt2_bytelevel_regex"] = d
    d = copy.deepcopy(base)
    d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2
    out["qwen2_split"] = d
    d = copy.deepcopy(base)
    new_id = max(base["model"]["vocab"].values()) + 1
    d["added_tokens"].append({"id": new_id, "content": "<keep>", "single_word": False,
                              "lstrip": True, "rstrip": True, "normalized": False,
                              "special": False})
    out["added_non_special_strip"] = d
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    corpus = os.path.join(args.source_dir, "data/corpus/passages.jsonl")
    texts = []
    with open(corpus, encoding="utf-8") as f:
        texts += [json.loads(l)["text"] for l in f if l.strip()]
    with open(os.path.join(args.source_dir, "data/corpus/questions.jsonl"), encoding="utf-8") as f:
        texts += [json.loads(l)["question"] for l in f if l.strip()]
    texts += HARD
    # Passages glued with the hard strings exercise the splits at unusual boundaries.
    texts += [HARD[i % len(HARD)] + texts[i] + HARD[(i * 7) % len(HARD)] for i in range(0, 400, 9)]

    tmp = tempfile.mkdtemp(prefix="tokenizer_ref_")
    failures = 0
    try:
        base_path = os.path.join(tmp, "base.json")
        cmd = [os.path.join(args.bin_dir, "ragserve-tokenize"), "train", "--corpus", corpus,
               "--vocab-size", str(args.vocab_size), "--out", base_path]
        for s in SPECIALS:
            cmd += ["--special", s]
        subprocess.run(cmd, check=True)
        with open(base_path, encoding="utf-8") as f:
            base = json.load(f)
        n_ids = len(base["model"]["vocab"]) + len(base["added_tokens"])
        assert n_ids == args.vocab_size, ("trained vocab", n_ids, args.vocab_size)
        assert len(base["model"]["merges"]) == args.vocab_size - 256 - len(SPECIALS)

        for name, doc in variants(base).items():
            path = os.path.join(tmp, name.split(" ")[0] + ".json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f, ensure_ascii=False)
            ref = RefTokenizer(doc)
            n_tokens = 0
            for allow in (False, True):
                got = run_cpp(args.bin_dir, path, texts, allow)
                for text, ids in zip(texts, got):
                    want = ref.encode(text, allow)
                    n_tokens += len(want)
                    if ids != want:
                        failures += 1
                        if failures <= 10:
                            print("MISMATCH [%s allow_special=%s] %r\n  cpp %s\n  ref %s"
                                  % (name, allow, text[:120], ids[:40], want[:40]))
                    stripped = any(a[3] or a[4] for a in ref.added if a[0] in text)
                    if not stripped and ref.decode(want) != text.encode("utf-8"):
                        failures += 1
                        print("ROUND TRIP [%s] %r" % (name, text[:120]))
                    if not allow and ref.special_ids.intersection(ids):
                        failures += 1
                        print("SPECIAL FROM PLAIN TEXT [%s] %r -> %s" % (name, text[:80], ids))
            print("%-28s %4d strings x 2 modes, %6d tokens: %s"
                  % (name, len(texts), n_tokens, "ok" if failures == 0 else "FAIL"))
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d failures" % failures)
        return 1
    print("byte-level BPE encode == python3-regex reference on every string")
    return 0


if __name__ == "__main__":
    sys.exit(main())
