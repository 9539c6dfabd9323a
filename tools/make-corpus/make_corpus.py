#!/usr/bin/python3
"""Writes the synthetic sample corpus data/corpus/{passages,questions}.jsonl.

Every passage describes a fictional subject (island, person, invention, species, town, river, ship,
mountain, festival, bridge) with one checkable fact tied to a name no other passage uses, so an
end-to-end test can ask about that name and check which passage is retrieved. Deterministic: the
same seed always writes byte-identical files (python3 stdlib only).

Usage: /usr/bin/python3 tools/make-corpus/make_corpus.py [--out data/corpus] [--n 400] [--seed 7]
"""
import argparse
import json
import os
import sys
import random

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kel", "l", "m", "n", "p", "r",
          "s", "st", "t", "th", "v", "w", "z", "sk", "tr", "ves", "mor", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia", "y"]
CODAS = ["", "n", "r", "l", "th", "s", "m", "nd", "rk", "lt", "x", "v"]
ENDINGS = {
    "island": ["holm", "ey", "ness", "sk", "ay"],
    "person": ["", "a", "o", "in", "ette"],
    "surname": ["son", "wick", "berg", "ley", "mont", "ard"],
    "place": ["ford", "by", "stead", "ton", "vale", "mere"],
    "plain": [""],
}
COLOURS = ["crimson", "teal", "amber", "violet", "ochre", "cobalt blue", "emerald green",
           "saffron yellow", "charcoal grey", "coral pink", "ivory white", "rust red", "indigo",
           "turquoise", "lilac", "copper orange"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
MATERIALS = ["granite", "oak", "brass", "limestone", "cedar", "iron", "sandstone", "slate"]
TRADES = ["clockmaker", "cartographer", "glassblower", "astronomer", "botanist", "shipwright",
          "violinist", "beekeeper", "bookbinder", "engineer"]
DEVICES = [("loom", "weaving sailcloth"), ("pump", "draining flooded mines"),
           ("telescope", "charting comets"), ("press", "printing river charts"),
           ("kiln", "firing blue tiles"), ("lantern", "signalling across fog"),
           ("mill", "grinding salt"), ("engine", "hauling ore carts"),
           ("calculator", "predicting tides"), ("compass", "finding iron seams")]
CREATURES = ["beetle", "moth", "lizard", "heron", "frog", "finch", "eel", "spider", "snail",
             "crab"]
HABITATS = ["mossy cliffs", "salt marshes", "pine forests", "volcanic caves", "river deltas",
            "alpine meadows", "coral shallows", "misty bogs"]
FILLER = [
    "Visitors often arrive in the late afternoon, when the light turns soft and golden.",
    "Local guides tell the story with obvious pride and a few embellishments.",
    "Records from the period are incomplete, but the main details are well attested.",
    "A small museum nearby keeps sketches, letters and a worn wooden model.",
    "Children from the region learn about it in their first years of school.",
    "Several travel writers have described it as quiet, windswept and strangely beautiful.",
    "The surrounding area is known for its cold springs and long summer evenings.",
    "Historians still argue about the exact route that the first surveyors took.",
    "Every spring a handful of volunteers repair paths and repaint the old signs.",
    "Photographs from that decade show the same scene almost unchanged.",
    "Few people outside the valley had heard of it until a newspaper article appeared.",
    "The nearest railway station is a long walk away along a gravel track.",
]


class Names:
    def __init__(self, rng):
        self.rng = rng
        self.used = set()

    def make(self, kind, syllables=2):
        while True:
            parts = [self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(syllables)]
            stem = "".join(parts) + self.rng.choice(CODAS)
            name = (stem + self.rng.choice(ENDINGS[kind])).capitalize()
            if 4 <= len(name) <= 12 and name not in self.used:
                self.used.add(name)
                return name


def fillers(rng, k):
    return " ".join(rng.sample(FILLER, k))


def island(rng, names):
    n = names.make("island")
    c = rng.choice(COLOURS)
    year = rng.randint(1780, 1935)
    keeper = names.make("person") + " " + names.make("surname")
    text = (f"{n} Island lies off a rocky northern coast and is reached by a ferry that runs twice "
            f"a week. Its lighthouse, built in {year}, is painted {c} from base to lantern, a colour "
            f"chosen so that fishermen could tell it apart from every other light on the coast. The "
            f"longest-serving keeper was {keeper}. {fillers(rng, 2)}")
    facts = [
        ([f"What colour is the lighthouse on {n} Island?",
          f"Which colour is the lighthouse of {n} Island painted?",
          f"The lighthouse on {n} Island is painted in what colour?",
          f"What is the colour of the {n} Island lighthouse?",
          f"On {n} Island, what colour is the lighthouse?",
          f"I would like to know what colour the lighthouse on {n} Island is.",
          f"Tell me the colour of the lighthouse on {n} Island."], c),
        ([f"In what year was the lighthouse on {n} Island built?",
          f"When was the lighthouse on {n} Island built?",
          f"What year was the {n} Island lighthouse built?",
          f"State the year the lighthouse on {n} Island was built.",
          f"On {n} Island, when was the lighthouse built?",
          f"The lighthouse on {n} Island was built in which year?"], str(year)),
        ([f"Who was the longest-serving keeper of the lighthouse on {n} Island?",
          f"Who kept the lighthouse on {n} Island for the longest time?",
          f"Which keeper served longest at the lighthouse on {n} Island?",
          f"The longest-serving keeper of the {n} Island lighthouse was who?",
          f"Who served the longest as keeper on {n} Island?",
          f"Name the longest-serving keeper on {n} Island."], keeper),
    ]
    return text, {"topic": "island", "name": n}, facts


def person(rng, names):
    first, last = names.make("person"), names.make("surname")
    trade = rng.choice(TRADES)
    year = rng.randint(1610, 1960)
    town = names.make("place")
    text = (f"{first} {last} was a {trade} from the town of {town}. Born in {year}, {first} "
            f"became known for patient, careful work and for keeping detailed notebooks. Many of "
            f"those notebooks survive and are still consulted by specialists. {fillers(rng, 2)}")
    facts = [
        ([f"In what year was the {trade} {first} {last} born?",
          f"When was {first} {last} born?",
          f"What is the birth year of the {trade} {first} {last}?",
          f"What year was {first} {last} born?",
          f"State the year of birth of {first} {last}.",
          f"The {trade} {first} {last} was born when?",
          f"{first} {last}, the {trade}, was born in which year?"], str(year)),
        ([f"Which town was the {trade} {first} {last} from?",
          f"Where did {first} {last} come from?",
          f"What town did {first} {last} come from?",
          f"From which town did the {trade} {first} {last} come?",
          f"I would like to know the home town of {first} {last}.",
          f"{first} {last} was a {trade} from which town?"], town),
        ([f"What was the trade of {first} {last}?",
          f"What did {first} {last} work as?",
          f"What work did {first} {last} do?",
          f"{first} {last} worked in which trade?",
          f"State the trade of {first} {last}.",
          f"What was the profession of {first} {last}?"], trade),
    ]
    return text, {"topic": "person", "name": f"{first} {last}"}, facts


def invention(rng, names):
    inv = names.make("plain")
    dev, use = rng.choice(DEVICES)
    year = rng.randint(1701, 1969)
    maker = names.make("person") + " " + names.make("surname")
    text = (f"The {inv} {dev} was a machine designed for {use}. It was first demonstrated in "
            f"{year} by {maker}, who built the prototype in a rented workshop. Later versions were "
            f"smaller and cheaper, and a few are still kept in working order. {fillers(rng, 2)}")
    facts = [
        ([f"In which year was the {inv} {dev} first demonstrated?",
          f"When was the {inv} {dev} first demonstrated?",
          f"What year saw the first demonstration of the {inv} {dev}?",
          f"What year was the {inv} {dev} first demonstrated?",
          f"State the year the {inv} {dev} was first demonstrated.",
          f"The first demonstration of the {inv} {dev} was in what year?",
          f"The {inv} {dev} was first shown in which year?"], str(year)),
        ([f"Who first demonstrated the {inv} {dev}?",
          f"Who built the prototype of the {inv} {dev}?",
          f"The {inv} {dev} was first demonstrated by whom?",
          f"Who was the maker of the {inv} {dev}?",
          f"State who first demonstrated the {inv} {dev}.",
          f"Which person demonstrated the {inv} {dev} for the first time?"], maker),
        ([f"What was the {inv} {dev} designed for?",
          f"What job was the {inv} {dev} built to do?",
          f"What was the purpose of the {inv} {dev}?",
          f"What use was the {inv} {dev} built for?",
          f"For what task was the {inv} {dev} designed?",
          f"The {inv} {dev} was a machine for what?"], use),
    ]
    return text, {"topic": "invention", "name": f"{inv} {dev}"}, facts


def species(rng, names):
    sp = names.make("plain")
    kind = rng.choice(CREATURES)
    c = rng.choice(COLOURS)
    hab = rng.choice(HABITATS)
    text = (f"The {sp} {kind} is a small creature found only in the {hab} of a remote "
            f"archipelago. Its most striking feature is a {c} stripe along its back, which makes "
            f"it easy to recognise even from a distance. It feeds at dawn and rests during the "
            f"heat of the day. {fillers(rng, 2)}")
    facts = [
        ([f"What colour is the stripe on the back of the {sp} {kind}?",
          f"Which colour is the stripe of the {sp} {kind}?",
          f"The {sp} {kind} has a stripe of what colour?",
          f"What is the colour of the stripe on the {sp} {kind}?",
          f"On its back, the {sp} {kind} has a stripe of which colour?",
          f"I would like to know the stripe colour of the {sp} {kind}.",
          f"Tell me the colour of the stripe on the {sp} {kind}."], c),
        ([f"Where is the {sp} {kind} found?",
          f"In what habitat does the {sp} {kind} live?",
          f"Where does the {sp} {kind} live?",
          f"The {sp} {kind} is found where?",
          f"State where the {sp} {kind} is found.",
          f"Which habitat is home to the {sp} {kind}?"], hab),
    ]
    return text, {"topic": "species", "name": f"{sp} {kind}"}, facts


def town(rng, names):
    t = names.make("place")
    year = rng.randint(1050, 1890)
    mat = rng.choice(MATERIALS)
    text = (f"{t} is a market town built around a square paved with {mat}. It was founded in "
            f"{year} by traders who needed a safe place to store wool and grain over the winter. "
            f"The weekly market still opens at seven in the morning. {fillers(rng, 2)}")
    facts = [
        ([f"In what year was the market town of {t} founded?",
          f"When was {t} founded?",
          f"What is the founding year of the town of {t}?",
          f"What year was {t} founded?",
          f"State the year the town of {t} was founded.",
          f"The town of {t} was founded when?",
          f"The market town of {t} was founded in which year?"], str(year)),
        ([f"What is the square of {t} paved with?",
          f"Which material paves the square in {t}?",
          f"What material is the square of {t} paved with?",
          f"In {t}, what is the market square paved with?",
          f"State what the square in {t} is paved with.",
          f"The square of {t} is paved with what?"], mat),
    ]
    return text, {"topic": "town", "name": t}, facts


def river(rng, names):
    r = names.make("plain")
    km = rng.randint(41, 2900)
    text = (f"The {r} River rises in a ring of low hills and flows slowly toward the sea. It is "
            f"{km} kilometres long, and for most of that distance it is shallow enough to wade "
            f"across in late summer. Otters, herons and small silver fish live along its banks. "
            f"{fillers(rng, 2)}")
    facts = [
        ([f"How long is the {r} River in kilometres?",
          f"What is the length of the {r} River?",
          f"How many kilometres long is the {r} River?",
          f"The {r} River is how many kilometres long?",
          f"What length is the {r} River, in kilometres?",
          f"State how long the {r} River is.",
          f"Give the length of the {r} River in kilometres."], str(km)),
    ]
    return text, {"topic": "river", "name": r}, facts


def ship(rng, names):
    s = names.make("person")
    masts = rng.randint(2, 7)
    year = rng.randint(1702, 1899)
    text = (f"The sailing ship {s} was launched in {year} from a small yard on a tidal river. "
            f"She carried {masts} masts and was famous for crossing the northern sea faster than "
            f"any ship of her size. Her figurehead now hangs in a harbour office. {fillers(rng, 2)}")
    facts = [
        ([f"How many masts did the sailing ship {s} carry?",
          f"How many masts did the {s} have?",
          f"What number of masts did the ship {s} carry?",
          f"The {s} had how many masts?",
          f"How many masts were on the sailing ship {s}?",
          f"State the number of masts of the ship {s}.",
          f"The sailing ship {s} carried how many masts?"], str(masts)),
        ([f"In what year was the sailing ship {s} launched?",
          f"When was the ship {s} launched?",
          f"What year was the sailing ship {s} launched?",
          f"State the year the ship {s} was launched.",
          f"The ship {s} was launched when?",
          f"The {s} was launched in which year?"], str(year)),
    ]
    return text, {"topic": "ship", "name": s}, facts


def mountain(rng, names):
    m = names.make("plain")
    h = rng.randint(1200, 6900)
    text = (f"Mount {m} stands at the end of a long glacial valley. Its summit reaches {h} metres "
            f"above sea level, and on clear days it can be seen from the coast. The first "
            f"recorded ascent followed the eastern ridge, which is still the usual route. "
            f"{fillers(rng, 2)}")
    facts = [
        ([f"How high is Mount {m} in metres?",
          f"What is the height of Mount {m}?",
          f"How many metres high is Mount {m}?",
          f"Mount {m} is how many metres high?",
          f"What height does the summit of Mount {m} reach?",
          f"State the height of Mount {m}.",
          f"Give the height of Mount {m} in metres."], str(h)),
    ]
    return text, {"topic": "mountain", "name": m}, facts


def festival(rng, names):
    f = names.make("plain")
    month = rng.choice(MONTHS)
    days = rng.randint(2, 12)
    text = (f"The {f} Festival is held every year in {month} and lasts {days} days. People gather "
            f"to share bread, songs and stories, and the last evening ends with lanterns floated "
            f"on a lake. Nobody is quite sure when the first festival took place. "
            f"{fillers(rng, 2)}")
    facts = [
        ([f"How many days does the {f} Festival last?",
          f"How long does the {f} Festival last, in days?",
          f"For how many days is the {f} Festival held?",
          f"How many days long is the {f} Festival?",
          f"The {f} Festival is held for how many days?",
          f"State how many days the {f} Festival lasts.",
          f"The {f} Festival lasts how many days?"], str(days)),
        ([f"In which month is the {f} Festival held?",
          f"When is the {f} Festival held each year?",
          f"What month is the {f} Festival held in?",
          f"The {f} Festival is held in which month?",
          f"State the month of the {f} Festival.",
          f"The {f} Festival takes place in what month?"], month),
    ]
    return text, {"topic": "festival", "name": f}, facts


def bridge(rng, names):
    b = names.make("plain")
    arches = rng.randint(3, 31)
    mat = rng.choice(MATERIALS)
    text = (f"The {b} Bridge crosses a wide, slow river on {arches} arches of {mat}. It was "
            f"paid for by a group of merchants who were tired of waiting for the ferry. Carts "
            f"were allowed across it until a newer road bridge opened downstream. "
            f"{fillers(rng, 2)}")
    facts = [
        ([f"How many arches does the {b} Bridge have?",
          f"On how many arches does the {b} Bridge cross the river?",
          f"What number of arches does the {b} Bridge have?",
          f"How many arches are there on the {b} Bridge?",
          f"The {b} Bridge crosses the river on how many arches?",
          f"State the number of arches of the {b} Bridge.",
          f"The {b} Bridge has how many arches?"], str(arches)),
        ([f"What are the arches of the {b} Bridge made of?",
          f"Which material is the {b} Bridge built from?",
          f"What material are the arches of the {b} Bridge?",
          f"The {b} Bridge is built from which material?",
          f"State what the {b} Bridge is made of.",
          f"The arches of the {b} Bridge are made of what?"], mat),
    ]
    return text, {"topic": "bridge", "name": b}, facts


MAKERS = [island, person, invention, species, town, river, ship, mountain, festival, bridge]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../data/corpus"))
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory and fail unless the files in --out are identical")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    names = Names(rng)
    passages, qa = [], []
    for i in range(args.n):
        text, meta, facts = MAKERS[i % len(MAKERS)](rng, names)
        (q, *_), ans = facts[0]
        pid = f"p{i + 1:04d}"
        words = len(text.split())
        assert 40 <= words <= 120, (pid, words)
        passages.append({"id": pid, "text": text, "metadata": meta})
        qa.append({"question": q, "answer_passage_id": pid, "answer_contains": ans})
    # Each answer's name must occur in exactly one passage, so retrieval has one right answer.
    for p in passages:
        hits = [o["id"] for o in passages if p["metadata"]["name"] in o["text"]]
        assert hits == [p["id"]], (p["metadata"]["name"], hits)
    picked = sorted(rng.sample(range(len(qa)), args.questions))
    for i in picked:
        assert qa[i]["answer_contains"] in passages[i]["text"], qa[i]
    files = {
        "passages.jsonl": "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages),
        "questions.jsonl": "".join(json.dumps(qa[i], ensure_ascii=False) + "\n" for i in picked),
    }
    if args.check:
        for name, text in files.items():
            with open(os.path.join(args.out, name), encoding="utf-8") as f:
                if f.read() != text:
                    sys.exit("%s differs from what make_corpus.py generates (edited by hand, or "
                             "the generator changed without regenerating)" % name)
        print("corpus: %d passages, %d questions, identical to the generator's output"
              % (len(passages), len(picked)))
        return
    os.makedirs(args.out, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
