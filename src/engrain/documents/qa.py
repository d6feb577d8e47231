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
from engrain.errors import EngrainError
from engrain.forward import continuation_logprobs, encode_context, pad, repeat_cache
from engrain.measure import Meter, matmul_peak

SEPARATOR = "\n\n"  # between the documents, and between them and the question


def prompt_text(q: Question) -> str:
    """A cloze (the verbatim questions: a sentence cut before its answer) as it is, a question as Q/A."""
    return q.question if not q.question.rstrip().endswith("?") else f"Question: {q.question}\nAnswer:"


@torch.no_grad()
def choice_scores(model, tokenizer, questions: Sequence[Question], documents: dict[str, str] | None = None,
                  batch_size: int = 16, bos: bool = True) -> list[tuple[list[float], list[int]]]:
    """Per question: (summed log-prob of each choice, its token count). With ``documents`` (id -> text)
    each question is asked after its own documents (open book); without, after BOS alone (closed book),
    or, with ``bos`` false, after nothing: a KV-prefix model's prefix holds BOS and comes first."""
    bos = tokenizer("", add_special_tokens=True)["input_ids"] if bos else []
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
    right = [(max(range(len(s)), key=lambda c: s[c] / n[c]) == q.answer, max(range(len(s)), key=s.__getitem__) == q.answer)
             for q, (s, n) in zip(questions, scores)]  # (normalised, summed) hit per question

    def acc(kind: str | None) -> dict:
        hits = [h for q, h in zip(questions, right) if kind is None or q.type == kind]
        return {"n": len(hits), "accuracy": sum(a for a, _ in hits) / len(hits),
                "accuracy_unnormalised": sum(b for _, b in hits) / len(hits)}

    return {**acc(None), "chance": sum(1 / len(q.choices) for q in questions) / len(questions),
            "by_type": {t: acc(t) for t in sorted({q.type for q in questions})}}


def score_questions(lm, questions: Sequence[Question], documents: dict[str, str] | None, batch_size: int = 16,
                    model=None, bos: bool = True) -> tuple[dict, dict]:
    """Metrics and cost of answering ``questions`` with ``model`` (default ``lm.model``) in ``lm.dtype``;
    with ``documents``, open book; ``bos`` false for a KV-prefix model (:func:`choice_scores`)."""
    model = model if model is not None else lm.model
    peak = matmul_peak(lm.device, lm.dtype)
    with Meter(lm.device) as m, torch.autocast(lm.device.type, dtype=lm.dtype, enabled=lm.dtype != torch.float32):
        scores = choice_scores(model, lm.tokenizer, questions, documents, batch_size, bos)
    measure = {"seconds": m.seconds, "ms_per_question": m.seconds / len(questions) * 1000, **m.memory(),
               "open_book": documents is not None, "matmul_peak_tflops": peak / 1e12}
    return qa_metrics(questions, scores), measure


def evaluate_documents(cfg) -> dict:
    """`engrain eval` on a document task: closed-book (the base model, or a trained one with --adapter),
    or open-book (--open-book: each question's documents in context)."""
    import dataclasses

    from engrain.evaluation import load_for_eval
    from engrain.params import read_adapter_meta
    from engrain.results import base_record, eval_method, write_record
    from engrain.tasks.documents import load_document_task

    task = load_document_task(cfg.task, cfg.corpus, cfg.questions, cfg.data_dir)  # files first: bad ones fail before the model loads
    questions = task.questions[: cfg.limit] if cfg.limit else task.questions
    if cfg.adapter:  # the record names the model actually evaluated
        cfg = dataclasses.replace(cfg, model=read_adapter_meta(cfg.adapter)["base_model"])
    lm, _, meta = load_for_eval(cfg)
    if meta.get("prefix_tokens") and cfg.open_book:
        raise EngrainError(f"{cfg.adapter} is a KV prefix: it starts with its own context; evaluate it closed book (without --open-book)")
    metrics, measure = score_questions(lm, questions, task.texts if cfg.open_book else None, cfg.batch_size,
                                       bos=not meta.get("prefix_tokens"))  # a KV prefix holds BOS
    record = base_record("eval", meta.get("method", eval_method(cfg)), cfg, lm)
    record["metrics"], record["measure"] = {task.name: metrics}, {task.name: measure}
    if cfg.out:
        record["path"] = str(write_record(record, cfg.out))
    return record
