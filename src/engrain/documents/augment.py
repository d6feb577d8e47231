"""Augmented training corpora: more renderings of the same facts, so that what is learnt from them can be
used, not only recited (Allen-Zhu & Li, "Physics of Language Models 3.1": without augmentation knowledge
is memorised but not extractable; Yang et al., "Synthetic continued pretraining": texts relating the
entities of a corpus; Balesni et al.: two facts learnt in one sequence make a two-hop question
answerable).

Everything here reads only the documents' text (never a generator's structured world), so it works on
any corpus a user brings. An augmentation is a comma-separated list of ``KIND[:N]``:

    permute:N       model-free: N other orders of each document's sentences
    rewindow:N      model-free: the corpus's sentences, in corpus order, cut into windows of a document's
                    typical length at N offsets (chunk boundaries that fall elsewhere)
    link:N          model-free: each document followed by up to N documents it shares a name with (rarest
                    name first), in one text: the facts a two-hop question joins, in one sequence
    paraphrase:N    generated: N rewritings of each document in other words
    qa:N            generated: N sets of questions with answers about each document
    implications:N  generated: N lists of what follows from each document
    entities:N      generated (EntiGraph): N texts per document on how two of its names relate, one of
                    them from a linked document where there is one

The generated kinds take a generator model (default: the model being trained) and use few-shot prompts
with a worked example, batched KV-cached sampling (engrain.forward.sample_with_topk), a cheap
faithfulness filter (a text naming a capitalised name or a number its sources do not contain is
dropped) and de-duplication. The result is the original documents followed by the new texts, with a
manifest (what was made, how many texts were kept and dropped, generated tokens/s, seconds), cached
under $ENGRAIN_CACHE/augment by a hash of the corpus, the kinds, the seed and the generator.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from engrain.documents.corpus import Document
from engrain.errors import EngrainError

VERSION = 1
MODEL_FREE = ("permute", "rewindow", "link")
GENERATED = ("paraphrase", "qa", "implications", "entities")
KINDS = MODEL_FREE + GENERATED


@dataclass(frozen=True)
class Kind:
    name: str
    n: int

    def __str__(self) -> str:
        return f"{self.name}:{self.n}"


def parse(spec: str | None) -> list[Kind]:
    """``"permute:4,link"`` -> [Kind("permute", 4), Kind("link", 1)]; one-line errors for anything else."""
    out: list[Kind] = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, _, n = part.partition(":")
        if name not in KINDS:
            raise EngrainError(f"--augment: unknown kind {name!r}; choose from {', '.join(KINDS)} (each KIND or KIND:N)")
        if n and not (n.isdigit() and int(n) >= 1):
            raise EngrainError(f"--augment {part}: N must be an integer >= 1")
        if any(k.name == name for k in out):
            raise EngrainError(f"--augment names {name} twice")
        out.append(Kind(name, int(n or 1)))
    return out


def needs_generator(kinds: list[Kind]) -> bool:
    return any(k.name in GENERATED for k in kinds)


def slug(kinds: list[Kind]) -> str:
    """A short tag for run names: ``permute4-link1``."""
    return "-".join(f"{k.name}{k.n}" for k in kinds)


# ---------------------------------------------------------------------------- text analysis

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")
_SPAN = re.compile(r"[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Words that start sentences without naming anything.
_STOP = set("""a an the this that these those it its he she they we i you his her their our my your there here in on at by
for from to of with as since after before when while if so but and or yet then now today also born founded settled asked profile
many some most each every one two three all both such what which who where why how profile however later yes no""".split())


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def _opener(word: str) -> bool:
    """Whether a capitalised word that starts a sentence is likely an ordinary word, not a name."""
    w = word.lower()
    return w in _STOP or w.endswith(("ed", "ing", "ly"))


def names(text: str, initial: bool = True) -> set[str]:
    """Capitalised spans that name something. A span that starts a sentence loses its first word when that
    word is a common opener ("Founded in 1920, Rioxaend Cooperative" names only "Rioxaend Cooperative");
    a single capitalised word that starts a sentence ("Dreust is a town") counts only with ``initial``
    (it may be an ordinary word: the faithfulness filter leaves it out)."""
    out = set()
    for sentence in sentences(text):
        for m in _SPAN.finditer(sentence):
            words = m.group(0).split()
            if m.start() == 0 or sentence[: m.start()].strip() in ('"', "'", "-", "*", "Q:", "A:"):
                if _opener(words[0]) or (len(words) == 1 and not initial):
                    words = words[1:]
            if words:
                out.add(" ".join(words))
    return out


def numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(text))


def faithful(text: str, source: str) -> bool:
    """Whether every name and number of ``text`` occurs in ``source`` (the cheap filter of generated texts)."""
    return all(n in source for n in names(text, initial=False)) and all(n in source for n in numbers(text))


def clozes(text: str) -> list[tuple[str, str]]:
    """(the sentence up to a name or number it states, " " + the rest of the sentence) for each name and number
    that follows at least two words of its sentence."""
    out = []
    for sentence in sentences(text):
        cuts = {sentence.find(n) for n in names(sentence)} | {m.start() for m in _NUMBER.finditer(sentence)}
        for at in sorted(c for c in cuts if c > 0):
            prompt = sentence[:at].rstrip()
            if len(prompt.split()) >= 2:
                out.append((prompt, " " + sentence[at:]))
    return out


# ---------------------------------------------------------------------------- model-free kinds


def _rng(seed: int, *parts) -> random.Random:
    return random.Random(":".join(["augment", str(seed), *map(str, parts)]))


def permute(docs: list[Document], n: int, seed: int) -> list[tuple[str, str]]:
    """(source id, text): up to ``n`` other orders of each document's sentences (fewer where it has fewer)."""
    out = []
    for d in docs:
        ss = sentences(d.text)
        if len(ss) < 2:
            continue
        rng, seen = _rng(seed, "permute", d.id), {tuple(ss)}
        for _ in range(n * 10):
            if len(seen) > n:
                break
            order = list(ss)
            rng.shuffle(order)
            if tuple(order) not in seen:
                seen.add(tuple(order))
                out.append((d.id, " ".join(order)))
    return out


