"""Context distillation (Askell et al. 2021; Snell et al. 2022): the student, WITHOUT the context,
learns to match the frozen teacher WITH it: minimise KL(p0(y | C, x) || p_theta(y | x)).

The teacher is the base model with the k demonstrations as context, exactly the ICL prompt. Its
outputs for the whole transfer set are computed once before training (the context's KV cache once,
then batched queries, last position only) and kept here, so training never runs the teacher again;
with adapter students the teacher ran on the same base weights before the adapter existed, so
there is never a second copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engrain.evaluate import last_outputs
from engrain.methods import forward_last


@dataclass
class TeacherOutputs:
    verbalizer_logits: torch.Tensor  # (N, C) fp32
    topk_logprobs: torch.Tensor | None = None  # (N, K) full-vocabulary log-probs of the teacher's top K tokens
    topk_ids: torch.Tensor | None = None  # (N, K)


@torch.no_grad()
def teacher_outputs(model, context_ids, queries, verbalizer_ids, batch_size: int, pad_id: int, cache=None, topk: int = 0) -> TeacherOutputs:
    n, verb = len(queries), torch.tensor(list(verbalizer_ids), device=model.device)
    out = TeacherOutputs(torch.empty(n, len(verbalizer_ids)))
    if topk:
        out.topk_logprobs, out.topk_ids = torch.empty(n, topk), torch.empty(n, topk, dtype=torch.long)
    for idx, logits, _ in last_outputs(model, context_ids, queries, batch_size, pad_id, cache):
        logits = logits.float()  # (B, V)
        out.verbalizer_logits[idx] = logits[:, verb].cpu()
        if topk:
            values, ids = logits.log_softmax(-1).topk(topk, dim=-1)
            out.topk_logprobs[idx], out.topk_ids[idx] = values.cpu(), ids.cpu()
    return out


def kl_divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Mean over the batch of KL(teacher || student), or KL(student || teacher) when ``reverse``; (B, C) inputs."""
    p, q = (student_logp, teacher_logp) if reverse else (teacher_logp, student_logp)
    return (p.exp() * (p - q)).sum(-1).mean()


class Distill:
    name = "distill"
    head = None

    def __init__(self, verbalizer_ids: list[int], teacher: TeacherOutputs, loss: str = "verbalizer", kl: str = "forward",
                 temperature: float = 1.0, alpha: float = 0.0):
        self.verbalizer_ids, self.teacher = list(verbalizer_ids), teacher
        self.kind, self.reverse, self.t, self.alpha = loss, kl == "reverse", float(temperature), float(alpha)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = forward_last(model, batch)[0].float()  # (B, V)
        verb = torch.tensor(self.verbalizer_ids, device=logits.device)
        index = batch["index"].cpu()
        if self.kind == "topk":
            ids = self.teacher.topk_ids[index].to(logits.device)  # (B, K)
            # Both distributions restricted to the teacher's top K tokens and renormalised there.
            t = (self.teacher.topk_logprobs[index].to(logits.device) / self.t).log_softmax(-1)
            s = (logits.gather(1, ids) / self.t).log_softmax(-1)
        else:
            t = (self.teacher.verbalizer_logits[index].to(logits.device) / self.t).log_softmax(-1)  # (B, C)
            s = (logits[:, verb] / self.t).log_softmax(-1)
        loss = kl_divergence(t, s, self.reverse) * self.t**2
        if self.alpha:
            loss = (1 - self.alpha) * loss + self.alpha * F.cross_entropy(logits[:, verb], batch["labels"])
        return loss
