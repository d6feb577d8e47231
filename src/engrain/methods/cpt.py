"""Continued pre-training: next-token loss on the documents (chunked to --chunk-tokens)."""

from __future__ import annotations

import torch

from engrain.methods.base import indexed, token_nll


def document_item(run, text: str, prompt: str = "") -> dict:
    """BOS, an optional prompt (and a blank line), then the text; the loss mask covers the text's tokens only."""
    tok = run.lm.tokenizer
    head = run.bos + (tok(prompt + "\n\n", add_special_tokens=False)["input_ids"] if prompt else [])
    body = tok(text, add_special_tokens=False)["input_ids"]
    return {"input_ids": head + body, "loss_mask": [0] * len(head) + [1] * len(body)}


def corpus_record(run, items: list[dict]) -> dict:
    chunks = run.chunks
    return {"corpus": {"source": run.cfg.train_data, "documents": len({c.doc_id for c in chunks}), "chunks": len(chunks),
                       "document_tokens": sum(sum(it["loss_mask"]) for it in items), "chunk_tokens": run.cfg.chunk_tokens}}


class CPT:
    name = "cpt"
    head = None

    def __init__(self, items: list[dict]):
        self.items, self.record = indexed(items), {}

    @classmethod
    def build(cls, run) -> "CPT":
        method = cls([document_item(run, c.text) for c in run.chunks])
        method.record = corpus_record(run, method.items)
        return method

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_nll(model, batch)