def rewindow(docs: list[Document], n: int, seed: int) -> list[tuple[str, str]]:
    """The corpus's sentences in order, cut into windows of the median document's sentence count (at
    least 2) starting at ``n`` offsets spread over a window: boundaries that fall inside documents."""
    stream = [(d.id, s) for d in docs for s in sentences(d.text)]
    counts = sorted(len(sentences(d.text)) for d in docs)
    w = max(2, counts[len(counts) // 2])
    out = []
    for j in range(1, n + 1):
        start = (j * w) // (n + 1) or j
        for i in range(start, len(stream) - 1, w):
            window = stream[i : i + w]
            out.append((window[0][0], " ".join(s for _, s in window)))
    return out


def links(docs: list[Document], n: int) -> dict[str, list[str]]:
    """Each document's partners: up to ``n`` other documents it shares a name with, the rarest shared name
    first (a name in many documents links little), ties in corpus order."""
    doc_names = {d.id: names(d.text) for d in docs}
    df = Counter(name for ns in doc_names.values() for name in ns)
    where = defaultdict(list)
    for d in docs:
        for name in doc_names[d.id]:
            where[name].append(d.id)
    order = {d.id: i for i, d in enumerate(docs)}
    out = {}
    for d in docs:
        best: dict[str, int] = {}
        for name in doc_names[d.id]:
            for other in where[name]:
                if other != d.id:
                    best[other] = min(best.get(other, 1 << 30), df[name])
        out[d.id] = sorted(best, key=lambda o: (best[o], order[o]))[:n]
    return out


def link(docs: list[Document], n: int, seed: int) -> list[tuple[str, str]]:
    text, partners = {d.id: d.text for d in docs}, links(docs, n)
    return [(d.id, text[d.id] + "\n\n" + text[o]) for d in docs for o in partners[d.id]]


# ---------------------------------------------------------------------------- generated kinds

_EXAMPLE = ("Mira Tolland was born in 1962. She trained as a nurse in Oakridge and now works at Bellow Mills, "
            "which makes paper.")
PROMPTS = {
    "paraphrase": ("Rewrite each text in other words. Keep every name and number.\n\nText: " + _EXAMPLE +
                   "\nRewrite: Bellow Mills, a paper maker, employs Mira Tolland, who was born in 1962 and learned nursing in "
                   "Oakridge.\n\nText: {text}\nRewrite:"),
    "qa": ("Write questions about each text, each with its answer.\n\nText: " + _EXAMPLE +
           "\nQ: When was Mira Tolland born?\nA: Mira Tolland was born in 1962.\nQ: Where does Mira Tolland work?\n"
           "A: Mira Tolland works at Bellow Mills.\nQ: What does Bellow Mills make?\nA: Bellow Mills makes paper.\n\n"
           "Text: {text}\nQ:"),
    "implications": ("List what follows from each text.\n\nText: " + _EXAMPLE +
                     "\nImplications:\n- Bellow Mills employs a nurse, Mira Tolland.\n- Mira Tolland learned her trade in "
                     "Oakridge.\n- A paper maker, Bellow Mills, has a nurse on its staff.\n\nText: {text}\nImplications:\n-"),
    "entities": ("Explain how two things named in the texts are related, using only the texts.\n\nText: " + _EXAMPLE +
                 "\nHow Mira Tolland and Bellow Mills are related: Mira Tolland, born in 1962, works at Bellow Mills, the "
                 "paper maker; she is a nurse there.\n\nText: {text}\nHow {a} and {b} are related:"),
}
_LEADS = {"qa": "Q:", "implications": "-", "paraphrase": "", "entities": "{a} and {b}:"}


def generation_requests(docs: list[Document], kind: Kind, seed: int) -> list[tuple[str, str, str, str]]:
    """(source id, prompt, lead, source text) per text to generate: ``lead`` starts the kept text (the
    prompt's last words, so that a question list reads "Q: ..."), the source text is what the filter checks."""
    out = []
    if kind.name == "entities":
        text, partners = {d.id: d.text for d in docs}, links(docs, kind.n)
        for d in docs:
            rng = _rng(seed, "entities", d.id)
            own = sorted(names(d.text))
            for j in range(kind.n):
                other = partners[d.id][j] if j < len(partners[d.id]) else None
                source = text[d.id] + ("\n" + text[other] if other else "")
                pool = sorted(names(text[other]) - set(own)) if other else own
                if not own or not pool:
                    continue
                a = rng.choice(own)
                b = rng.choice([p for p in pool if p != a] or pool)
                if a == b:
                    continue
                prompt = PROMPTS["entities"].format(text=source, a=a, b=b)
                out.append((d.id, prompt, _LEADS["entities"].format(a=a, b=b), source))
        return out
    for d in docs:
        for _ in range(kind.n):
            out.append((d.id, PROMPTS[kind.name].format(text=d.text), _LEADS[kind.name], d.text))
    return out


def clean(kind: str, lead: str, generated: str) -> str:
    """The kept part of a generation: up to the first blank line or the next "Text:", whole lines of Q/A
    pairs or list items, the lead put back."""
    text = re.split(r"\n\s*\n|\nText:", generated, maxsplit=1)[0]
    if kind == "qa":  # complete Q/A pairs only
        lines = [ln.strip() for ln in ("Q:" + text).splitlines() if ln.strip()]
        pairs = [f"{q}\n{a}" for q, a in zip(lines[::2], lines[1::2]) if q.startswith("Q:") and a.startswith("A:") and len(a) > 3]
        return "\n".join(pairs)
    if kind == "implications":
        items = [ln.strip() for ln in ("-" + text).splitlines() if ln.strip().startswith("-") and len(ln.strip()) > 3]
        return "\n".join(items)
    text = text.strip()
    return f"{lead} {text}".strip() if kind == "entities" else text


def generate_texts(lm, prompts: list[str], max_new_tokens: int, temperature: float, seed: int, batch_size: int = 8):
    """Sampled continuations of ``prompts`` (one seeded generator per prompt: independent of the batch size),
    and how many tokens were generated."""
    import torch

    from engrain.forward import sample_by_length

    tok = lm.tokenizer
    bos = tok("", add_special_tokens=True)["input_ids"]
    ids = [bos + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    gens = [torch.Generator().manual_seed(_rng(seed, "generate", i, p).getrandbits(62)) for i, p in enumerate(prompts)]
    with torch.autocast(lm.device.type, dtype=lm.dtype, enabled=lm.dtype != torch.float32):
        out = sample_by_length(lm.model, ids, max_new_tokens, tok.eos_token_id, tok.pad_token_id, 1, temperature, gens, batch_size)
    texts = [tok.decode(new, skip_special_tokens=True) for new, _, _ in out]
    tokens = sum(len(new) for new, _, _ in out)
    return texts, tokens


# ---------------------------------------------------------------------------- the augmented corpus


def corpus_digest(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.id, d.text]).encode())
    return h.hexdigest()[:24]


def augment(docs: list[Document], spec: str, seed: int = 0, generator=None, generator_id: str | None = None,
            gen_tokens: int = 96, temperature: float = 0.7, batch_size: int = 8) -> tuple[list[Document], dict]:
    """(the original documents followed by the new texts, a manifest). ``generator``: a loaded model
    (engrain.models.LoadedModel) for the generated kinds, or a callable returning one, called only on a
    cache miss (then ``generator_id`` names it). The result is cached by the corpus, the kinds, the seed
    and the generator's identity (its files, precision and device) and settings."""
    from engrain.cache import cached

    kinds = parse(spec)
    if not kinds:
        return list(docs), {}
    key = ["augment", VERSION, corpus_digest(docs), [str(k) for k in kinds], seed]
    if needs_generator(kinds):
        if generator is None:
            raise EngrainError(f"--augment {spec} generates text: it needs a generator model")
        key += [generator_id or identity(generator), gen_tokens, temperature]
    hit = [True]

    def compute() -> dict:
        hit[0] = False
        lm = generator() if callable(generator) else generator
        return _augment(docs, kinds, seed, lm, gen_tokens, temperature, batch_size)

    out = cached("augment", key, compute)
    new = [Document(d["id"], d["text"]) for d in out["documents"]]
    manifest = {**out["manifest"], "cache_hit": hit[0], "key": hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]}
    return list(docs) + new, manifest


