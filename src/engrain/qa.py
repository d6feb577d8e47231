"""Multiple-choice question answering about documents: closed-book (the question alone, after BOS)
or open-book (the question's documents as a context, encoded once per document set and reused for
every question and choice that shares it). Each choice is scored by the log-likelihood of its tokens
after the prompt; the prediction is the highest length-normalised score (mean log-prob per token),
and the record keeps the unnormalised (summed) accuracy too."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from engrain.documents import Question
from engrain.forward import continuation_logprobs, encode_context, pad, repeat_cache

SEPARATOR = "\n\n"  # between the documents, and between them and the question


def prompt_text(q: Question) -> str:
    """A cloze (the verbatim questions: a sentence cut before its answer) as it is, a question as Q/A."""
    return q.question if not q.question.rstrip().endswith("?") else f"Question: {q.question}\nAnswer:"


@torch.no_grad()
def choice_scores(model, tokenizer, questions: Sequence[Question], documents: dict[str, str] | None = None,
                  batch_size: int = 16) -> list[tuple[list[float], list[int]]]:
    """Per question: (summed log-prob of each choice, its token count). With ``documents`` (id -> text)
    each question is asked after its own documents (open book); without, after BOS alone (closed book)."""
    bos = tokenizer("", add_special_tokens=True)["input_ids"]
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        groups[q.doc_ids if documents is not None else ()].append(i)
    out: list = [None] * len(questions)
    for doc_ids, idx in groups.items():
        context = bos + (tokenizer(SEPARATOR.join(documents[d] for d in doc_ids), add_special_tokens=False)["input_ids"] if doc_ids else [])
        cache = encode_context(model, context) if doc_ids else None
        rows = []  # (question index, choice index, prompt ids, choice ids)
        for i in idx:
            q = questions[i]
            prompt = tokenizer((SEPARATOR if doc_ids else "") + prompt_text(q), add_special_tokens=False)["input_ids"]
            prompt = prompt if doc_ids else bos + prompt
            for c, choice in enumerate(q.choices):
                rows.append((i, c, prompt, tokenizer(" " + choice, add_special_tokens=False)["input_ids"]))
        sums = {}
        for b in range(0, len(rows), batch_size):
            batch = rows[b : b + batch_size]
            ids, mask = pad([p + c for _, _, p, c in batch], tokenizer.pad_token_id, "right")
            starts = torch.tensor([len(p) for _, _, p, _ in batch])
            past = repeat_cache(cache, len(batch)) if cache is not None else None
            s, n = continuation_logprobs(model, ids.to(model.device), mask.to(model.device), starts.to(model.device), past,
                                         len(context) if cache is not None else 0)
            for (i, c, _, _), si, ni in zip(batch, s.tolist(), n.tolist()):
                sums[i, c] = (si, ni)
        for i in idx:
            scores = [sums[i, c] for c in range(len(questions[i].choices))]
            out[i] = ([s for s, _ in scores], [n for _, n in scores])
    return out


def qa_metrics(questions: Sequence[Question], scores) -> dict:
    """Accuracy (length-normalised prediction), unnormalised accuracy, chance, and both per question type."""
    def acc(sel, normalised: bool) -> float:
        hits = [max(range(len(s)), key=lambda c: s[c] / n[c] if normalised else s[c]) == questions[i].answer
                for i, (s, n) in enumerate(scores) if sel(questions[i])]
        return sum(hits) / len(hits)

    types = sorted({q.type for q in questions})
    return {
        "n": len(questions),
        "accuracy": acc(lambda q: True, True),
        "accuracy_unnormalised": acc(lambda q: True, False),
        "chance": sum(1 / len(q.choices) for q in questions) / len(questions),
        "by_type": {t: {"n": sum(q.type == t for q in questions), "accuracy": acc(lambda q: q.type == t, True),
                        "accuracy_unnormalised": acc(lambda q: q.type == t, False)} for t in types},
    }
