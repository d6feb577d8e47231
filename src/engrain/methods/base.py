"""The interface every training method implements, and the batch helpers they share.

A method is built from the run (``build(run)``): there it makes its training items, and may compute
what it needs before any parameter is attached (a distillation teacher's outputs). Each item is a
dict of plain Python values:

    input_ids   list[int]   the tokens the student model reads
    label       int         gold class id (classification methods)
    loss_mask   list[int]   1 where the token is a training target (token-level methods: continued
                            pre-training, Contextual Fine-Tuning); absent for last-token methods
    index       int         the item's position in ``method.items`` (set by ``build``)

A batch also carries host-side counts (``with_counts``), so that a training step never synchronises with
the device to read them.

``collate`` pads a list of items into a batch, and ``loss(model, batch)`` turns the batch into a
scalar. Prediction always goes through the shared scorer (engrain.evaluation.score), so every
method's numbers are comparable with ICL's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from engrain.errors import EngrainError
from engrain.forward import last_token_outputs, pad, positions

if TYPE_CHECKING:
    from engrain.run import Run


class Method(Protocol):
    name: str
    head: torch.nn.Module | None  # trained alongside the model's parameters, or None
    items: list[dict]  # training items (see the module docstring)
    record: dict  # what the method adds to the run record (e.g. its teacher pass's cost)

    @classmethod
    def build(cls, run: "Run") -> "Method": ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    # Optional: ``set_epoch(epoch)``, called before each epoch, for methods whose items change per
    # epoch (CFT draws a new prompt per document); ``items`` then reads the current epoch's.


def indexed(items: list[dict]) -> list[dict]:
    return [{**item, "index": i} for i, item in enumerate(items)]


def packed(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Token-level items packed into as few rows as fit the longest (first fit, in order): input_ids, loss_mask,
    attention_mask (1 on real tokens) and position_ids restarting at 0 for each sequence, from which transformers
    builds a block-diagonal causal mask (no token attends to another sequence). A sequence's first token carries
    no loss (every token-level item starts with BOS, a prompt or a masked first token), so the loss is the padded
    batch's."""
    width = max(len(it["input_ids"]) for it in items)
    rows: list[list[dict]] = []
    for it in items:
        row = next((r for r in rows if sum(len(x["input_ids"]) for x in r) + len(it["input_ids"]) <= width), None)
        row.append(it) if row is not None else rows.append([it])
    out = {k: torch.full((len(rows), width), v, dtype=torch.long) for k, v in (("input_ids", pad_id), ("loss_mask", 0),
                                                                              ("attention_mask", 0), ("position_ids", 0))}
    for i, row in enumerate(rows):
        at = 0
        for it in row:
            n = len(it["input_ids"])
            out["input_ids"][i, at : at + n] = torch.tensor(it["input_ids"])
            out["loss_mask"][i, at : at + n] = torch.tensor(it["loss_mask"])
            out["attention_mask"][i, at : at + n] = 1
            out["position_ids"][i, at : at + n] = torch.arange(n)
            at += n
        out["position_ids"][i, at:] = torch.arange(width - at)  # the padding: a sequence of its own, never a target
    return with_counts(out, items)


def with_counts(batch: dict, items: list[dict]) -> dict:
    """What the training loop reads on the host, counted here on the CPU so that a step on a GPU never waits
    for the device to count it: ``n_tokens`` (real tokens), ``n_targets`` (tokens carrying loss, token-level
    items), ``row_targets`` (per item) and ``index`` (the items' positions, a list: it indexes host-side tables)."""
    batch["n_tokens"] = sum(len(it["input_ids"]) for it in items)
    if "loss_mask" in items[0]:
        batch["row_targets"] = [sum(it["loss_mask"][1:]) for it in items]  # position 0 is never a target
        batch["n_targets"] = sum(batch["row_targets"])
    if "index" in items[0]:
        batch["index"] = [it["index"] for it in items]
    return batch


def collate(items: list[dict], pad_id: int, side: str = "left", pack: bool = False) -> dict[str, torch.Tensor]:
    """Items -> a batch padded on ``side`` (the model's forward.padding_side): input_ids and attention_mask
    (B, T); loss_mask (B, T) where items carry one (0 on padding); labels and index (B,) where present.
    With ``pack``, token-level items are packed instead (:func:`packed`)."""
    if pack:
        return packed(items, pad_id)
    ids, mask = pad([it["input_ids"] for it in items], pad_id, side)
    batch = {"input_ids": ids, "attention_mask": mask}
    if "loss_mask" in items[0]:
        batch["loss_mask"] = pad([it["loss_mask"] for it in items], 0, side)[0]
    if "label" in items[0]:
        batch["labels"] = torch.tensor([it["label"] for it in items])
    return with_counts(batch, items)


def forward_last(model: torch.nn.Module, batch: dict[str, torch.Tensor], hidden: bool = False):
    """Logits (B, V) and, with ``hidden``, final hidden states (B, H) at each prompt's last token."""
    return last_token_outputs(model, batch["input_ids"], batch["attention_mask"], hidden=hidden)


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose ``loss_mask`` is 1 (a token is predicted from
    the ones before it, so the first token of a sequence is never a target)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    target = batch["loss_mask"][:, 1:].bool() & mask[:, 1:].bool()  # (B, T-1)
    n = batch["n_targets"] if "n_targets" in batch else int(target.sum())  # collate counted it on the host: no device sync
    if n == 0:  # the mean over nothing is NaN: a bug upstream, not a loss
        raise EngrainError("a training batch has no target tokens (its loss mask is 0 everywhere after the first token)")
    if "position_ids" in batch:  # packed: no attention mask, so that transformers masks by the position ids' sequences
        logits = model(input_ids=ids, position_ids=batch["position_ids"], use_cache=False).logits[:, :-1].float()
    else:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, :-1].float()  # (B, T-1, V)
    # the targets by ignore_index rather than a boolean index, which would wait for the device to count them
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].masked_fill(~target, -100).flatten(), ignore_index=-100)
