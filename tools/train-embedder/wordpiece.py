"""BERT text normalisation, pre-tokenisation and WordPiece (greedy longest match), plus a small
vocabulary builder, for tools/train-embedder (python3 stdlib only).

The rules are those of the Hugging Face tokenizer.json the engine reads (BertNormalizer with
clean_text, handle_chinese_chars, strip_accents = lowercase = true; BertPreTokenizer; WordPiece with
the "##" continuation prefix), so the ids the model is trained on are the ids the engine feeds it.
"""
import collections
import unicodedata

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or
            0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF or
            0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def normalize(text):
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in "\t\n\r":
            out.append(" ")
            continue
        if cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        if ch.isspace():
            out.append(" ")
        elif _is_cjk(cp):
            out.append(" " + ch + " ")
        else:
            out.append(ch)
    s = unicodedata.normalize("NFD", "".join(out))
    s = "".join(c for c in s if unicodedata.category(c) != "Mn")
    return "".join(c.lower() for c in s)


def _is_punct(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def pre_tokenize(text):
    words = []
    for chunk in text.split():
        cur = ""
        for ch in chunk:
            if _is_punct(ch):
                if cur:
                    words.append(cur)
                words.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


class WordPiece:
    def __init__(self, vocab):
        self.vocab = vocab  # token -> id
        self.unk = vocab["[UNK]"]
        self.cls = vocab["[CLS]"]
        self.sep = vocab["[SEP]"]
        self.pad = vocab["[PAD]"]

    def word_ids(self, word):
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text, max_len):
        ids = []
        for w in pre_tokenize(normalize(text)):
            ids.extend(self.word_ids(w))
        return [self.cls] + ids[:max_len - 2] + [self.sep]


def build_vocab(texts, size):
    """Specials, every character seen (alone and as a ## continuation), whole words by frequency,
    then the most frequent 2-4 character word starts and ## continuations of the remaining words
    (the generated names), up to `size` tokens."""
    counts = collections.Counter()
    for t in texts:
        counts.update(pre_tokenize(normalize(t)))
    chars = sorted({c for w in counts for c in w})
    vocab = list(SPECIALS) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    words = [w for w, n in counts.most_common() if n >= 3 and len(w) > 1]
    budget_words = int((size - len(vocab)) * 0.7)
    for w in words[:budget_words]:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    pieces = collections.Counter()
    for w, n in counts.items():
        if w in seen:
            continue
        for k in (2, 3, 4):
            if len(w) > k:
                pieces[w[:k]] += n
            for i in range(1, len(w) - k + 1):
                pieces["##" + w[i:i + k]] += n
    for p, _ in pieces.most_common():
        if len(vocab) >= size:
            break
        if p not in seen:
            vocab.append(p)
            seen.add(p)
    return {t: i for i, t in enumerate(vocab)}


def tokenizer_json(vocab, max_len):
    """A Hugging Face tokenizer.json for a BERT WordPiece tokenizer with this vocabulary."""
    return {
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": max_len, "strategy": "LongestFirst",
                       "stride": 0},
        "padding": None,
        "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for t in SPECIALS],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", vocab["[SEP]"]],
                           "cls": ["[CLS]", vocab["[CLS]"]]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }
