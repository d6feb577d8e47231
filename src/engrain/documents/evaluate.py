"""`engrain eval` on a document task, and what every documents record carries beside the model's own
score, so that the number can be read without another record:

- ``baselines``: chance, the corpus prior and the longest choice (engrain.documents.baselines: no model),
  and the base model closed book and open book (each question's documents in the prompt), scored
  exactly as the trained model is. Those two are computed once per model, precision, task and scoring
  version, and cached under ``$ENGRAIN_CACHE/qa_references`` (a sweep pays for them once);
- ``gap_recovery`` in the metrics of a trained model: ``(closed - base) / (open - base)``, overall and
  per question type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import torch

from engrain.documents.baselines import baselines, gap_recovery
from engrain.documents.corpus import Question
from engrain.documents.qa import HEADLINE, QAPrompt, score_questions
from engrain.errors import EngrainError

# Bump when scoring changes what a cached reference would be.
SCORING_VERSION = 4  # 2: joint tokenisation (lm-eval), three rules; 3: inference copies keep fp32 rotary frequencies; 4: + measure


def _fingerprint(questions: Sequence[Question], documents: dict[str, str]) -> str:
    h = hashlib.sha256()
    for q in questions:
        h.update(json.dumps([q.question, q.choices, q.answer, q.doc_ids, q.type]).encode())
    for d in sorted({d for q in questions for d in q.doc_ids}):
        h.update(documents[d].encode())
    return h.hexdigest()


def references(lm, task, questions: Sequence[Question], batch_size: int, model=None, template: str | None = None) -> dict:
    """{"base": closed-book metrics, "open_book": metrics with each question's documents} of the base model
    (``model``, default ``lm.model``, run in ``lm.dtype``), asked plainly or through the chat ``template``, each
    with its ``seconds`` and ``measure`` (its cost when it was computed), cached by the model's files, precision,
    device type, template, questions and scoring version."""
    from engrain.cache import cached, model_fingerprint

    prompt = QAPrompt(lm.tokenizer, template)

    def compute() -> dict:
        out = {}
        for name, docs in (("base", None), ("open_book", task.texts)):
            metrics, measure = score_questions(lm, questions, docs, batch_size, model=model, prompt=prompt)
            out[name] = {**metrics, "seconds": measure["seconds"], "measure": measure}
        return out

    chat = [hashlib.sha256(template.encode()).hexdigest()] if template is not None else []  # plain: the key it always had
    return cached("qa_references", [SCORING_VERSION, model_fingerprint(lm.source), str(lm.dtype), lm.device.type,
                                    _fingerprint(questions, task.texts), *chat], compute)


def with_baselines(record: dict, task, questions: Sequence[Question], refs: dict | None, trained: bool) -> None:
    """Add ``baselines`` (and, for a trained model, ``gap_recovery`` in its metrics) to a documents record."""
    out = baselines(questions, task.corpus)
    if refs is not None:
        out.update({name: {k: v for k, v in ref.items() if k != "measure"} for name, ref in refs.items()})
        if trained:
            record["metrics"][task.name]["gap_recovery"] = gap_recovery(record["metrics"][task.name], refs["base"], refs["open_book"])
    out["scoring"] = HEADLINE
    record["baselines"] = out


def check_open_book(questions: Sequence[Question]) -> None:
    bare = [q for q in questions if not q.doc_ids]
    if bare:
        raise EngrainError(f"--open-book puts each question's documents before it, and {len(bare)} of {len(questions)} questions "
                           f"name none (first: {bare[0].id}); give them \"doc\" or \"docs\", or evaluate closed book")


def base_model(cfg):
    """The base model as training scores it: fp32 weights copied to the compute dtype (engrain.models.inference_copy,
    output layer from the fp32 weights), so that its closed- and open-book scores are the numbers gap recovery
    compares a trained model with (loaded in bf16 instead, near-ties among the choices can fall the other way)."""
    from engrain.models import default_batch_size, inference_copy, load_model, resolve_dtype

    lm = load_model(cfg.model, "fp32", cfg.device)
    lm.dtype = resolve_dtype(cfg.precision, lm.device)
    lm.model = inference_copy(lm.model, lm.dtype)
    cfg.batch_size = cfg.batch_size or default_batch_size(lm.device)
    return lm


def evaluate_documents(cfg) -> dict:
    """`engrain eval` on a document task: closed book (the base model, or a trained one with --adapter), or
    open book (--open-book: each question's documents in the prompt)."""
    from engrain.params import load_for_eval, read_adapter_meta
    from engrain.results import base_record, eval_method, write_record
    from engrain.tasks.documents import load_document_task

    task = load_document_task(cfg.task, cfg.corpus, cfg.questions, cfg.data_dir, cfg.text_field)  # files first: bad ones fail before the model loads
    questions = task.questions[: cfg.limit] if cfg.limit else task.questions
    if cfg.open_book:
        check_open_book(questions)
    meta = read_adapter_meta(cfg.adapter) if cfg.adapter else {}
    if meta.get("prefix_tokens") and cfg.open_book:
        raise EngrainError(f"{cfg.adapter} is a KV prefix: it starts with its own context; evaluate it closed book (without --open-book)")
    if meta:  # the record names the model actually evaluated, asked as it trained
        cfg = dataclasses.replace(cfg, model=meta["base_model"], chat_template=meta.get("chat_template", "none"))
        lm, _, meta = load_for_eval(cfg)
    else:
        lm = base_model(cfg)
    from engrain.chat import chat_template

    template = chat_template(lm.tokenizer, cfg.chat_template)
    refs = None
    if not meta and all(q.doc_ids for q in questions):
        # the base model closed and open book are the references of every trained record: computed together once and
        # cached, so that the other of the two evaluations, and training's references, are read back (its measure: its
        # cost when computed)
        refs = references(lm, task, questions, cfg.batch_size, template=template)
        metrics = {k: v for k, v in refs["open_book" if cfg.open_book else "base"].items() if k not in ("seconds", "measure")}
        measure = refs["open_book" if cfg.open_book else "base"]["measure"]
    else:
        prompt = QAPrompt(lm.tokenizer, template, bos=not meta.get("prefix_tokens"))  # a KV prefix holds BOS
        metrics, measure = score_questions(lm, questions, task.texts if cfg.open_book else None, cfg.batch_size, prompt=prompt)
    record = base_record("eval", meta.get("method", eval_method(cfg)), cfg, lm)
    record["metrics"], record["measure"] = {task.name: metrics}, {task.name: measure}
    if meta and all(q.doc_ids for q in questions):  # a trained model: against its base model, closed and open book
        base = base_model(cfg)
        refs = references(base, task, questions, cfg.batch_size, template=template)
        del base
    with_baselines(record, task, questions, refs, trained=bool(meta))
    if cfg.out:
        record["path"] = str(write_record(record, cfg.out))
    return record


@torch.no_grad()
def base_references(run, questions: Sequence[Question]) -> dict | None:
    """Training's references: the base model (before any parameter is attached) in the compute dtype, as
    training's evaluations run the trained one; None when some question names no document."""
    from engrain.models import inference_copy

    if not all(q.doc_ids for q in questions):
        return None
    lm = dataclasses.replace(run.lm, dtype=run.compute)
    return references(lm, run.qa, questions, run.cfg.batch_size, model=inference_copy(run.lm.model, run.compute),
                      template=run.qa_prompt.template)
