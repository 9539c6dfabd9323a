#!/usr/bin/python3
"""Writes a retrieval set whose questions paraphrase their passages (little word overlap).

Every passage states four facts about one place: what it is, a property, where it lies and its
age, each from a concept inventory; the concept combination of a passage is unique in the set.
Its question asks for the same four concepts in other words ("lighthouse" -> "beacon tower on the
shore", "was painted violet" -> "has a purple colour"), so a method that matches surface words
(hashing, BM25) sees almost nothing in common, while a method that knows meaning could find it.
A third of the phrasings share one content word with the passage form, so the overlap is low but
not zero. Deterministic for a seed (python3 stdlib only); used by tools/bench/retrieval_bench
(docs/BENCHMARKS.md), not committed.

Usage: make_paraphrase_set.py --out DIR [--n 400] [--questions 200] [--seed 5]
  -> DIR/passages.jsonl ({"id","text","metadata"}) and DIR/questions.jsonl
     ({"question","answer_passage_id"})
"""
import argparse
import json
import os
import random

# (passage form, [question forms]) per concept.
SUBJECTS = [
    ("lighthouse", ["beacon tower on the shore", "coastal signal light"]),
    ("stone bridge", ["crossing over the water", "masonry span across the stream"]),
    ("apple orchard", ["fruit grove", "grove of fruit trees"]),
    ("observatory", ["place for watching the stars", "telescope station"]),
    ("water mill", ["wheel that grinds grain in a stream", "grain works driven by a river"]),
    ("fishing harbour", ["port for trawlers", "anchorage used by fishermen"]),
    ("monastery", ["religious retreat", "cloister of monks"]),
    ("vineyard", ["wine estate", "grape farm"]),
    ("granite quarry", ["stone pit", "pit where rock is cut"]),
    ("theatre", ["playhouse", "stage for drama"]),
    ("public library", ["hall full of books", "book lending house"]),
    ("bakery", ["bread shop", "place that makes loaves"]),
    ("railway station", ["train stop", "depot where trains halt"]),
    ("canal", ["artificial waterway", "dug channel for barges"]),
    ("pine forest", ["evergreen woodland", "woods of conifers"]),
    ("glacier", ["ice field", "river of ice"]),
    ("covered market", ["bazaar under a roof", "indoor trading hall"]),
    ("boarding school", ["academy where pupils live", "residential college"]),
    ("hospital", ["clinic for the sick", "infirmary"]),
    ("museum", ["gallery of artefacts", "exhibition house"]),
    ("copper mine", ["pit for red metal ore", "underground metal diggings"]),
    ("windmill", ["sail-driven tower", "tower turned by the breeze"]),
    ("botanical garden", ["plant collection park", "park of rare flowers"]),
    ("brewery", ["beer works", "maker of ale"]),
    ("shipyard", ["boat building yard", "dock where vessels are made"]),
]
PROPERTIES = [
    ("was painted violet", ["has a purple colour", "is coloured purple"]),
    ("burned down in a great fire", ["was destroyed by flames", "was lost to a blaze"]),
    ("floods every spring", ["goes under water when the snow melts", "is inundated each thaw"]),
    ("employs four hundred workers", ["gives jobs to about 400 people", "has a staff of 400"]),
    ("was founded by sailors", ["was started by seamen", "owes its origin to mariners"]),
    ("closes during the winter", ["shuts in the cold months", "is not open when it snows"]),
    ("is guarded by a black dog", ["is watched over by a dark hound", "has a hound on watch"]),
    ("was moved stone by stone", ["was taken apart and rebuilt elsewhere", "was relocated piece by piece"]),
    ("appears on the town coin", ["is pictured on the local money", "is shown on currency"]),
    ("is lit by candles only", ["has no electric lamps", "uses wax lights alone"]),
    ("was won in a card game", ["changed hands over a bet at cards", "was gambled away"]),
    ("hosts a yearly chess match", ["holds an annual board game contest", "stages a chess contest each year"]),
    ("has a golden roof", ["is topped with gilded tiles", "wears a gilded covering"]),
    ("was hit by lightning twice", ["was struck by a bolt on two occasions", "took two thunderbolts"]),
    ("sells honey to the king", ["supplies the monarch with bee produce", "provides the crown with honey"]),
    ("is haunted by a drowned poet", ["has the ghost of a writer who died at sea", "is visited by a dead verse-maker"]),
    ("was built without nails", ["stands with no metal fasteners", "holds together with pegs alone"]),
    ("is owned by three sisters", ["belongs to a trio of siblings", "has female siblings as owners"]),
    ("smells of cinnamon", ["has a spicy sweet scent", "carries an aroma of spice bark"]),
    ("was painted by a famous artist", ["appears in a renowned painting", "was portrayed by a celebrated painter"]),
]
PLACES = [
    ("in the northern hills", ["up in the highlands of the north", "among the upland slopes up north"]),
    ("beside a salt marsh", ["next to brackish wetlands", "by tidal swamps"]),
    ("on a small island", ["on an isle", "surrounded by sea"]),
    ("at the edge of the desert", ["where the sand dunes begin", "by the arid wastes"]),
    ("in the capital city", ["in the seat of government", "in the largest metropolis"]),
    ("near the southern border", ["close to the frontier down south", "by the southern boundary"]),
    ("in a deep valley", ["in a gorge between mountains", "down in a ravine"]),
    ("on the eastern coast", ["by the shore to the east", "on the seaboard where the sun rises"]),
    ("beside a volcanic lake", ["by a crater pool", "next to water in an old caldera"]),
    ("in a fishing village", ["in a hamlet of fishermen", "in a small settlement of trawlermen"]),
    ("under a chalk cliff", ["below white bluffs", "beneath pale rock faces"]),
    ("in the old quarter", ["in the historic district", "among the ancient streets"]),
    ("at a mountain pass", ["where the road crosses the peaks", "on a col between summits"]),
    ("by a frozen river", ["next to an icy stream", "alongside iced-over water"]),
    ("in the western plains", ["on the flat grasslands to the west", "on prairie land out west"]),
]
ERAS = [
    ("built in the eighteenth century", ["dating from the 1700s", "about three hundred years old"]),
    ("opened last year", ["new since twelve months ago", "recently inaugurated"]),
    ("older than the kingdom itself", ["predating the realm", "more ancient than the monarchy"]),
    ("finished in 1920", ["completed after the Great War", "done a century ago"]),
    ("rebuilt after the war", ["reconstructed once the fighting ended", "restored following the conflict"]),
    ("medieval", ["from the Middle Ages", "dating to the age of knights"]),
    ("Roman in origin", ["started by the legions", "from the time of the Caesars"]),
    ("from the Victorian era", ["dating from the 1800s", "from the age of steam"]),
    ("about fifty years old", ["half a century in age", "put up around five decades back"]),
    ("built during the gold rush", ["made when prospectors flocked in", "from the time of the ore boom"]),
    ("as old as the cathedral", ["the same age as the great church", "contemporary with the minster"]),
    ("constructed by prisoners", ["put up by convicts", "raised with forced labour"]),
    ("designed by a child", ["planned by a young boy", "drawn up by a kid"]),
    ("completed in a single summer", ["finished within one warm season", "done in just three months"]),
    ("started during a famine", ["begun in a time of hunger", "launched while food was scarce"]),
    ("paid for by a lottery", ["funded with prize-draw money", "financed through a raffle"]),
]
FILLERS = [
    "Visitors usually arrive in the late afternoon.",
    "Local people tell many stories about it.",
    "A small path leads there from the road.",
    "It is mentioned in several old guidebooks.",
    "The weather there changes quickly.",
    "Tours are arranged by the regional office.",
]


