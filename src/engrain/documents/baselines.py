"""What multiple-choice questions about documents can be answered with, without knowing any fact: the
rows every documents table needs beside the model's, and gap recovery, the number the literature
compares (how much of the way from the base model to open book a closed-book model goes).

- ``chance``: the mean of 1 / number of choices;
- ``corpus_prior``: pick the choice that occurs most often in the corpus (whole words, case-sensitive),
  a rule a model that has read the corpus can learn without learning any fact;
- ``longest_choice``: pick the longest choice (in characters).

Pure Python: no model, milliseconds.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

from engrain.documents.corpus import Document, Question


def corpus_counts(documents: Sequence[Document], phrases: set[str]) -> Counter:
    """How often each phrase occurs in the documents as whole words."""
    text = "\n".join(d.text for d in documents)
    return Counter({p: len(re.findall(rf"(?<!\w){re.escape(p)}(?!\w)", text)) for p in phrases})


def pick(choices: Sequence[str], key: Callable[[str], float]) -> int:
    """The index of the choice with the largest ``key``; ties go to the alphabetically first choice, so the
    rule depends on the choices and never on where the answer was put."""
    best = max(choices, key=lambda c: (key(c), [-ord(ch) for ch in c]))
    return choices.index(best)


def corpus_prior(questions: Sequence[Question], documents: Sequence[Document]) -> list[int]:
    counts = corpus_counts(documents, {c for q in questions for c in q.choices})
    return [pick(q.choices, counts.__getitem__) for q in questions]


def longest_choice(questions: Sequence[Question]) -> list[int]:
    return [pick(q.choices, len) for q in questions]


def rule_accuracy(questions: Sequence[Question], predicted: Sequence[int]) -> dict:
    """Accuracy of predicted choice indices, overall and per question type."""

    def acc(kind: str | None) -> float:
        hits = [p == q.answer for q, p in zip(questions, predicted) if kind is None or q.type == kind]
        return sum(hits) / len(hits)

    return {"accuracy": acc(None), "by_type": {t: {"accuracy": acc(t)} for t in sorted({q.type for q in questions})}}


def chance(questions: Sequence[Question]) -> dict:
    def acc(kind: str | None) -> float:
        qs = [q for q in questions if kind is None or q.type == kind]
        return sum(1 / len(q.choices) for q in qs) / len(qs)

    return {"accuracy": acc(None), "by_type": {t: {"accuracy": acc(t)} for t in sorted({q.type for q in questions})}}


RULES: dict[str, Callable] = {
    "corpus_prior": lambda qs, docs: corpus_prior(qs, docs),
    "longest_choice": lambda qs, docs: longest_choice(qs),
}


def baselines(questions: Sequence[Question], documents: Sequence[Document]) -> dict:
    """{"chance": ..., "corpus_prior": ..., "longest_choice": ...}, each {"accuracy", "by_type"}."""
    return {"chance": chance(questions), **{name: rule_accuracy(questions, rule(questions, documents)) for name, rule in RULES.items()}}


def gap_recovery(closed: dict, base: dict, book: dict) -> dict:
    """``(closed - base) / (open - base)`` overall and per question type, from three {"accuracy", "by_type"}
    dicts; None where open book is no better than the base model (no gap to recover)."""

    def share(c: float, b: float, o: float) -> float | None:
        return (c - b) / (o - b) if o - b > 1e-9 else None

    types = set(closed.get("by_type", {})) & set(base.get("by_type", {})) & set(book.get("by_type", {}))
    return {"overall": share(closed["accuracy"], base["accuracy"], book["accuracy"]),
            "by_type": {t: share(*(m["by_type"][t]["accuracy"] for m in (closed, base, book))) for t in sorted(types)}}
