"""The generated knowledge benchmark, version 2: fictional people, organisations, cities and products
no model can know, rendered as documents, and multiple-choice questions about them whose answers
cannot be guessed from the corpus's statistics.

Question types (each answerable from the documents named in its ``docs``):
- ``verbatim``: worded like the document's own sentence (a cloze: the sentence up to the answer);
- ``paraphrase``: the same fact asked in other words (memorising the string is not enough);
- ``two-hop``: a fact of the organisation a first fact points to (A works at B, B is in C: where is
  A's employer based?); the answer is never stated in A's own document.

What makes it hard to game (v1, engrain.documents.facts_v1, was answerable at 44% by a frequency prior):
- every value of an asked attribute is used equally often (to within one), so the corpus has no
  favourite city, employer or trade;
- the questions of one kind (split, type, attribute) come in **blocks of four that share one choice
  set**, each of the four the answer of one of them, at four different positions. Any rule that looks
  at the choices and not at what the question asks (the most frequent choice in the corpus, the longest
  choice, a position) is right exactly once per block: it scores chance. Every distractor is therefore
  a value the corpus uses, as often a distractor as an answer relative to its use;
- names are made of words used nowhere else, so no value hides inside another entity's name.

The entities of each kind are split in two halves: questions about the ``test`` half are the
benchmark (what ``--task facts`` scores); the ``train`` half's questions are for methods that learn
how to answer from questions about other entities. Every document is in the corpus.

The **shuffled-facts control** (``shuffled=True``) renders the same entities with the same styles and
sentence order, but every attribute's values permuted across the entities of its kind so that no
entity keeps its own: the same words and the same value frequencies, wrong facts. A method trained on
it and scored on the real questions shows what learning the corpus's surface gains without knowledge.

Random streams are seeded from strings ("facts-v2:SEED:world", ":render", ":split", ":questions"), so
they are independent of each other and of Python's hash seed.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from engrain.documents.corpus import Document

# v1's vocabulary and question templates (the same words and questions; what changed is how they are drawn)
from engrain.documents.facts_v1 import _CODAS, _ONSETS, _VOWELS, ASK, INDUSTRIES, KINDS, PROFESSIONS, REGIONS, TWO_HOP

VERSION = 2
SIZES = {"people": 32, "organisations": 16, "cities": 8, "products": 16}
ORG_SUFFIXES = ["Works", "Company", "Guild", "Foundry", "Cooperative"]
PRODUCT_SUFFIXES = ["One", "II", "Prime", "Deluxe", "Mark 3"]


@dataclass(frozen=True)
class Entity:
    kind: str  # person | organisation | city | product
    name: str
    attrs: dict


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"facts-v{VERSION}:{seed}:{stream}")


class _Words:
    """Made-up words, none used twice in a world."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def __call__(self) -> str:
        while True:
            w = "".join(self.rng.choice(part) for part in (_ONSETS, _VOWELS, _CODAS, _VOWELS, _CODAS)).capitalize()
            if w not in self.used and len(w) > 3:
                self.used.add(w)
                return w


def balanced(values: list, n: int, rng: random.Random) -> list:
    """``n`` draws from ``values``, each used n // len or n // len + 1 times, in a random order."""
    pool = list(values)
    rng.shuffle(pool)
    out = [pool[i % len(pool)] for i in range(n)]
    rng.shuffle(out)
    return out


def _how_many(pool: int, n: int) -> int:
    """How many values of a pool of ``pool`` to use for ``n`` entities: the most (at least 4) that divide n
    evenly, else the whole pool."""
    return next((k for k in range(min(pool, n), 3, -1) if n % k == 0), min(pool, n))


def _avoiding(values: list, forbidden: list, rng: random.Random) -> list:
    """``values`` reordered so that values[i] != forbidden[i] wherever a swap can make it so."""
    values = list(values)
    for i in range(len(values)):
        if values[i] != forbidden[i]:
            continue
        js = [j for j in range(len(values)) if values[j] != forbidden[i] and values[i] != forbidden[j]]
        if js:
            j = rng.choice(js)
            values[i], values[j] = values[j], values[i]
    return values


