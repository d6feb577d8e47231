"""Vanilla fine-tuning (llmft's OPTWithClassifier): a new, randomly initialised linear head on the
last non-pad token's final hidden state; the input still uses the task's pattern, as llmft does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engrain.methods import forward_last


class HeadMethod:
    name = "head"

    def __init__(self, hidden_size: int, n_labels: int):
        self.head = torch.nn.Linear(hidden_size, n_labels, bias=False)
        torch.nn.init.normal_(self.head.weight, std=hidden_size**-0.5)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        _, h = forward_last(model, batch, hidden=True)  # (B, H)
        return F.cross_entropy(self.head(h.float()), batch["labels"])
