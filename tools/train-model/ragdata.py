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


# ---- extra training phrasings (recipe 5) -------------------------------------------------------
# More training wordings per fact, written for the fifth run: the held-out phrasing (the makers'
# last) trailed the trained ones by 5-9 points on the evaluation split. They are added in the
# training rows only (Rows with extra phrasings); make_corpus.py, the dev and the evaluation items
# are unchanged. None may equal a held-out phrasing, nor share a run of four words with any
# held-out phrasing that no maker's training phrasing already has (check_extra_phrasings), so the
# held-out column keeps measuring wordings the model never saw.
_PERSON = re.compile(r"^(.+?) was an? (\w+) from the town of ")


def _subject(p):
    """The fields the extra phrasings are written from: the passage's name (+ the person's
    trade)."""
    f = {"n": p["name"]}
    if p["topic"] == "person":
        m = _PERSON.match(p["text"])
        f["t"] = m.group(2) if m else "person"
    return f


EXTRA = {
    "island": [
        ["What colour has the lighthouse on {n} Island been painted?",
         "Which colour was chosen for the lighthouse on {n} Island?",
         "Say what colour the {n} Island lighthouse is.",
         "What paint colour does the lighthouse on {n} Island have?",
         "Do you know what colour the lighthouse on {n} Island is?",
         "How is the lighthouse on {n} Island coloured?"],
        ["What year did they build the lighthouse on {n} Island?",
         "In which year was the {n} Island lighthouse built?",
         "Give the year the lighthouse on {n} Island was built.",
         "When was the {n} Island lighthouse constructed?",
         "Which year saw the lighthouse on {n} Island built?",
         "Do you know when the lighthouse on {n} Island was built?"],
        ["Which person kept the lighthouse on {n} Island longest?",
         "Who was keeper of the {n} Island lighthouse for the longest time?",
         "Give the name of the longest-serving keeper of the {n} Island lighthouse.",
         "Do you know who kept the lighthouse on {n} Island the longest?",
         "Who had the longest service as keeper of the {n} Island lighthouse?",
         "Which keeper of the {n} Island lighthouse served the longest?"],
    ],
    "person": [
        ["Which year was {n} born in?",
         "In which year was {n} born?",
         "Give the year of birth of the {t} {n}.",
         "What was the birth year of {n}?",
         "Do you know when {n} was born?",
         "When was the {t} {n} born?"],
        ["Which town did the {t} {n} come from?",
         "What was the home town of {n}?",
         "Where was the {t} {n} from?",
         "Give the town {n} came from.",
         "{n} came from what town?",
         "Do you know which town {n} was from?"],
        ["What trade did {n} follow?",
         "What kind of work did {n} do?",
         "Which trade did {n} practise?",
         "What was {n} by trade?",
         "Give the trade of {n}.",
         "Do you know what {n} worked as?"],
    ],
    "invention": [
        ["Which year was the {n} first demonstrated?",
         "When did the first demonstration of the {n} take place?",
         "Give the year the {n} was first demonstrated.",
         "The {n} was first demonstrated when?",
         "In what year was the {n} first demonstrated?",
         "Do you know when the {n} was first demonstrated?"],
        ["Who demonstrated the {n} first?",
         "Who made the prototype of the {n}?",
         "Which inventor first demonstrated the {n}?",
         "Give the name of the person who first demonstrated the {n}.",
         "By whom was the {n} first demonstrated?",
         "Do you know who built the {n}?"],
        ["What task was the {n} designed for?",
         "What was the {n} used for?",
         "What did the {n} do?",
         "Give the purpose of the {n}.",
         "The {n} was designed for what?",
         "Do you know what the {n} was for?"],
    ],
    "species": [
        ["What colour stripe does the {n} have?",
         "Which colour is the stripe along the back of the {n}?",
         "Give the stripe colour of the {n}.",
         "What is the stripe colour of the {n}?",
         "Do you know the colour of the stripe of the {n}?",
         "The stripe on the back of the {n} is what colour?"],
        ["Where can the {n} be found?",
         "What is the habitat of the {n}?",
         "In which habitat is the {n} found?",
         "Where does one find the {n}?",
         "Give the habitat of the {n}.",
         "The {n} lives where?"],
    ],
    "town": [
        ["In which year was {n} founded?",
         "When was the market town of {n} founded?",
         "Give the year {n} was founded.",
         "What year did traders found {n}?",
         "Which year was the town of {n} founded in?",
         "Do you know when {n} was founded?"],
        ["What material is used for the square in {n}?",
         "What is the market square of {n} paved with?",
         "With what is the square of {n} paved?",
         "Give the material of the square in {n}.",
         "Which material was the square of {n} paved with?",
         "What paves the square of {n}?"],
    ],
    "river": [
        ["What length does the {n} River have?",
         "How many km long is the {n} River?",
         "How long is the {n} River?",
         "What is the {n} River's length in kilometres?",
         "Over how many kilometres does the {n} River flow?",
         "Do you know how long the {n} River is?",
         "The {n} River has a length of how many kilometres?"],
    ],
    "ship": [
        ["How many masts did the {n} carry?",
         "What was the number of masts on the {n}?",
         "Give the number of masts the ship {n} carried.",
         "The ship {n} had how many masts?",
         "Do you know how many masts the {n} had?",
         "With how many masts was the {n} rigged?"],
        ["In which year was the {n} launched?",
         "What year was the ship {n} launched?",
         "Give the year the sailing ship {n} was launched.",
         "When was the sailing ship {n} launched?",
         "Which year saw the launch of the {n}?",
         "The sailing ship {n} was launched when?"],
    ],
    "mountain": [
        ["What height is Mount {n}, in metres?",
         "How tall is Mount {n}?",
         "How many metres does Mount {n} rise above sea level?",
         "To what height does Mount {n} rise?",
         "Mount {n} reaches how many metres?",
         "Do you know how high Mount {n} is?",
         "How high does the summit of Mount {n} reach?"],
    ],
    "festival": [
        ["How many days is the {n} Festival?",
         "For how long does the {n} Festival last?",
         "What is the length of the {n} Festival in days?",
         "Give the number of days the {n} Festival lasts.",
         "The {n} Festival goes on for how many days?",
         "Do you know how many days the {n} Festival lasts?"],
        ["Which month is the {n} Festival held in?",
         "In what month does the {n} Festival happen?",
         "When in the year is the {n} Festival held?",
         "Give the month of the {n} Festival.",
         "What month does the {n} Festival fall in?",
         "Do you know in which month the {n} Festival is held?"],
    ],
    "bridge": [
        ["How many arches has the {n} Bridge?",
         "What is the number of arches of the {n} Bridge?",
         "Give the number of arches of the {n} Bridge.",
         "Do you know how many arches the {n} Bridge has?",
         "The {n} Bridge stands on how many arches?",
         "Across how many arches does the {n} Bridge span the river?"],
        ["What material was used for the arches of the {n} Bridge?",
         "Which material are the arches of the {n} Bridge made of?",
         "What is the {n} Bridge made of?",
         "Give the material of the {n} Bridge.",
         "What are the arches of the {n} Bridge built from?",
         "Do you know what the {n} Bridge is built from?"],
    ],
}