def make_world(seed: int = 0, people: int = 32, organisations: int = 16, cities: int = 8, products: int = 16) -> list[Entity]:
    rng = _rng(seed, "world")
    word = _Words(rng)
    city_names = [word() for _ in range(cities)]
    org_names = [f"{word()} {rng.choice(ORG_SUFFIXES)}" for _ in range(organisations)]
    person_names = [f"{word()} {word()}" for _ in range(people)]
    product_names = [f"{word()} {rng.choice(PRODUCT_SUFFIXES)}" for _ in range(products)]
    industries = rng.sample(INDUSTRIES, _how_many(len(INDUSTRIES), organisations))
    professions = rng.sample(PROFESSIONS, _how_many(len(PROFESSIONS), people))
    org_city = dict(zip(org_names, balanced(city_names, organisations, rng)))
    employer = balanced(org_names, people, rng)
    # a person's home town is never their employer's city: the two-hop answer is not in their own document
    hometown = _avoiding(balanced(city_names, people, rng), [org_city[e] for e in employer], rng)
    world = [Entity("city", c, {"region": rng.choice(REGIONS), "founded": rng.randrange(900, 1700)}) for c in city_names]
    world += [Entity("organisation", o, {"city": org_city[o], "industry": i, "founded": rng.randrange(1820, 2010)})
              for o, i in zip(org_names, balanced(industries, organisations, rng))]
    world += [Entity("person", p, {"employer": e, "hometown": h, "profession": article(pr), "born": rng.randrange(1940, 2000)})
              for p, e, h, pr in zip(person_names, employer, hometown, balanced(professions, people, rng))]
    world += [Entity("product", p, {"maker": m, "kind": k}) for p, m, k in
              zip(product_names, balanced(org_names, products, rng), balanced(KINDS, products, rng))]
    return world


def shuffle_facts(world: list[Entity], seed: int) -> list[Entity]:
    """The control world: each attribute's values permuted across the entities of its kind so that no
    entity keeps its own value (where its kind has another): same values, same counts, wrong facts."""
    rng = _rng(seed, "shuffled")
    out = {id(e): dict(e.attrs) for e in world}
    for kind in dict.fromkeys(e.kind for e in world):
        group = [e for e in world if e.kind == kind]
        for attr in group[0].attrs:
            true = [e.attrs[attr] for e in group]
            order = sorted(range(len(group)), key=lambda i: (str(true[i]), rng.random()))
            shift = max(true.count(v) for v in true)  # sorted by value, a shift past the largest run moves every value
            shift = shift if shift < len(group) else 0
            for pos, i in enumerate(order):
                out[id(group[i])][attr] = true[order[(pos + shift) % len(group)]]
    return [replace(e, attrs=out[id(e)]) for e in world]


# ---------------------------------------------------------------------------- documents

# Several styles per entity kind; {name} and the attributes fill them. Every sentence that states an
# asked attribute names the entity before it, so a verbatim question is that sentence cut at the answer;
# no asked value follows an article that would give it away ("an" before a vowel).
STYLES: dict[str, list[list[str]]] = {
    "person": [
        ["{name} is {profession}, born in {born}.", "{name} grew up in {hometown}.", "{name} works at {employer}."],
        ["Profile: {name}. Born {born}, raised in {hometown}.", "By trade, {name} is {profession}.", "These days {name} is employed by {employer}."],
        ["Asked about home, {name} always names {hometown}.", "{name} has worked as {profession} on the staff of {employer} for years.",
         "{name} was born in the year {born}."],
    ],
    "organisation": [
        ["{name} is a firm in {industry}, founded in {founded}.", "{name} is based in {city}."],
        ["Founded in {founded}, {name} has its headquarters in {city}.", "{name} works in {industry}."],
        ["The offices of {name} stand in {city}, and visitors often pass them.", "Since {founded}, {name} has worked in {industry}."],
    ],
    "city": [
        ["{name} is a town in {region}, founded around {founded}."],
        ["Settled in {founded}, {name} lies in {region}."],
    ],
    "product": [
        ["{name} is {a_kind} made by {maker}."],
        ["{name}, {a_kind}, is among the goods of {maker}."],
    ],
}


