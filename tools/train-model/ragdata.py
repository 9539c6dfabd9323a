"""RAG reading data for the trained reader model: generated passages, questions and answers.

Passages come from tools/make-corpus/make_corpus.py (the same ten passage kinds as the sample
corpus) with fresh seeds. Names are split by a stable hash into a training and an evaluation part,
and the sample corpus's names are excluded from both, so no name the project evaluates on (held-out
sets, the demo corpus) was ever seen in training.
Each fact has several phrasings: phrasings[0] is the corpus's own question, phrasings[-1] is held
out (never trained on) and used by the evaluation to test paraphrases.

The prompt layout is the one the services use (services/common/rag_template.h, read from there so
there is one definition):  BOS + prefix + passage_1 + "\\n\\n" + ... + "Question: <q>\\nAnswer:"
and the answer is " <answer>" followed by EOS.
"""
import importlib.util
import json
import os
import random
import re
import zlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEMPLATE_HEADER = os.path.join(ROOT, "services", "common", "rag_template.h")


def _load_make_corpus():
    path = os.path.join(ROOT, "tools", "make-corpus", "make_corpus.py")
    spec = importlib.util.spec_from_file_location("make_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mc = _load_make_corpus()
TOPICS = [m.__name__ for m in mc.MAKERS]


def _cpp_string(name, text):
    """The value of `inline constexpr char name[] = "...";` (adjacent literals joined)."""
    m = re.search(r"\b%s\[\]\s*=\s*((?:\s*\"(?:[^\"\\]|\\.)*\")+)\s*;" % name, text)
    if not m:
        raise SystemExit("%s: no constant %s" % (TEMPLATE_HEADER, name))
    parts = re.findall(r"\"((?:[^\"\\]|\\.)*)\"", m.group(1))
    return "".join(p.encode("utf-8").decode("unicode_escape") for p in parts)


class Template:
    """The RAG prompt strings, read from the C++ header the services compile."""

    def __init__(self, header=TEMPLATE_HEADER):
        with open(header, encoding="utf-8") as f:
            text = f.read()
        self.prefix = _cpp_string("kRagPrefix", text)
        self.passage_suffix = _cpp_string("kRagPassageSuffix", text)
        self.question_head = _cpp_string("kRagQuestionHead", text)
        self.question_tail = _cpp_string("kRagQuestionTail", text)

    def passage(self, text):
        return text + self.passage_suffix

    def question(self, q):
        return self.question_head + q + self.question_tail

    def prompt(self, question, passages):
        return self.prefix + "".join(self.passage(p) for p in passages) + self.question(question)


def corpus_names(path=os.path.join(ROOT, "data", "corpus", "passages.jsonl")):
    names = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            meta = json.loads(line)["metadata"]
            names.update(meta["name"].split())
    return names


def held_out_name(name):
    """Names are split by a stable hash: one in eight belongs to evaluation, the rest to training,
    so no evaluation set, however large, shares a name with anything the model was trained on."""
    return zlib.crc32(name.encode("utf-8")) % 8 == 0


class SplitNames(mc.Names):
    def __init__(self, rng, split, forbidden):
        super().__init__(rng)
        self.want_held_out = split == "eval"
        self.used |= set(forbidden)

    def make(self, kind, syllables=2):
        while True:
            name = super().make(kind, syllables)
            if held_out_name(name) == self.want_held_out:
                return name


class PassageStream:
    """An endless stream of generated passages of one split ("train" or "eval"); names never repeat
    within a stream and never come from the sample corpus."""

    def __init__(self, seed, split="train"):
        self.rng = random.Random(seed)
        self.names = SplitNames(self.rng, split, corpus_names())

    def next(self, topic=None):
        maker = mc.MAKERS[TOPICS.index(topic)] if topic else self.rng.choice(mc.MAKERS)
        text, meta, facts = maker(self.rng, self.names)
        for phrasings, ans in facts:
            assert ans in text, (ans, text)
        return {"text": text, "topic": meta["topic"], "name": meta["name"], "facts": facts}


def eval_items(seed, n_items, k, phrasing="heldout", same_topic_distractors=0, spread=False):
    """Held-out evaluation items: gold passage among k-1 distractors, gold position cycling
    through 0..k-1 so every position is measured equally. phrasing: "heldout" (never trained),
    "canonical" (the corpus's own question) or "train" (a training phrasing). With fewer items
    than passages the cycle only reaches positions 0..n_items-1; spread=True places item i's gold
    at i * k // n_items instead (evenly over the whole prompt: the needle)."""
    stream = PassageStream(seed, split="eval")
    rng = random.Random(seed + 1)
    items = []
    for i in range(n_items):
        gold = stream.next()
        distract = [stream.next(gold["topic"]) for _ in range(min(same_topic_distractors, k - 1))]
        distract += [stream.next() for _ in range(k - 1 - len(distract))]
        rng.shuffle(distract)
        pos = i * k // n_items if spread else i % k
        passages = distract[:pos] + [gold] + distract[pos:]
        phrasings, answer = gold["facts"][0] if i % 2 == 0 else rng.choice(gold["facts"])
        if phrasing == "heldout":
            q = phrasings[-1]
        elif phrasing == "canonical":
            q = phrasings[0]
        else:
            q = rng.choice(phrasings[:-1])
        items.append({"passages": [p["text"] for p in passages], "gold": pos, "question": q,
                      "answer": answer, "topic": gold["topic"]})
    return items


# Held-out evaluation (tools/eval) and the dev split (monitoring, APE T/S tuning).
EVAL_SEED = 900001
DEV_SEED = 900101