def extra_phrasings(p):
    """The extra training phrasings of passage p, one list per fact (aligned with p["facts"])."""
    f = _subject(p)
    return [[s.format(**f) for s in fact] for fact in EXTRA[p["topic"]]]


def _grams(text, subject, n=4):
    words = text.replace(subject, "<S>").split()
    return {" ".join(words[i:i + n]).lower() for i in range(len(words) - n + 1)}


def check_extra_phrasings(n_passages=200, seed=12345):
    """-> list of problems: an extra phrasing equal to a held-out one, or sharing a four-word run
    (the subject's name masked) with any held-out phrasing when no training phrasing has it."""
    stream = PassageStream(seed, "train")
    held, trained, extras = set(), set(), []
    for _ in range(n_passages):
        p = stream.next()
        subject = p["name"]
        for (phr, _), ex in zip(p["facts"], extra_phrasings(p)):
            held |= _grams(phr[-1], subject)
            for q in phr[:-1]:
                trained |= _grams(q, subject)
            extras += [(q, phr[-1], subject) for q in ex]
    bad = []
    for q, h, subject in extras:
        if q == h:
            bad.append("equals the held-out phrasing: %r" % q)
        leak = (_grams(q, subject) & held) - trained
        if leak:
            bad.append("%r shares %s with a held-out phrasing" % (q, sorted(leak)))
    return sorted(set(bad))


# Prefixes put before some training questions (recipe 5): the question may come with words
# around it that say nothing about the fact.
WRAPPERS = ["Please answer: ", "Quick question: ", "One question: "]


# ---- name-from-value questions (recipe 6) ------------------------------------------------------
# The reverse of a fact question: given a value, name the passage it is in. Generic wordings (no
# held-out phrasing asks for a name from a value, so none can leak).
REVERSE = ["Which name goes with {a}?", "Whose passage says {a}?", "{a} belongs to which name?",
           "Name the one with {a}.", "What is the name that has {a}?"]


def unique_value(texts, i, value):
    """True when value occurs in texts[i] only (once asked for, its passage is unambiguous)."""
    return all((value in t) == (j == i) for j, t in enumerate(texts))


def reverse_question(rng, p, value):
    """-> (question, answer): the name of passage p from one of its values."""
    return rng.choice(REVERSE).format(a=value), p["name"]


