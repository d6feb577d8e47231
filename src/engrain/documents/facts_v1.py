"""The first version of the generated knowledge benchmark (`--task facts-v1[:SEED]`), kept unchanged so
that the records made with it (docs/results/v1) still mean what they meant. Superseded by
engrain.documents.facts (v2): here attribute values are drawn independently (skewed), distractors
uniformly from every value of their type, so a frequency prior answers about 44% of the questions
(chance 25%), and some two-hop answers are stated in the question's first document.

Fictional people, organisations, cities and products with attributes, rendered as documents in
several styles, and multiple-choice questions about them (verbatim clozes, paraphrases, two-hop).
Deterministic by seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from engrain.documents.corpus import Document

_ONSETS = "b br c d dr f g gr h k l m n p qu r s st t th v w z".split()
_VOWELS = "a e i o u ae ei io ou".split()
_CODAS = "l n r s th x nd rn st".split() + [""] * 4

PROFESSIONS = ["glassblower", "cartographer", "beekeeper", "clockmaker", "translator", "surveyor", "luthier", "archivist"]
INDUSTRIES = ["shipbuilding", "textiles", "ceramics", "optics", "printing", "brewing", "rope making", "lamp making"]
KINDS = ["lantern", "bicycle", "compass", "kettle", "typewriter", "telescope", "loom", "barometer"]
REGIONS = ["the northern marshes", "the eastern hills", "the salt coast", "the river valley", "the high plateau", "the lake district"]


@dataclass
class Entity:
    kind: str  # person | organisation | city | product
    name: str
    attrs: dict


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(part) for part in (_ONSETS, _VOWELS, _CODAS, _VOWELS, _CODAS)).capitalize()


def _names(rng: random.Random, n: int, make) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = make()
        if name not in out:
            out.append(name)
    return out


def make_world(seed: int = 0, people: int = 24, organisations: int = 8, cities: int = 6, products: int = 8) -> list[Entity]:
    rng = random.Random(seed)
    city_names = _names(rng, cities, lambda: _word(rng))
    org_names = _names(rng, organisations, lambda: f"{_word(rng)} {rng.choice(['Works', 'Company', 'Guild', 'Foundry', 'Cooperative'])}")
    person_names = _names(rng, people, lambda: f"{_word(rng)} {_word(rng)}")
    product_names = _names(rng, products, lambda: f"{_word(rng)} {rng.choice(['One', 'II', 'Prime', 'Deluxe', 'Mark 3'])}")
    world = [Entity("city", c, {"region": rng.choice(REGIONS), "founded": rng.randrange(900, 1700)}) for c in city_names]
    world += [Entity("organisation", o, {"city": rng.choice(city_names), "industry": rng.choice(INDUSTRIES),
                                         "founded": rng.randrange(1820, 2010)}) for o in org_names]
    world += [Entity("person", p, {"employer": rng.choice(org_names), "hometown": rng.choice(city_names),
                                   "profession": rng.choice(PROFESSIONS), "born": rng.randrange(1940, 2000)}) for p in person_names]
    world += [Entity("product", p, {"maker": rng.choice(org_names), "kind": rng.choice(KINDS)}) for p in product_names]
    return world


# ---------------------------------------------------------------------------- documents

# Several styles per entity kind; {name} and the attributes fill them. Every sentence that states an
# asked attribute names the entity before it, so a verbatim question is that sentence cut at the answer.
STYLES: dict[str, list[list[str]]] = {
    "person": [
        ["{name} is a {profession} born in {born}.", "{name} grew up in {hometown}.", "{name} works at {employer}."],
        ["Profile: {name}. Born {born}, raised in {hometown}.", "By trade, {name} is a {profession}.", "These days {name} is employed by {employer}."],
        ["Asked about home, {name} always names {hometown}.", "{name}, a {profession}, has been on the staff of {employer} for years.", "{name} was born in the year {born}."],
    ],
    "organisation": [
        ["{name} is a {industry} firm founded in {founded}.", "{name} is based in {city}."],
        ["Founded in {founded}, {name} has its headquarters in {city}.", "{name} works in {industry}."],
        ["The offices of {name} stand in {city}, and visitors often pass them.", "Since {founded}, {name} has worked in {industry}."],
    ],
    "city": [
        ["{name} is a town in {region}, founded around {founded}."],
        ["Settled in {founded}, {name} lies in {region}."],
    ],
    "product": [
        ["{Name} is a {kind} made by {maker}."],
        ["{Name}, a {kind}, is among the goods of {maker}."],
    ],
}


def render(entity: Entity, rng: random.Random) -> list[str]:
    """The entity's document as sentences, in one of its kind's styles, in a shuffled order."""
    sentences = list(rng.choice(STYLES[entity.kind]))
    rng.shuffle(sentences)
    fields = {"name": entity.name, "Name": entity.name[0].upper() + entity.name[1:], **entity.attrs}
    return [s.format(**fields) for s in sentences]


def cloze(sentences: list[str], name: str, value: str) -> str:
    """The document's own sentence stating ``value`` about ``name``, cut just before the value."""
    for s in sentences:
        at = s.find(value, s.lower().find(name.lower()) + len(name)) if name.lower() in s.lower() else -1
        if at > 0:
            return s[:at].rstrip()
    raise ValueError(f"no sentence states {value!r} about {name!r}")