def identity(lm) -> str:
    """A loaded generator's identity in the cache key: its files, precision and device type."""
    from engrain.cache import model_fingerprint

    return f"{model_fingerprint(lm.source)}:{lm.dtype}:{lm.device.type}"


def lazy_generator(name: str, precision: str = "auto", device: str = "auto"):
    """(a callable that loads the model ``name``, its identity for the cache key): the model loads only on a miss."""
    from engrain.cache import model_fingerprint
    from engrain.models import load_model, resolve_device, resolve_dtype, resolve_source

    dev = resolve_device(device)
    ident = f"{model_fingerprint(str(resolve_source(name)[1]))}:{resolve_dtype(precision, dev)}:{dev.type}"
    return (lambda: load_model(name, precision, str(dev))), ident


def for_training(cfg, docs: list[Document], lm) -> tuple[list[Document], dict]:
    """A run's augmented corpus: generated by the run's own (base) model unless --generator names another."""
    generator = generator_id = None
    if needs_generator(parse(cfg.augment)):
        if cfg.generator in (None, cfg.model):
            generator = lm
        else:
            generator, generator_id = lazy_generator(cfg.generator, cfg.precision, str(lm.device))
    return augment(docs, cfg.augment, cfg.seed, generator, generator_id, cfg.augment_tokens, cfg.gen_temperature, cfg.batch_size)


