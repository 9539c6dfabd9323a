"""General-language pairs for the embedder: WordNet synonyms and glosses, and numbers in words.

Nothing here comes from a benchmark's questions or from the paraphrase generator's inventory:
  * WordNet 3.0 (Debian package wordnet-base, /usr/share/wordnet/data.{noun,verb,adj,adv}) for
    the words of the training passages: (lemma, another lemma of its synset) and (lemma, gloss)
    pairs, and training questions with words swapped for a lemma of their most frequent sense;
  * numbers: digits and their English words ("1453" ~ "one thousand four hundred and fifty-three"),
    a year and its decade or century ("1816" ~ "the 1810s", "the early nineteenth century").
Deterministic for a seed (Python `random`, stdlib only).
"""
import os
import random
import re

WORDNET = "/usr/share/wordnet"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}


def load_wordnet(path=WORDNET):
    """{synset key: (lemmas, gloss)} and {lemma: [synset keys, most frequent sense first]}."""
    if not os.path.exists(os.path.join(path, "data.noun")):
        raise SystemExit(f"{path}/data.noun not found: install WordNet (apt-get install wordnet-base)")
    synsets, senses = {}, {}
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(path, "data." + pos), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                head, _, gloss = line.partition(" | ")
                parts = head.split()
                n = int(parts[3], 16)
                lemmas = [re.sub(r"\(.*\)$", "", parts[4 + 2 * i]).replace("_", " ").lower()
                          for i in range(n)]
                definition = gloss.split(";")[0].split('"')[0].strip()
                synsets[(pos, parts[0])] = (lemmas, definition)
        with open(os.path.join(path, "index." + pos), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                parts = line.split()
                lemma = parts[0].replace("_", " ")
                n_synsets, n_ptr = int(parts[2]), int(parts[3])
                offsets = parts[6 + n_ptr:6 + n_ptr + n_synsets]
                senses.setdefault(lemma, []).extend((pos, o) for o in offsets)
    return synsets, senses


ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINAL_CENTURY = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh",
                   "eighth", "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth",
                   "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
                   "twentieth", "twenty-first"]


def words(n):
    """English words of 0 <= n < 10000, British style ("... hundred and five")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    if n < 1000:
        rest = n % 100
        return ONES[n // 100] + " hundred" + (" and " + words(rest) if rest else "")
    rest = n % 1000
    head = words(n // 1000) + " thousand"
    if not rest:
        return head
    return head + (" and " if rest < 100 else " ") + words(rest)


def number_pair(rng):
    """(a way to say a number or a year, its digits in a short sentence)."""
    kind = rng.random()
    if kind < 0.45:
        n = rng.choice([rng.randint(2, 40), rng.randint(41, 999), rng.randint(1000, 9999)])
        return words(n), str(n)
    year = rng.randint(1050, 1999)
    decade, century = year // 10 * 10, year // 100 + 1
    part = year % 100
    when = "early" if part < 34 else "middle of the" if part < 67 else "late"
    options = [f"the {decade}s", f"the {when} {ORDINAL_CENTURY[century]} century",
               f"the {ORDINAL_CENTURY[century]} century"]
    if year % 10 < 4:
        options.append(f"the early {decade}s")
    elif year % 10 > 6:
        options.append(f"the late {decade}s")
    if year < 2000 and rng.random() < 0.3:
        options.append(words(year // 100) + " " + (words(year % 100) if year % 100 >= 10 else
                                                   "hundred" if year % 100 == 0 else
                                                   "oh " + words(year % 100)))
    return rng.choice(options), f"in {year}"


WORD = re.compile(r"[A-Za-z]+")
# Function words and the like: WordNet senses of these ("a" -> adenine) would only add noise.
STOP = set("a an the of in on at by to for from with and or but is are was were be been it its "
           "he she they his her their this that these those who whom which what when where why "
           "how as so than then there here do does did have has had not no one can will would "
           "may might must also very more most each every any some all many much few".split())


def base_forms(w):
    """w and its plausible singular / base forms (a crude stand-in for WordNet's morphy)."""
    out = [w]
    if w.endswith("ies") and len(w) > 4:
        out.append(w[:-3] + "y")
    if w.endswith("es") and len(w) > 3:
        out.append(w[:-2])
    if w.endswith("s") and len(w) > 3:
        out.append(w[:-1])
    if w.endswith("ed") and len(w) > 4:
        out += [w[:-2], w[:-1]]
    return out


class Lexicon:
    """WordNet restricted to the vocabulary of some training passages."""

    def __init__(self, passages):
        self.synsets, self.senses = load_wordnet()
        vocab = {w.lower() for p in passages for w in WORD.findall(p)} - STOP
        vocab = {w for w in vocab if len(w) > 2}
        self.keys = sorted({k for w in vocab for b in base_forms(w) for k in self.senses.get(b, [])})
        # Each passage word's most frequent sense: what a question might say instead.
        self.alternatives = {}
        for w in sorted(vocab):
            base = next((b for b in base_forms(w) if b in self.senses), None)
            if base is None:
                continue
            lemmas, _ = self.synsets[self.senses[base][0]]
            alts = [l for l in lemmas if l != base]
            if alts:
                self.alternatives[w] = alts

    def pair(self, rng):
        """(lemma, a synonym or its gloss) of a synset that a passage word belongs to."""
        lemmas, gloss = self.synsets[rng.choice(self.keys)]
        a = rng.choice(lemmas)
        others = [l for l in lemmas if l != a]
        if others and rng.random() < 0.5:
            return a, rng.choice(others)
        return a, gloss or a

    def reword(self, question, rng, p=0.5):
        """The question with some words replaced by a lemma of their most frequent sense."""
        def swap(m):
            w = m.group(0)
            alts = self.alternatives.get(w.lower())
            return rng.choice(alts) if alts and rng.random() < p else w
        return WORD.sub(swap, question)


# --- Recipe 3: descriptions by attributes, more ways to say a number ------------------------

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ORDINAL = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
           "ninth", "tenth", "eleventh", "twelfth"]
