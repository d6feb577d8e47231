"""Training methods behind one small interface; `icl` (nothing trained) lives in engrain.evaluate.

A method turns a batch of padded prompts (B, T) and gold labels (B,) into a loss, and names the
extra module it trains (a classification head) if any. Prediction always goes through the shared
scorer (engrain.evaluate.score), so every method's numbers are comparable with ICL's.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engrain.errors import unknown
from engrain.evaluate import last_token_outputs


class Method(Protocol):
    name: str
    head: torch.nn.Module | None  # trained alongside the model's parameters, or None

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


def forward_last(model: torch.nn.Module, batch: dict[str, torch.Tensor], hidden: bool = False):
    """Logits (B, V) and, with ``hidden``, final hidden states (B, H) at each prompt's last token."""
    return last_token_outputs(model, batch["input_ids"], batch["attention_mask"], hidden=hidden)


METHODS = ("icl", "pbft", "head", "distill")


def build_method(name: str, verbalizer_ids: list[int], hidden_size: int, n_labels: int, **options) -> Method:
    from engrain.methods.distill import Distill
    from engrain.methods.head import HeadMethod
    from engrain.methods.pbft import PBFT

    if name == "distill":
        return Distill(verbalizer_ids, options["teacher"], options["distill_loss"], options["kl"], options["temperature"], options["alpha"])
    if name == "pbft":
        return PBFT(verbalizer_ids, full_vocab=options.get("full_vocab_loss", False))
    if name == "head":
        return HeadMethod(hidden_size, n_labels)
    raise unknown("training method", name, [m for m in METHODS if m != "icl"])
