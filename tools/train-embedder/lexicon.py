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