SMALL_NAMES = {12: ["a dozen"], 6: ["half a dozen"], 2: ["a pair of", "a couple of"],
               20: ["a score of"], 24: ["two dozen"]}
APPROX = ["about", "roughly", "around", "nearly", "some", "close to", "just under", "just over",
          "approximately"]


def words_plain(n):
    """words(n) without the British "and" ("three hundred eighty-nine")."""
    return words(n).replace(" and ", " ")


def say_number(n, rng):
    """One way to say the count or measure n in words (exact or, for n >= 100, approximate)."""
    r = rng.random()
    if n in SMALL_NAMES and r < 0.3:
        return rng.choice(SMALL_NAMES[n])
    if n >= 100 and r < 0.35:
        step = rng.choice([10, 50, 100]) if n < 1000 else rng.choice([50, 100, 500])
        near = int(round(n / step)) * step
        if near > 0:
            approx = rng.choice(APPROX)  # before rng.random(): the shipped run's draw order
            said = words(near) if rng.random() < 0.6 else words_plain(near)
            return f"{approx} {said}"
    if 1100 <= n < 2000 and n % 100 and rng.random() < 0.2:  # "nineteen hundred and nine"
        return words(n // 100) + " hundred and " + words(n % 100)
    return words(n) if rng.random() < 0.6 else words_plain(n)


def say_year(year, rng):
    """A way to say when `year` was: its decade (early / mid / late), century or the year."""
    decade, century, part = year // 10 * 10, year // 100 + 1, year % 100
    when = "early" if part < 34 else rng.choice(["middle of the", "mid"]) if part < 67 else "late"
    d = year % 10
    options = [f"the {decade}s", f"the {ORDINAL_CENTURY[century]} century",
               f"the {when} {ORDINAL_CENTURY[century]} century".replace("mid ", "mid-")]
    if d < 4:
        options.append(f"the early {decade}s")
    elif d > 6:
        options.append(f"the late {decade}s")
    else:
        options.append(f"the mid-{decade}s")
    options.append("the " + words(decade // 100) + " " +
                   (words(decade % 100) + "s" if decade % 100 >= 20 else
                    "hundreds" if decade % 100 == 0 else words(decade % 100) + "s")
                   .replace("ys", "ies"))
    return rng.choice(options)


def calendar_pair(rng):
    """(the n-th month, its name) and the like: general calendar knowledge."""
    m = rng.randrange(12)
    return rng.choice([f"the {ORDINAL[m + 1]} month", f"the {ORDINAL[m + 1]} month of the year",
                       f"month {words(m + 1)}"]), f"in {MONTHS[m]}"


NUM = re.compile(r"\b\d+\b")


def say_numbers(text, rng, years):
    """text with each number said in words; numbers in `years` said as a time."""
    def swap(m):
        n = int(m.group(0))
        if n in years:
            return say_year(n, rng) if rng.random() < 0.85 else m.group(0)
        return say_number(n, rng) if rng.random() < 0.9 else m.group(0)
    return NUM.sub(swap, text)


def attribute_windows(text, answers, name, width=(3, 2)):
    """For each sentence stating some of the answers, the words from a few before the first to a
    few after the last (the name's words removed, lower case): what the passage says about those
    facts, e.g. "it is 389 kilometres long, and"."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        spans = [(sentence.find(a), sentence.find(a) + len(a)) for a in answers if a in sentence]
        if not spans:
            continue
        lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
        before = sentence[:lo].split()[-width[0]:]
        after = sentence[hi:].split()[:width[1]]
        # No names: the subject's, or another's (a maker, a keeper); month names stay.
        words_ = [w for w in before + [sentence[lo:hi]] + after
                  if w.strip(",.") not in name.split() and
                  (not w[:1].isupper() or w.strip(",.") in MONTHS)]
        out.append(" ".join(words_).strip(" ,.;").lower())
    return out


QUESTION_HEADS = ["Which {h}", "What {h}", "Name the {h} that", "The {h} which", "Find the {h}",
                  "{h}:", "a {h}", "Which is the {h} that", "I am looking for a {h}"]
CONNECT = [" and ", ", ", " and also ", "; ", " with "]


def describe(passage, head, rng, lex):
    """A question picking out a passage by its facts, with no name: the subject's kind (`head`,
    maybe a WordNet synonym), two of the facts in the passage's words around them, numbers in
    words or as decades, some words swapped for synonyms. Built from the passage alone."""
    facts = [ans for _, ans in passage["facts"]]
    years = {int(a) for a in facts if a.isdigit() and 1000 <= int(a) < 2000 and
             any(w in passage["text"] for w in (f"in {a}",))}
    attrs = [a for a in facts if not a[:1].isupper() or a in MONTHS]
    windows = attribute_windows(passage["text"], attrs, passage["name"])
    windows = [re.sub(r"\b(%s)\b" % "|".join(m.lower() for m in MONTHS),
                      lambda m: m.group(0).capitalize(), w) for w in windows]
    rng.shuffle(windows)
    windows = windows[:rng.choice([1, 2, 2, 2])]
    body = rng.choice(CONNECT).join(windows)
    q = rng.choice(QUESTION_HEADS).format(h=head) + " " + body
    for m, month in enumerate(MONTHS):
        if month in q and rng.random() < 0.4:
            q = q.replace(month, rng.choice([f"the {ORDINAL[m + 1]} month", month]))
    q = say_numbers(q, rng, years)
    q = lex.reword(q, rng, p=0.4)
    return q + ("?" if rng.random() < 0.6 else "")


def head_noun(passage):
    """What kind of thing the passage is about, in its own words (the subject's common noun)."""
    topic, name = passage["topic"], passage["name"]
    if topic in ("invention", "species"):
        return name.split()[-1]  # "Haedryx pump", "Giafael lizard"
    if topic == "person":
        return next(a for _, a in passage["facts"] if a.islower())  # the trade
    return {"island": "island", "town": "market town", "river": "river", "ship": "sailing ship",
            "mountain": "mountain", "festival": "festival", "bridge": "bridge"}.get(topic, topic)


def attribute_signature(topic, text):
    """(topic, the numbers and lower-case attribute words of the passage's first three
    sentences): two passages with the same signature state the same facts under other names."""
    head = " ".join(re.split(r"(?<=[.!?])\s+", text)[:3])
    # Lower-case words only: names (the subject's, a keeper's, a town's) are capitalised.
    return topic, tuple(NUM.findall(head)), tuple(sorted(
        w for w in set(WORD.findall(head)) if (w[0].islower() or w in MONTHS) and w not in STOP))
