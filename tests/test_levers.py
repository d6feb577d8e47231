"""Memory levers of training (issue 30): padding-free packed batches and gradient checkpointing change what is
kept in memory, never the loss or the gradients."""

from __future__ import annotations

import random

import pytest
import torch

from engrain.cli import main
from engrain.config import TrainConfig
from engrain.methods.base import collate, token_nll
from engrain.models import load_model
from engrain.train import train_model


def items(vocab: int, n: int = 7, seed: int = 0) -> list[dict]:
    """Token-level items of varied lengths whose first token carries no loss (as every cpt / cft item)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 30)
        mask = [0] + [rng.random() < 0.8 for _ in range(length - 1)]
        mask[-1] = 1
        out.append({"input_ids": [rng.randrange(3, vocab) for _ in range(length)], "loss_mask": [int(m) for m in mask]})
    return out


def test_a_packed_batch_has_the_padded_batchs_loss_and_gradients(tiny_any_dir):
    lm = load_model(str(tiny_any_dir), "fp32", "cpu")
    model, pad_id = lm.model.train(), lm.tokenizer.pad_token_id
    batch = items(len(lm.tokenizer))
    packed = collate(batch, pad_id, pack=True)
    assert packed["input_ids"].shape[0] < len(batch)  # fewer rows: the point of packing
    assert int(packed["attention_mask"].sum()) == sum(len(it["input_ids"]) for it in batch)
    losses, grads = [], []
    for b in (collate(batch, pad_id, "right"), packed):
        model.zero_grad()
        loss = token_nll(model, b)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(losses[0], losses[1], atol=1e-5, rtol=0)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_packing_without_the_position_ids_would_differ(tiny_model_dir):
    """The control: the same packed rows read as one sequence each (no per-sequence positions) give another loss."""
    lm = load_model(str(tiny_model_dir), "fp32", "cpu")
    batch = items(len(lm.tokenizer))
    packed = collate(batch, lm.tokenizer.pad_token_id, pack=True)
    with torch.no_grad():
        right = token_nll(lm.model, collate(batch, lm.tokenizer.pad_token_id, "right"))
        leaky = token_nll(lm.model, {k: v for k, v in packed.items() if k != "position_ids"})
    assert abs(float(right) - float(leaky)) > 1e-3


@pytest.mark.parametrize("lever", [{"pack": True}, {"gradient_checkpointing": True}])
@pytest.mark.parametrize("params", ["lora", "full"])
def test_a_run_with_a_memory_lever_ends_as_without_it(tiny_model_dir, tmp_path, lever, params):
    kw = dict(model=str(tiny_model_dir), task="facts", method="cft", params=params, epochs=2, lr=1e-3, limit=8, eval_sample=4,
              precision="fp32", device="cpu", out="", progress=False, save=False)
    plain, m0, _ = train_model(TrainConfig(**kw))
    levered, m1, _ = train_model(TrainConfig(**kw, **lever))
    assert [p["loss"] for p in levered["curve"]] == pytest.approx([p["loss"] for p in plain["curve"]], rel=1e-4)
    a, b = dict(m0.named_parameters()), dict(m1.named_parameters())
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    base = m1.get_base_model() if hasattr(m1, "get_base_model") else m1
    assert base.is_gradient_checkpointing == ("gradient_checkpointing" in lever)
    if "pack" in lever:
        assert levered["measure"]["train"]["tokens"] == plain["measure"]["train"]["tokens"]  # real tokens, not padding


def test_pack_is_for_token_level_methods(capsys):
    assert main(["train", "--task", "rte", "--method", "pbft", "--pack"]) == 2
    assert "--pack applies to cpt and cft" in capsys.readouterr().err