def render(entity: Entity, rng: random.Random) -> list[str]:
    """The entity's document as sentences, in one of its kind's styles, in a shuffled order. The draws do
    not depend on the attribute values, so the shuffled-facts world renders with the same styles and order."""
    sentences = list(rng.choice(STYLES[entity.kind]))
    rng.shuffle(sentences)
    fields = {"name": entity.name, **entity.attrs}
    if entity.kind == "product":
        fields["a_kind"] = article(entity.attrs["kind"])
    return [s.format(**fields) for s in sentences]


def cloze(sentences: list[str], name: str, value: str) -> str:
    """The document's own sentence stating ``value`` about ``name``, cut just before the value."""
    for s in sentences:
        at = s.find(value, s.find(name) + len(name)) if name in s else -1
        if at > 0:
            return s[:at].rstrip()
    raise ValueError(f"no sentence states {value!r} about {name!r}")


def documents(world: list[Entity], seed: int) -> tuple[list[Document], dict[str, list[str]]]:
    rng = _rng(seed, "render")
    sentences = {e.name: render(e, rng) for e in world}
    return [Document(f"{e.kind}:{e.name}", " ".join(sentences[e.name])) for e in world], sentences


# ---------------------------------------------------------------------------- questions

def split_entities(world: list[Entity], seed: int) -> dict[str, str]:
    """name -> "train" or "test": half of each kind's entities (the extra one of an odd count to test)."""
    rng, out = _rng(seed, "split"), {}
    for kind in dict.fromkeys(e.kind for e in world):
        names = [e.name for e in world if e.kind == kind]
        rng.shuffle(names)
        half = len(names) // 2
        out.update({n: "train" for n in names[:half]} | {n: "test" for n in names[half:]})
    return out


def _blocks(answers: list[str], rng: random.Random, n: int = 4) -> tuple[list[list[int]], list[int]]:
    """Question indices grouped into blocks of ``n`` with ``n`` different answers (the values with the
    most questions left first, so that as few as possible are left over), and the ones left over."""
    by_value: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(answers):
        by_value[a].append(i)
    for idx in by_value.values():
        rng.shuffle(idx)
    blocks = []
    while True:
        left = [v for v, idx in by_value.items() if idx]
        if len(left) < n:
            return blocks, [i for idx in by_value.values() for i in idx]
        rng.shuffle(left)
        left.sort(key=lambda v: -len(by_value[v]))
        blocks.append([by_value[v].pop() for v in left[:n]])


def _choices(rng: random.Random, answer: str, others: list[str], position: int) -> list[str]:
    others = list(others)
    rng.shuffle(others)
    return others[:position] + [answer] + others[position:]


def assign_choices(qs: list[dict], values: list[str], rng: random.Random, n: int = 4) -> None:
    """Give each question (with its ``value``) choices: in blocks of four sharing a choice set (the block's
    answers, at four different positions); a question left over gets distractors drawn from ``values``."""
    n = min(n, len(values))
    blocks, rest = _blocks([q["value"] for q in qs], rng, n)
    for block in blocks:
        answers = [qs[i]["value"] for i in block]
        for i, position in zip(block, rng.sample(range(n), n)):
            q = qs[i]
            q["choices"] = _choices(rng, q["value"], [a for a in answers if a != q["value"]], position)
    for i in rest:
        q = qs[i]
        q["choices"] = _choices(rng, q["value"], rng.sample([v for v in values if v != q["value"]], n - 1), rng.randrange(n))
    for q in qs:
        q["answer"] = q["choices"].index(q.pop("value"))