# ---------------------------------------------------------------------------- questions

# (kind, attribute) -> the paraphrased question (the verbatim one is cut from the document)
ASK = {
    ("person", "employer"): "Which organisation employs {name}?",
    ("person", "hometown"): "What is the home town of {name}?",
    ("person", "profession"): "What does {name} do for a living?",
    ("organisation", "city"): "Where does {name} have its headquarters?",
    ("organisation", "industry"): "What line of business is {name} in?",
    ("product", "maker"): "Which organisation produces {name}?",
}
# two-hop: (kind, first attribute, attribute of the entity it names, question)
TWO_HOP = [
    ("person", "employer", "city", "In which town is the employer of {name} based?"),
    ("person", "employer", "industry", "What is the trade of the organisation {name} works for?"),
    ("product", "maker", "city", "In which town is the maker of {name} based?"),
]


def _mc(rng: random.Random, answer: str, pool: list[str], n: int = 4) -> tuple[list[str], int]:
    others = sorted({p for p in pool if p != answer})
    choices = rng.sample(others, min(n - 1, len(others))) + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def make_questions(world: list[Entity], sentences: dict[str, list[str]], seed: int = 0) -> list[dict]:
    """Questions about ``world``; ``sentences`` maps each entity's name to its document's sentences."""
    rng = random.Random(seed + 1)
    by_name = {e.name: e for e in world}
    names = lambda kind: [e.name for e in world if e.kind == kind]  # noqa: E731
    # the distractors of an attribute: every value of its type
    pools = {"employer": names("organisation"), "maker": names("organisation"), "hometown": names("city"), "city": names("city"),
             "profession": PROFESSIONS, "industry": INDUSTRIES}
    out = []
    for e in world:
        fields = {"name": e.name, "Name": e.name[0].upper() + e.name[1:], **e.attrs}
        doc = f"{e.kind}:{e.name}"
        for (kind, attr), para in ASK.items():
            if e.kind != kind:
                continue
            value = str(e.attrs[attr])
            for qtype, text in (("verbatim", cloze(sentences[e.name], e.name, value)), ("paraphrase", para.format(**fields))):
                choices, answer = _mc(rng, value, pools[attr])
                out.append({"question": text, "choices": choices, "answer": answer, "docs": [doc], "type": qtype})
        for kind, first, second, text in TWO_HOP:
            if e.kind != kind:
                continue
            bridge = by_name[e.attrs[first]]
            choices, answer = _mc(rng, str(bridge.attrs[second]), pools[second])
            out.append({"question": text.format(**fields), "choices": choices, "answer": answer,
                        "docs": [doc, f"{bridge.kind}:{bridge.name}"], "type": "two-hop"})
    return out


def generate(seed: int = 0, **sizes) -> tuple[list[Document], list[dict]]:
    """(documents, questions as JSON-ready dicts) of a world drawn with ``seed``."""
    world = make_world(seed, **sizes)
    rng = random.Random(seed + 2)
    sentences = {e.name: render(e, rng) for e in world}
    docs = [Document(f"{e.kind}:{e.name}", " ".join(sentences[e.name])) for e in world]
    return docs, make_questions(world, sentences, seed)


def write(folder: str | Path, seed: int = 0, **sizes) -> tuple[Path, Path]:
    """Write ``corpus.jsonl`` and ``questions.jsonl`` under ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs, questions = generate(seed, **sizes)
    corpus, qa = folder / "corpus.jsonl", folder / "questions.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
    qa.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return corpus, qa
