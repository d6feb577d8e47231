"""Contextual Fine-Tuning (Choi et al., ICLR 2025): before each document (chunk) a contextual prompt
on how to learn it; the loss is next-token cross-entropy on the document's tokens only (the prompt
is masked). A prompt is drawn per document per epoch (engrain.cft_prompts.draw, seeded): the items
of every epoch are built up front, and ``set_epoch`` switches between them."""

from __future__ import annotations

from typing import Sequence

import torch

from engrain.documents.prompts import draw, prompt_pool
from engrain.methods.base import indexed, token_nll
from engrain.methods.cpt import corpus_record, document_item, trainable_chunks, with_qa


class EpochItems(Sequence):
    """The training items of the current epoch (the loader's dataset: it sees the switch)."""

    def __init__(self, by_epoch: list[list[dict]]):
        self.by_epoch, self.epoch = by_epoch, 1

    def __len__(self) -> int:
        return len(self.by_epoch[0])

    def __getitem__(self, i):
        return self.by_epoch[self.epoch - 1][i]


class CFT:
    name = "cft"
    head = None

    def __init__(self, by_epoch: list[list[dict]], prompts: list[list[str]]):
        self.items, self.prompts, self.record = EpochItems([indexed(items) for items in by_epoch]), prompts, {}

    @classmethod
    def build(cls, run) -> "CFT":
        cfg, chunks = run.cfg, trainable_chunks(run)
        pool = prompt_pool(cfg.cft_prompts, cfg.cft_prompts_file)
        prompts = [draw(pool, len(chunks), cfg.seed, epoch) for epoch in range(1, cfg.epochs + 1)]
        by_epoch = [[document_item(run, c.text, p) for c, p in zip(chunks, ps)] for ps in prompts]
        run.check_fits(0, [it["input_ids"] for items in by_epoch for it in items])
        record = corpus_record(run, by_epoch[0])
        method = cls([with_qa(run, items, record) for items in by_epoch], prompts)  # questions without a prompt
        method.record = record
        method.record["cft_prompts"] = cfg.cft_prompts_file or cfg.cft_prompts
        return method

    def set_epoch(self, epoch: int) -> None:
        self.items.epoch = epoch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_nll(model, batch)