def combos(n, rng):
    total = len(SUBJECTS) * len(PROPERTIES) * len(PLACES) * len(ERAS)
    if n > total:
        raise SystemExit(f"at most {total} passages")
    picked = rng.sample(range(total), n)
    for c in picked:
        c, e = divmod(c, len(ERAS))
        c, pl = divmod(c, len(PLACES))
        s, pr = divmod(c, len(PROPERTIES))
        yield s, pr, pl, e


def passage(s, pr, pl, e, rng):
    subj, prop, place, era = SUBJECTS[s][0], PROPERTIES[pr][0], PLACES[pl][0], ERAS[e][0]
    text = f"The {subj} {place} is {era}. It {prop}. " + " ".join(rng.sample(FILLERS, 2))
    return text


def question(s, pr, pl, e, rng):
    subj, prop = rng.choice(SUBJECTS[s][1]), rng.choice(PROPERTIES[pr][1])
    place, era = rng.choice(PLACES[pl][1]), rng.choice(ERAS[e][1])
    return f"Which {subj} {place}, {era}, {prop}?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    rows = list(combos(args.n, rng))
    with open(os.path.join(args.out, "passages.jsonl"), "w") as f:
        for i, (s, pr, pl, e) in enumerate(rows):
            doc = {"id": f"q{i:06d}", "text": passage(s, pr, pl, e, rng),
                   "metadata": {"subject": s, "era": e}}
            f.write(json.dumps(doc) + "\n")
    with open(os.path.join(args.out, "questions.jsonl"), "w") as f:
        for i in rng.sample(range(len(rows)), min(args.questions, len(rows))):
            q = {"question": question(*rows[i], rng), "answer_passage_id": f"q{i:06d}"}
            f.write(json.dumps(q) + "\n")


if __name__ == "__main__":
    main()
