"""Context distillation (Askell et al. 2021; Snell et al. 2022): the student, WITHOUT the context,
learns to match the frozen teacher WITH it: minimise KL(p0(y | C, x) || p_theta(y | x)).

The teacher is the base model with the k demonstrations as context, exactly the ICL prompt. Its
outputs for the whole transfer set are computed once, in ``build``, before any adapter exists (the
context's KV cache once, then batched queries, last position only), and kept here, so training
never runs the teacher again and there is never a second copy of the model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engrain.data import example_key
from engrain.errors import EngrainError
from engrain.forward import last_outputs
from engrain.measure import Meter
from engrain.methods.base import forward_last, indexed
from engrain.tasks import load_split


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


def transfer_set(cfg, spec, shots: list, exclude: set) -> list:
    """Distillation inputs: the k demonstrations, or a seeded sample of the rest of the train split
    (never the demonstrations, never evaluation data). Their labels only matter when alpha > 0."""
    if cfg.transfer == "shots":
        return list(shots)
    used = exclude | {example_key(spec, ex) for ex in shots}
    pool = [ex for ex in load_split(spec, "train", cfg.data_dir) if example_key(spec, ex) not in used]
    if not pool:
        raise EngrainError(f"the transfer set is empty: no {spec.name} train examples beyond the demonstrations; use --transfer shots")
    return random.Random(cfg.seed + 1).sample(pool, min(cfg.transfer_size, len(pool)))


def kl_divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Mean over the batch of KL(teacher || student), or KL(student || teacher) when ``reverse``; (B, C) log-probs."""
    p, q = (student_logp, teacher_logp) if reverse else (teacher_logp, student_logp)
    return F.kl_div(q, p, log_target=True, reduction="batchmean")  # torch's kl_div(input, target) is KL(target || input)


class Distill:
    name = "distill"
    head = None

    def __init__(self, verbalizer_ids: list[int], teacher: TeacherOutputs, loss: str = "verbalizer", kl: str = "forward",
                 temperature: float = 1.0, alpha: float = 0.0, items: list[dict] | None = None):
        self.verbalizer_ids, self.teacher = list(verbalizer_ids), teacher
        self.kind, self.reverse, self.t, self.alpha = loss, kl == "reverse", float(temperature), float(alpha)
        self.items, self.record = indexed(items or []), {}

    @classmethod
    def build(cls, run) -> "Distill":
        """The transfer set, and the teacher's outputs on it: the base model with the demonstrations as
        context (refused before any compute when a query after the context does not fit the window).
        On documents: engrain.methods.distill_docs (the teacher reads each chunk; it generates the transfer set)."""
        if run.corpus is not None:
            from engrain.methods.distill_docs import DocumentDistill

            return DocumentDistill.build(run)
        cfg = run.cfg
        inputs = transfer_set(cfg, run.train_spec, run.shots, run.exclude)
        queries = run.prompter.query_ids(inputs, with_context=True)
        run.check_fits(len(run.context_ids), queries)
        with Meter(run.lm.device) as m, run.autocast():
            teacher = teacher_outputs(run.lm.model, run.context_ids, queries, run.verbalizer_ids, cfg.batch_size,
                                      run.lm.tokenizer.pad_token_id, run.context_cache, cfg.topk if cfg.distill_loss == "topk" else 0)
        method = cls(run.verbalizer_ids, teacher, cfg.distill_loss, cfg.kl, cfg.temperature, cfg.alpha, run.labelled_items(inputs))
        method.record["teacher"] = {"seconds": m.seconds, **m.memory(), "context_tokens": len(run.context_ids),
                                    "transfer_examples": len(inputs), "transfer_tokens": sum(map(len, queries))}
        return method

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = forward_last(model, batch)[0].float()  # (B, V)
        verb = torch.tensor(self.verbalizer_ids, device=logits.device)
        index = torch.tensor(batch["index"])  # host-side, as the teacher's table
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
