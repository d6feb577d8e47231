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


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantised_lora_run_trains_on_frozen_kbit_weights_and_scores_the_same_reloaded(bitsandbytes, tiny_wide_dir, data_dir, tmp_path,
                                                                                          bits):
    """QLoRA (--load-in-4bit: NF4; --load-in-8bit: LLM.int8) through bitsandbytes on the CPU: the decoder's linear layers
    are held quantised (an eighth / a quarter of fp32's bytes), only LoRA trains, the loss falls, and the adapter,
    reloaded by `engrain eval --adapter` on the same quantised base, scores exactly what training's last evaluation did."""
    from engrain import EvalConfig, evaluate
    from engrain.params import decoder_linears, read_adapter_meta

    kind = bitsandbytes.nn.Linear4bit if bits == "4bit" else bitsandbytes.nn.Linear8bitLt
    cfg = TrainConfig(model=str(tiny_wide_dir), task="rte", method="pbft", params="lora", shots=8, epochs=4, lr=1e-2,
                      warmup_ratio=0.0, limit=16, eval_sample=8, data_dir=str(data_dir), out=str(tmp_path), progress=False,
                      precision="fp32", device="cpu", **{f"load_in_{bits}": True})
    rec, model, _ = train_model(cfg)
    linears = [lin for name, lin in decoder_linears(model) if "lora_" not in name]
    assert len(linears) == 14 and all(isinstance(getattr(lin, "base_layer", lin), kind) for lin in linears)  # 2 layers x 7
    assert all(not p.requires_grad or "lora_" in n for n, p in model.named_parameters())
    held = sum(getattr(lin, "base_layer", lin).weight.numel() * getattr(lin, "base_layer", lin).weight.element_size() for lin in linears)
    fp32 = sum(lin.in_features * lin.out_features * 4 for lin in linears)
    assert held <= fp32 / (6 if bits == "4bit" else 3)
    losses = [p["loss"] for p in rec["curve"]]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    assert rec["config"][f"load_in_{bits}"] and read_adapter_meta(rec["adapter"]["path"])["quantize"] == bits
    ev = evaluate(EvalConfig(model=str(tiny_wide_dir), task="rte", adapter=rec["adapter"]["path"], limit=16, data_dir=str(data_dir),
                             out=str(tmp_path / "ev"), progress=False, precision="fp32", device="cpu"))
    for split in ("rte", "hans"):
        assert ev["metrics"][split]["accuracy"] == rec["metrics"][split]["accuracy"]
        assert ev["metrics"][split]["predicted_share"] == rec["metrics"][split]["predicted_share"]


def test_a_quantised_base_changes_the_logits_a_little(bitsandbytes, tiny_wide_dir):
    """The control for the test above: the 4-bit model is not the fp32 model under another name, and not broken."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        full = load_model(str(tiny_wide_dir), "fp32", "cpu").model(input_ids=ids).logits
        nf4 = load_model(str(tiny_wide_dir), "fp32", "cpu", quantize="4bit", compute=torch.float32).model(input_ids=ids).logits
    diff = (full - nf4).abs().max()
    assert 1e-3 < diff < full.abs().max()
    assert torch.corrcoef(torch.stack([full.flatten(), nf4.flatten()]))[0, 1] > 0.9


@pytest.mark.parametrize("args,message", [
    (["--params", "full"], "--load-in-4bit trains an adapter on frozen quantised weights: use --params lora, ia3 or prefix"),
    (["--params", "bitfit"], "not bitfit"),
    (["--load-in-8bit"], "--load-in-4bit and --load-in-8bit exclude each other"),
])
def test_a_quantised_run_refuses_what_it_cannot_train(capsys, args, message):
    assert main(["train", "--task", "rte", "--load-in-4bit", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_evaluation_between_epochs_leaves_the_4bit_backward_intact(bitsandbytes, tiny_wide_dir):
    """bitsandbytes repacks a 4-bit weight for its CPU inference kernel (no backward) at an eval-mode forward without
    gradients, on CPUs with AVX512-BF16; engrain keeps the trainable layout, so the step after an evaluation still
    sends gradients to the lowest layer's LoRA weights, the same as before it."""
    from peft import LoraConfig, get_peft_model

    lm = load_model(str(tiny_wide_dir), "fp32", "cpu", quantize="4bit", compute=torch.bfloat16)
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])

    def lowest_grad():
        model.train().zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return next(p.grad.clone() for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n)

    before = lowest_grad()
    with torch.no_grad():
        model.eval()(input_ids=ids)  # what an evaluation point does
    after = lowest_grad()
    assert before.abs().sum() > 0 and torch.allclose(before, after)


def test_fp16_training_scales_the_loss_and_ends_near_fp32(tiny_model_dir, data_dir, tmp_path):
    """--precision fp16 (GPUs without bf16): autocast to fp16 with a grad scaler. The steps are the fp32 run's steps up to
    rounding: the same curve within a few percent, and weights no further from fp32's than bf16's (8 bits of mantissa
    against fp16's 11) are; the scale it ended with is recorded."""
    kw = dict(model=str(tiny_model_dir), task="rte", method="pbft", params="lora", shots=8, epochs=3, lr=1e-2, warmup_ratio=0.0,
              limit=8, eval_sample=4, data_dir=str(data_dir), out="", progress=False, save=False, device="cpu")
    (full, m32, _), (half, m16, _), (brain, mb16, _) = (train_model(TrainConfig(**kw, precision=p)) for p in ("fp32", "fp16", "bf16"))
    assert half["model"]["dtype"] == "float16" and half["measure"]["train"]["loss_scale"] > 1
    assert "loss_scale" not in full["measure"]["train"] and "loss_scale" not in brain["measure"]["train"]
    assert [p["loss"] for p in half["curve"]] == pytest.approx([p["loss"] for p in full["curve"]], rel=0.05)
    ref = {k: p for k, p in m32.named_parameters() if p.requires_grad}
    gap = lambda m: max(float((dict(m.named_parameters())[k].float() - p).abs().max()) for k, p in ref.items())  # noqa: E731
    assert 0 < gap(m16) <= 1.25 * gap(mb16)  # fp16 compute did run (not fp32 under another name), and no worse than bf16


def test_an_fp16_step_with_inf_gradients_is_skipped(tiny_model_dir, data_dir, tmp_path):
    """The scaler's other half: a step whose gradients overflow changes no weight and halves the scale."""
    from engrain.train import Loop, train_step

    config = TrainConfig(model=str(tiny_model_dir), task="rte", method="pbft", params="lora", shots=8, epochs=1, lr=1e-2, limit=8,
                         eval_sample=4, data_dir=str(data_dir), out="", progress=False, save=False, device="cpu", precision="fp16")
    _, model, _ = train_model(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    class Acc:  # what train_step uses of an Accelerator, one process
        sync_gradients, num_processes = True, 1
        accumulate = staticmethod(lambda m: __import__("contextlib").nullcontext())
        backward = staticmethod(lambda loss: loss.backward())
        clip_grad_norm_ = staticmethod(torch.nn.utils.clip_grad_norm_)

    class R:
        acc, cfg = Acc(), config
        autocast = staticmethod(lambda: torch.autocast("cpu", dtype=torch.float16))

    loop = Loop(None, model, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), None, trainable, 1, None, {},
                scaler=scaler)
    before = [p.detach().clone() for p in trainable]
    overflow = lambda m, batch: sum(p.sum() for p in trainable) * float("inf")  # noqa: E731
    train_step(R(), loop, {"n_tokens": 0}, overflow)
    assert all(torch.equal(p, q) for p, q in zip(trainable, before)) and scaler.get_scale() == 512.0
