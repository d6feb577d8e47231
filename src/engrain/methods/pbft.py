"""Pattern-based fine-tuning (Schick & Schuetze; llmft's OPTWithLMClassifier): the LM head predicts
the verbaliser token of the gold label at the answer position of the task's pattern."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engrain.methods.base import forward_last, indexed


class PBFT:
    name = "pbft"
    head = None

    def __init__(self, verbalizer_ids: list[int], items: list[dict], full_vocab: bool = False):
        self.verbalizer_ids, self.items, self.record = list(verbalizer_ids), indexed(items), {}
        self.full_vocab = full_vocab  # cross-entropy over the whole vocabulary instead of the verbalisers

    @classmethod
    def build(cls, run) -> "PBFT":
        return cls(run.verbalizer_ids, run.labelled_items(run.shots), run.cfg.full_vocab_loss)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = forward_last(model, batch)[0].float()  # (B, V)
        verb = torch.tensor(self.verbalizer_ids, device=logits.device)
        if self.full_vocab:
            return F.cross_entropy(logits, verb[batch["labels"]])
        return F.cross_entropy(logits[:, verb], batch["labels"])  # (B, C) over the task's labels