# ---- binding drills (recipe 7) -----------------------------------------------------------------
# Short synthetic "passages" of one fact each, all of one shape in a row (say, eight names each
# with a number): only the name tells them apart, and the names are made of the same syllables as
# the passages' names. A question asks for a name's value, or (reverse_question) for the name of a
# value. The shipped reader could not copy a name it had not seen (0% on name-from-value
# questions: docs/MODEL.md) and its loss on a question's name tokens after the first was ~1 nat
# with the passage in context: no working induction (copy-what-followed-this-token) circuit, which
# binding a question's name to its passage needs. These rows exercise exactly that, densely.
DRILL_SHAPES = [
    ("number", lambda r: str(r.randint(10, 9999)),
     ["{n}'s number is {v}.", "The number of {n} is {v}.", "{n} was given the number {v}.",
      "{n} holds number {v}."],
     ["What is {n}'s number?", "Which number does {n} have?", "What number was {n} given?",
      "Tell me the number of {n}."]),
    ("colour", lambda r: r.choice(mc.COLOURS),
     ["{n}'s colour is {v}.", "The colour of {n} is {v}.", "{n} was painted {v}.",
      "{n} wears {v}."],
     ["What is {n}'s colour?", "Which colour does {n} have?", "What colour was {n} painted?",
      "Tell me the colour of {n}."]),
    ("month", lambda r: r.choice(mc.MONTHS),
     ["{n}'s month is {v}.", "The month of {n} is {v}.", "{n} was born in {v}.",
      "{n} belongs to {v}."],
     ["What is {n}'s month?", "Which month does {n} have?", "In which month was {n} born?",
      "Tell me the month of {n}."]),
]
NAME_KINDS = ["plain", "person", "place", "island", "surname"]


def drill_passages(rng, names, n):
    """n one-fact passages of one shape, distinct names (names: a Names of the split) and values;
    each as a passage dict (text, name, facts with the last phrasing held out)."""
    shape, value, texts, questions = rng.choice(DRILL_SHAPES)
    n = min(n, {"colour": len(mc.COLOURS), "month": len(mc.MONTHS)}.get(shape, n))
    out, seen = [], set()
    while len(out) < n:
        v = value(rng)
        if v in seen:
            continue
        seen.add(v)
        name = names.make(rng.choice(NAME_KINDS))
        if rng.random() < 0.3:
            name += " " + names.make("surname")
        text = rng.choice(texts).format(n=name, v=v)
        out.append({"text": text, "topic": "drill", "name": name,
                    "facts": [([q.format(n=name) for q in questions], v)]})
    return out


def synthetic_items(make_passages, seed, n_items, k):
    """Evaluation items of synthetic passages: make_passages(rng, names, k) with evaluation names,
    gold at every position in turn, asked with a training phrasing of its one fact."""
    stream = PassageStream(seed, split="eval")
    rng = random.Random(seed + 1)
    items = []
    for i in range(n_items):
        ps = make_passages(rng, stream.names, k)
        gold = ps[i % k]
        phrasings, answer = gold["facts"][0]
        items.append({"passages": [p["text"] for p in ps], "gold": i % k,
                      "question": rng.choice(phrasings[:-1]), "answer": answer,
                      "topic": gold["topic"]})
    return items


def drill_items(seed, n_items, k):
    """Evaluation drills: k one-fact passages of evaluation names (synthetic_items)."""
    return synthetic_items(drill_passages, seed, n_items, k)


# ---- induction warm-up (recipe 9 probe) --------------------------------------------------------
# Lists of names; a question gives a list's first name and asks for the rest: each answer token is
# the token that followed the current one in that list, the pattern an induction head computes,
# over the same syllable pieces the passages' names are made of.
REPEAT_QUESTIONS = ["Repeat the list that begins with {n}.", "Which names follow {n}?",
                    "Continue the list after {n}.", "Say the rest of the list of {n}."]


def repeat_passages(rng, names, n_lists, length=(3, 6)):
    """n_lists lists of names (names: a Names of the split), each a passage dict whose one fact is
    (questions, the names after the first, comma-separated)."""
    out = []
    for _ in range(n_lists):
        ns = [names.make(rng.choice(NAME_KINDS)) for _ in range(rng.randint(*length))]
        out.append({"text": "List: " + ", ".join(ns) + ".", "topic": "repeat", "name": ns[0],
                    "facts": [([q.format(n=ns[0]) for q in REPEAT_QUESTIONS], ", ".join(ns[1:]))]})
    return out


def repeat_items(seed, n_items, k):
    """Evaluation lists: k lists of evaluation names, each item asking for the rest of one
    (synthetic_items)."""
    return synthetic_items(repeat_passages, seed, n_items, k)
