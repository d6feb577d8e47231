"""Vanilla fine-tuning (llmft's OPTWithClassifier): a new, randomly initialised linear head on the
last non-pad token's final hidden state; the input still uses the task's pattern, as llmft does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engrain.methods.base import forward_last, indexed


class HeadMethod:
    name = "head"

    def __init__(self, hidden_size: int, n_labels: int, items: list[dict], seed: int = 0):
        self.head = torch.nn.Linear(hidden_size, n_labels, bias=False)
        # Its own seeded generator: the head starts the same whatever parameter set trains beside it.
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(n_labels, hidden_size, generator=g) * hidden_size**-0.5)
        self.items, self.record = indexed(items), {}

    @classmethod
    def build(cls, run) -> "HeadMethod":
        return cls(run.lm.model.config.get_text_config().hidden_size, len(run.spec.labels), run.labelled_items(run.shots),
                   run.cfg.seed)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        _, h = forward_last(model, batch, hidden=True)  # (B, H)
        return F.cross_entropy(self.head(h.float()), batch["labels"])