def make_questions(world: list[Entity], sentences: dict[str, list[str]], seed: int = 0) -> list[dict]:
    """Questions about ``world`` (``sentences``: each entity's document), each with its ``split``."""
    rng = _rng(seed, "questions")
    by_name = {e.name: e for e in world}
    split = split_entities(world, seed)
    groups: dict[tuple, list[dict]] = defaultdict(list)  # (split, type, attribute) -> questions sharing choice sets
    values: dict[str, set] = defaultdict(set)  # attribute -> every value the corpus uses
    for e in world:
        for attr, value in e.attrs.items():
            values[attr].add(str(value))
        doc = f"{e.kind}:{e.name}"
        for (kind, attr), para in ASK.items():
            if e.kind == kind:
                value = str(e.attrs[attr])
                for qtype, text in (("verbatim", cloze(sentences[e.name], e.name, value)), ("paraphrase", para.format(name=e.name))):
                    groups[split[e.name], qtype, attr].append({"question": text, "value": value, "docs": [doc], "type": qtype})
        for kind, first, second, text in TWO_HOP:
            if e.kind == kind:
                bridge = by_name[e.attrs[first]]
                groups[split[e.name], "two-hop", second].append({"question": text.format(name=e.name), "value": str(bridge.attrs[second]),
                                                                 "docs": [doc, f"{bridge.kind}:{bridge.name}"], "type": "two-hop"})
    pools = {"maker": "employer"}  # makers and employers are both organisations
    out = []
    for (part, _, attr), qs in groups.items():
        pool = sorted(values[attr] | values.get(pools.get(attr, attr), set()))
        assign_choices(qs, pool, rng)
        out += [{**q, "split": part} for q in qs]
    order = {doc: i for i, doc in enumerate(f"{e.kind}:{e.name}" for e in world)}
    out.sort(key=lambda q: order[q["docs"][0]])  # stable: each entity's questions together, in world order
    return out


@dataclass(frozen=True)
class Benchmark:
    documents: list[Document]
    questions: list[dict]  # the test half's: the benchmark
    train_questions: list[dict]  # the train half's
    control: list[Document]  # the shuffled-facts corpus (the same ids and words, wrong facts)


def build(seed: int = 0, **sizes) -> Benchmark:
    world = make_world(seed, **{**SIZES, **sizes})
    docs, sentences = documents(world, seed)
    questions = make_questions(world, sentences, seed)
    control, _ = documents(shuffle_facts(world, seed), seed)
    return Benchmark(docs, [q for q in questions if q["split"] == "test"], [q for q in questions if q["split"] == "train"], control)


def generate(seed: int = 0, **sizes) -> tuple[list[Document], list[dict]]:
    """(documents, every question as a JSON-ready dict with its ``split``) of the world drawn with ``seed``."""
    b = build(seed, **sizes)
    return b.documents, b.train_questions + b.questions


def write(folder: str | Path, seed: int = 0, **sizes) -> dict[str, Path]:
    """The benchmark as files, in the formats `--task qa --corpus --questions` reads: ``corpus.jsonl``,
    ``questions.jsonl`` (the test half), ``train_questions.jsonl``, ``control_corpus.jsonl`` (shuffled
    facts) and ``manifest.json`` (version, seed, sizes, counts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    b = build(seed, **sizes)
    paths = {name: folder / f"{name}.jsonl" for name in ("corpus", "questions", "train_questions", "control_corpus")}
    for name, rows in (("corpus", b.documents), ("control_corpus", b.control)):
        paths[name].write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in rows))
    for name, rows in (("questions", b.questions), ("train_questions", b.train_questions)):
        paths[name].write_text("".join(json.dumps(q) + "\n" for q in rows))
    manifest = {"benchmark": f"facts v{VERSION}", "seed": seed, "sizes": {**SIZES, **sizes}, "documents": len(b.documents),
                "questions": len(b.questions), "train_questions": len(b.train_questions)}
    paths["manifest"] = folder / "manifest.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    return paths
