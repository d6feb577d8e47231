"""Continued pre-training: next-token loss on the documents (chunked to --chunk-tokens).

CPT and CFT (engrain.methods.cft) train on exactly the same target tokens: every token of a chunk when
the tokenizer adds a BOS (the first is predicted from it; CFT puts its prompt between the two), every
token but the first when it does not (nothing before it gives it logits in CPT, so CFT leaves it out too,
although its prompt could predict it). A KV prefix gives no logits either: the same rule."""

from __future__ import annotations

import torch

from engrain.documents.corpus import Conversation
from engrain.methods.base import indexed, token_nll


def document_item(run, text: str, prompt: str = "") -> dict:
    """BOS (where the tokenizer adds one and no KV prefix holds it), an optional prompt and a blank line, then
    the text; the loss mask covers the text's tokens, less the first where no BOS precedes it (module docstring)."""
    tok = run.lm.tokenizer
    head = run.bos + (tok(prompt + "\n\n", add_special_tokens=False)["input_ids"] if prompt else [])
    body = tok(text, add_special_tokens=False)["input_ids"]
    mask = [1] * len(body)
    if not run.bos:  # CPT cannot predict the first token from nothing: CFT leaves it out too
        mask[0] = 0
    return {"input_ids": head + body, "loss_mask": [0] * len(head) + mask}


def qa_items(run) -> list[dict]:
    """--qa-train (access-pattern training): each question as closed book asks it (run.qa_prompt: plain or through
    the chat template), then its answer, the loss on the answer's tokens only, tokenised as the scorer tokenises
    it: what is trained is exactly the scored continuation of the same prompt. A conversation (``messages``)
    trains its assistant turns (engrain.chat.conversation_item)."""
    from engrain.chat import conversation_item

    out = []
    for q in run.qa_train or []:
        if isinstance(q, Conversation):
            out.append(conversation_item(run.lm.tokenizer, run.qa_prompt.template, q.messages, run.bos, q.id))
            continue
        ids, start = run.qa_prompt.pair(q, q.choices[q.answer])
        out.append({"input_ids": ids, "loss_mask": [0] * start + [1] * (len(ids) - start)})
    return out


def with_qa(run, items: list[dict], record: dict) -> list[dict]:
    """``items`` and, with --qa-train (unless --no-qa-mix), the question items after them; ``record["qa_train"]``
    says what was added, and in which order (the --qa-first epochs are engrain.train's: questions alone)."""
    extra = qa_items(run)
    if extra:
        record["qa_train"] = {"source": run.cfg.qa_train, "questions": len(extra),
                              "target_tokens": sum(sum(it["loss_mask"]) for it in extra),
                              "first_epochs": run.cfg.qa_first, "mixed": run.cfg.qa_mix}
    return items + (extra if run.cfg.qa_mix else [])


def trainable_chunks(run) -> list:
    """The chunks with at least one target token (a one-token chunk without BOS has none: left out of CPT and CFT)."""
    least = 1 if run.bos else 2
    return [c for c in run.chunks if len(run.lm.tokenizer(c.text, add_special_tokens=False)["input_ids"]) >= least]


def corpus_record(run, items: list[dict]) -> dict:
    """The corpus and ``target_tokens``: exactly the tokens that carried loss in an epoch (token_nll's targets)."""
    chunks, tok = run.chunks, run.lm.tokenizer
    targets = sum(sum(it["loss_mask"][1:]) for it in items)  # position 0 is never a target
    return {"corpus": {"source": run.cfg.train_data, "documents": len({c.doc_id for c in chunks}), "chunks": len(chunks),
                       "document_tokens": sum(len(tok(c.text, add_special_tokens=False)["input_ids"]) for c in chunks),
                       "target_tokens": targets, "chunk_tokens": run.cfg.chunk_tokens}}


class CPT:
    name = "cpt"
    head = None

    def __init__(self, items: list[dict]):
        self.items, self.record = indexed(items), {}

    @classmethod
    def build(cls, run) -> "CPT":
        items = [document_item(run, c.text) for c in trainable_chunks(run)]
        record = corpus_record(run, items)
        method = cls(with_qa(run, items, record))
        method.record = record
        return method

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_nll(model, batch)