def _augment(docs, kinds, seed, lm, gen_tokens, temperature, batch_size) -> dict:
    t0 = time.perf_counter()
    made: dict[str, dict] = {}
    rows, seen = [], {" ".join(d.text.split()).lower() for d in docs}
    gen_seconds, gen_tokens_total = 0.0, 0
    for kind in kinds:
        if kind.name in MODEL_FREE:
            texts = {"permute": permute, "rewindow": rewindow, "link": link}[kind.name](docs, kind.n, seed)
            dropped = 0
        else:
            requests = generation_requests(docs, kind, seed)
            t = time.perf_counter()
            raw, n_tokens = generate_texts(lm, [r[1] for r in requests], gen_tokens, temperature, seed, batch_size)
            gen_seconds += time.perf_counter() - t
            gen_tokens_total += n_tokens
            texts, dropped = [], 0
            for (source_id, _, lead, source), g in zip(requests, raw):
                text = clean(kind.name, lead, g)
                if len(text.split()) >= 4 and faithful(text, source):
                    texts.append((source_id, text))
                else:
                    dropped += 1
        kept = 0
        for j, (source_id, text) in enumerate(texts):
            norm = " ".join(text.split()).lower()
            if norm in seen:
                dropped += 1
                continue
            seen.add(norm)
            rows.append({"id": f"{source_id}#{kind.name}{j}", "text": text})
            kept += 1
        made[kind.name] = {"n": kind.n, "texts": kept, "dropped": dropped}
    seconds = time.perf_counter() - t0
    words = lambda texts: sum(len(t.split()) for t in texts)  # noqa: E731
    manifest = {"version": VERSION, "kinds": [str(k) for k in kinds], "seed": seed, "documents": len(docs), "new_texts": len(rows),
                "kinds_made": made, "source_words": words(d.text for d in docs), "new_words": words(r["text"] for r in rows),
                "seconds": seconds}
    if lm is not None:
        manifest["generator"] = {"model": lm.name, "source": lm.source, "dtype": str(lm.dtype).removeprefix("torch."),
                                 "device": lm.device.type, "gen_tokens": gen_tokens, "temperature": temperature,
                                 "generated_tokens": gen_tokens_total, "seconds": gen_seconds,
                                 "generated_tokens_per_s": gen_tokens_total / max(gen_seconds, 1e-9)}
    return {"documents": rows, "manifest": manifest}


def write(folder: str | Path, docs: list[Document], manifest: dict) -> dict[str, Path]:
    """``corpus.jsonl`` (every document, originals first: a corpus `--corpus` / `--train-data` reads) and ``manifest.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": folder / "corpus.jsonl", "manifest": folder / "manifest.json"}
    tmp = paths["corpus"].with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs))
    tmp.replace(paths["corpus"])
    paths["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    return paths


__all__ = ["KINDS", "Kind", "augment", "faithful", "link", "links", "names", "parse", "permute", "rewindow", "write"]
