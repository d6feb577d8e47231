"""Few-shot fine-tuning: one matrix over method x parameter set on the tiny model."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from engrain import EvalConfig, evaluate
from engrain.config import TrainConfig
from engrain.errors import EngrainError
from engrain.models import load_model
from engrain.train import train_model

MATRIX = [(m, p) for m in ("pbft", "head") for p in ("full", "lora", "bitfit", "ia3")]
LR = {"full": 1e-3, "lora": 1e-2, "bitfit": 1e-2, "ia3": 5e-2}


def cfg_for(tiny_model_dir, data_dir, out, method, params, **kw):
    """On CPU even where there is a GPU: these tests compare with references computed on CPU (the CUDA runs
    are the device_precision tests')."""
    base = dict(model=str(tiny_model_dir), task="rte", shots=8, epochs=3, limit=16, eval_sample=8, data_dir=str(data_dir),
                out=str(out), progress=False, method=method, params=params, lr=LR[params], warmup_ratio=0.0, precision="fp32",
                train_batch_size=4, device="cpu")
    return TrainConfig(**{**base, **kw})


def changed(before: dict, model: torch.nn.Module) -> set[str]:
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach() for n, p in model.named_parameters()}
    return {n for n, p in after.items() if n not in before or not torch.equal(before[n], p)}


@pytest.mark.parametrize("method,params", MATRIX)
def test_only_intended_parameters_change_and_adapter_round_trips(tiny_any_dir, data_dir, tmp_path, method, params):
    """For a Llama, then a Gemma 3 (no biases: BitFit adds them; sliding-window layers)."""
    before = {n: p.detach().clone() for n, p in load_model(str(tiny_any_dir), "fp32", "cpu").model.named_parameters()}
    rec, model, head = train_model(cfg_for(tiny_any_dir, data_dir, tmp_path, method, params))
    moved = changed(before, model)
    assert moved, "training changed nothing"
    if params == "full":
        assert any("layers.0.self_attn.q_proj.weight" in n for n in moved)
    elif params == "lora":
        assert moved and all("lora_" in n for n in moved), moved
    elif params == "bitfit":
        assert moved and all(n.endswith(".bias") for n in moved), moved
        assert not any("embed" in n or "lm_head" in n for n in moved)
    elif params == "ia3":
        assert moved and all("ia3_" in n for n in moved), moved
    assert (head is not None) == (method == "head")
    tp = rec["trainable_parameters"]
    assert 0 < tp["trainable"] <= tp["total"] and (params == "full") == (tp["share"] > 0.5)
    assert len(rec["curve"]) == 3 and set(rec["curve"][0]["metrics"]) == {"rte", "hans"}
    # save -> load -> the same predictions as at the end of training
    ev = evaluate(EvalConfig(model=str(tiny_any_dir), task="rte", adapter=rec["adapter"]["path"], limit=16,
                             data_dir=str(data_dir), out=str(tmp_path / "ev"), progress=False, precision="fp32", device="cpu"))
    for split in ("rte", "hans"):
        assert ev["metrics"][split]["predicted_share"] == rec["metrics"][split]["predicted_share"]
        assert ev["metrics"][split]["accuracy"] == rec["metrics"][split]["accuracy"]
    on_disk = json.loads(open(rec["path"]).read())
    assert on_disk["measure"]["train"]["tokens"] > 0 and on_disk["adapter"]["bytes"] > 0


def test_train_end_to_end(tiny_model_dir, data_dir, tmp_path, device_precision):
    """Distill-LoRA on each device (CPU; CUDA in fp32 and bf16 where there is a GPU): the record names the
    device and dtype, the loss and the weights stay finite, and in fp32 the saved adapter, loaded again on
    the same device, answers exactly as training ended."""
    device, precision = device_precision
    rec, model, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "distill", "lora", epochs=2, transfer_size=16,
                                        device=device, precision=precision))
    assert rec["model"]["device"].startswith(device) and rec["model"]["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert len(rec["curve"]) == 2 and all(math.isfinite(c["loss"]) for c in rec["curve"])
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.device.type == device and torch.isfinite(p).all() for p in trained)
    if precision == "fp32":
        ev = evaluate(EvalConfig(model=str(tiny_model_dir), task="rte", adapter=rec["adapter"]["path"], limit=16, data_dir=str(data_dir),
                                 out=str(tmp_path / "ev"), progress=False, precision="fp32", device=device))
        assert all(ev["metrics"][s]["accuracy"] == rec["metrics"][s]["accuracy"] for s in ("rte", "hans"))


def test_saved_lora_loads_in_peft(tiny_model_dir, data_dir, tmp_path):
    from peft import PeftModel

    rec, model, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", epochs=1))
    base = load_model(str(tiny_model_dir), "fp32", "cpu").model
    loaded = PeftModel.from_pretrained(base, rec["adapter"]["path"])
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_loss_falls_on_the_few_shot_set(tiny_model_dir, data_dir, tmp_path):
    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", epochs=12, lr=3e-2, eval_sample=2, ood=False))
    losses = [c["loss"] for c in rec["curve"]]
    assert losses[-1] < 0.5 * losses[0], losses


def test_lora_at_initialisation_gives_base_logits(tiny_model_dir):
    from engrain.params import ParamSpec, apply_params

    base = load_model(str(tiny_model_dir), "fp32", "cpu").model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    ref = base(input_ids=ids).logits
    peft_model = apply_params(base, ParamSpec("lora", lora_r=4))
    torch.testing.assert_close(peft_model(input_ids=ids).logits, ref)


def test_bitfit_at_initialisation_gives_base_logits(tiny_model_dir):
    from engrain.params import add_bitfit

    base = load_model(str(tiny_model_dir), "fp32", "cpu").model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    ref = base(input_ids=ids).logits
    assert add_bitfit(base) > 0
    torch.testing.assert_close(base(input_ids=ids).logits, ref)


@pytest.mark.parametrize("params", ["lora", "ia3", "bitfit", "full"])
def test_frozen_weights_held_in_bf16_give_the_same_loss_and_gradients(tiny_model_dir, params):
    """Autocast casts every frozen fp32 weight to bf16 at each forward; holding it in bf16 instead must
    change no bit of the loss or of any gradient, and leave the trainable, embedding and norm weights fp32."""
    from engrain.params import ParamSpec, apply_params, decoder_linears, hold_frozen_in

    def adapted(cast: bool):
        model = apply_params(load_model(str(tiny_model_dir), "fp32", "cpu").model, ParamSpec(params, lora_r=4))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # trained-looking adapters, so every gradient is non-zero
            for p in model.parameters():
                if p.requires_grad and params != "full":
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if params == "ia3" else 0.0))
        return model, (hold_frozen_in(model, torch.bfloat16) if cast else 0)

    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).long()
    results = []
    for cast in (False, True):
        model, n = adapted(cast)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 4]))
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}, model, n))
    (loss0, grads0, _, _), (loss1, grads1, model, n) = results
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and all(torch.equal(grads0[k], grads1[k]) for k in grads0)
    frozen = [p for _, lin in decoder_linears(model) for p in (lin.weight, lin.bias) if p is not None and not p.requires_grad]
    assert (n > 0) == (params != "full") and n == sum(p.numel() for p in frozen)
    assert all(p.dtype is torch.bfloat16 for p in frozen)
    assert all(p.dtype is torch.float32 for name, p in model.named_parameters() if p.requires_grad or "norm" in name or "embed" in name)


def test_bf16_training_holds_frozen_weights_in_bf16_and_ends_as_it_did_in_fp32(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """PBFT-LoRA in bf16, end to end: the record says which weights are held in which dtype, and the losses,
    per-epoch points and final metrics are those of the same run with its frozen weights left in fp32."""
    import engrain.train

    def run(tag):
        rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path / tag, "pbft", "lora", epochs=2, precision="bf16", save=False))
        return rec

    held = run("held")
    monkeypatch.setattr(engrain.train, "hold_frozen_in", lambda model, dtype: 0)
    fp32 = run("fp32")
    assert held["trainable_parameters"]["frozen_by_dtype"]["bfloat16"] > 0
    assert set(fp32["trainable_parameters"]["frozen_by_dtype"]) == {"float32"}
    points = lambda rec: [{k: v for k, v in point.items() if k != "measure"} for point in rec["curve"]]  # noqa: E731 (times differ)
    assert points(held) == points(fp32) and len(points(held)) == 2 and held["metrics"] == fp32["metrics"]


@pytest.mark.parametrize("kw,message", [
    ({"epochs": 0}, r"--epochs must be an integer >= 1"),
    ({"lr": -1.0}, r"--lr must be > 0"),
    ({"params": "prefixx"}, r"--params must be one of full, lora, bitfit, ia3"),
    ({"method": "icl"}, r"--method must be one of pbft, head"),
    ({"params": "bitfit", "target_modules": "q_proj"}, r"--target-modules applies to --params lora or ia3"),
    ({"shots": 0}, r"--shots must be an integer >= 1"),
    ({"warmup_ratio": 2.0}, r"--warmup-ratio must be in \[0, 1\]"),
])
def test_bad_options_fail_before_loading(kw, message):
    with pytest.raises(EngrainError, match=message):
        TrainConfig(model="/no/such/model", **kw)


def test_target_modules_matching_nothing(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(EngrainError, match=r"--target-modules 'query' matches no layer of this model"):
        train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", target_modules="query"))
    assert not list(tmp_path.iterdir())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ends_identical_on_both_ranks(tiny_model_dir, data_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): the same code, weights identical on both ranks."""
    import subprocess
    import sys
    from pathlib import Path

    launcher = Path(sys.executable).with_name("accelerate")
    for attempt in range(2):  # the first torch.distributed start on these machines has been seen to abort once
        out = tmp_path / f"try{attempt}"
        cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(Path(__file__).with_name("ddp_worker.py")), str(tiny_model_dir), str(data_dir), str(out)]
        # CPU processes even where there is a GPU: two ranks on one GPU would not start (NCCL).
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["sha"] == ranks[1]["sha"]
    assert ranks[0]["steps"] == 4  # 8 examples / (2 per process x 2 processes) x 2 epochs
    assert len(list(out.glob("train-*.json"))) == 1, "only the main process writes the record"
    # evaluation is split: each rank scored part of every set, and both hold the metrics of the whole sets, which are
    # what one process scores from the saved adapter
    record = json.loads(next(out.glob("train-*.json")).read_text())
    # 2 per-epoch samples of 4 per set, then the final 8 per set, over rte and hans: 32 queries, half on each rank
    assert [r["scored"] for r in ranks] == [16, 16] and ranks[0]["processes"] == 2
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == record["metrics"]
    single = evaluate(EvalConfig(model=str(tiny_model_dir), task="rte", adapter=record["adapter"]["path"], limit=8, data_dir=str(data_dir),
                                 out=str(tmp_path / "ev"), progress=False, precision="fp32", device="cpu"))
    for split in record["metrics"]:
        assert single["metrics"][split]["accuracy"] == record["metrics"][split]["accuracy"]
        assert single["metrics"][split]["predicted_share"] == record["metrics"][split]["predicted_share"]


@pytest.mark.parametrize("method", ["pbft", "distill"])
@pytest.mark.parametrize("task,ood", [("mnli", "hans"), ("qqp", "paws-qqp"), ("cola", "cola-ood"), ("mnli3", "hans")])
def test_trains_on_every_task_family(tiny_model_dir, data_dir, tmp_path, task, ood, method):
    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, method, "lora", task=task, epochs=1, shots=6, limit=6, transfer_size=8))
    assert set(rec["metrics"]) == {task, ood}
    assert rec["metrics"][ood]["n"] == 6 and (tmp_path / rec["name"] / "adapter_model.safetensors").is_file()


def test_no_save_writes_only_the_record(tiny_model_dir, data_dir, tmp_path):
    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", epochs=1, save=False))
    assert "adapter" not in rec and [p.name for p in tmp_path.iterdir()] == [f"{rec['name']}.json"]


@pytest.mark.parametrize("method,params", [("pbft", "lora"), ("head", "bitfit"), ("pbft", "full")])
def test_bf16_round_trip_gives_the_same_predictions(tiny_model_dir, data_dir, tmp_path, method, params):
    from engrain import EvalConfig, evaluate

    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, method, params, epochs=1, precision="bf16"))
    ev = evaluate(EvalConfig(model=str(tiny_model_dir), task="rte", adapter=rec["adapter"]["path"], limit=16,
                             data_dir=str(data_dir), out=str(tmp_path / "ev"), progress=False, precision="bf16"))
    assert ev["config"]["model"] == str(tiny_model_dir)  # the adapter's base model
    for split in ("rte", "hans"):
        assert ev["metrics"][split] == rec["metrics"][split]


def test_inference_copy(tiny_model_dir):
    from engrain.models import inference_copy

    lm = load_model(str(tiny_model_dir), "fp32", "cpu")
    fast = inference_copy(lm.model, torch.bfloat16)
    assert fast.model.layers[0].self_attn.q_proj.weight.dtype is torch.bfloat16
    assert fast.get_output_embeddings().weight.dtype is torch.float32
    assert lm.model.model.layers[0].self_attn.q_proj.weight.dtype is torch.float32  # the original is untouched
    assert inference_copy(lm.model, torch.float32) is lm.model
    # the buffers keep their dtype, as from_pretrained(dtype=bf16) keeps them (the rotary frequencies: fp32)
    loaded = load_model(str(tiny_model_dir), "bf16", "cpu").model
    assert {n: b.dtype for n, b in fast.named_buffers()} == {n: b.dtype for n, b in loaded.named_buffers()}
    assert fast.model.rotary_emb.inv_freq.dtype is torch.float32
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.corrcoef(torch.stack([fast(input_ids=ids).logits[0, -1], lm.model(input_ids=ids).logits[0, -1]]))[0, 1] > 0.99


def test_two_runs_in_one_process_with_different_settings(tiny_model_dir, data_dir, tmp_path):
    a, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path / "a", "pbft", "lora", epochs=1, precision="bf16", grad_accum=1))
    b, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path / "b", "pbft", "lora", epochs=1, precision="fp32", grad_accum=2))
    assert a["measure"]["train"]["steps"] == 2 and b["measure"]["train"]["steps"] == 1  # 8 examples, batch 4


# ---------------------------------------------------------------------------- review fixes (issue 13)


def test_pbft_is_not_refused_for_demonstrations_it_never_sees(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """PBFT trains on each example alone: the k examples as one ICL context may exceed the window."""
    from engrain.models import LoadedModel

    monkeypatch.setattr(LoadedModel, "max_length", property(lambda self: 1024))  # the 16-shot context is ~2,800 tokens
    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", shots=16, epochs=1, limit=4, eval_sample=2))
    assert rec["measure"]["train"]["steps"] == 4
    # ... while a distillation teacher (queries after the whole context) is still refused, before any compute
    with pytest.raises(EngrainError, match=r"prompt too long for the model: \d+ context tokens"):
        train_model(cfg_for(tiny_model_dir, data_dir, tmp_path / "d", "distill", "lora", shots=16, epochs=1, limit=4))


def test_the_evaluation_sample_is_the_same_for_every_seed(data_dir):
    from engrain.evaluation import eval_sets
    from engrain.tasks import get_task

    spec = get_task("mnli")
    lines = [[[ex["line"] for ex in exs] for _, exs, _ in eval_sets(spec, EvalConfig(task="mnli", seed=s, sample=50, data_dir=str(data_dir)))]
             for s in (0, 1, 2)]
    assert lines[0] == lines[1] == lines[2] and len(lines[0][1]) == 50  # mnli and hans
    other = eval_sets(spec, EvalConfig(task="mnli", sample=50, sample_seed=7, data_dir=str(data_dir)))
    assert [ex["line"] for ex in other[0][1]] != lines[0][0]


def test_per_epoch_evaluation_sample_ignores_the_training_seed(tiny_model_dir, data_dir, tmp_path):
    from engrain.train import per_epoch_sets

    a, b = (cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", seed=s, limit=None, eval_sample=30) for s in (0, 1))
    from engrain.evaluation import eval_sets
    from engrain.tasks import get_task

    sets = eval_sets(get_task("rte"), a)
    pick = lambda cfg: [[ex["line"] for ex in exs] for _, exs, _ in per_epoch_sets(sets, cfg)]  # noqa: E731
    assert pick(a) == pick(b) and len(pick(a)[1]) == 30


def _train_flops(rec) -> float:
    tr = rec["measure"]["train"]
    return tr["mfu"] * rec["measure"]["matmul_peak_tflops"] * 1e12 * tr["seconds"]


def test_training_flops_count_no_weight_gradients_for_frozen_weights(tiny_model_dir, data_dir, tmp_path):
    """Training FLOPs = 3 x forward (PaLM's count), less the weight gradients (2 x params x tokens) of frozen weights."""
    from engrain.measure import FlopModel

    full, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path / "f", "pbft", "full", epochs=1, save=False))
    lora, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path / "l", "pbft", "lora", epochs=1, save=False))
    tokens = full["measure"]["train"]["tokens"]
    assert tokens == lora["measure"]["train"]["tokens"]
    base = load_model(str(tiny_model_dir), "fp32", "cpu").model
    body = FlopModel.of(base).body_params
    n_lora = lora["trainable_parameters"]["trainable"]
    # LoRA's forward adds 2 x n_lora per token, its backward computes weight gradients only for the n_lora
    expected = _train_flops(full) - 2 * body * tokens + 3 * 2 * n_lora * tokens
    assert _train_flops(lora) == pytest.approx(expected, rel=1e-6)


def test_train_time_and_memory_leave_out_the_evaluations(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Per-epoch evaluation (its model copy, the matmul-peak probe) is not training: not in its seconds or peak."""
    import time

    import engrain.models
    from engrain.measure import rss_bytes

    real, seen = engrain.models.inference_copy, []

    def slow_copy(model, dtype):
        seen.append(rss_bytes())
        ballast = torch.ones(128, 2**20)  # 512 MiB, touched
        time.sleep(0.6)
        del ballast
        return real(model, dtype)

    monkeypatch.setattr(engrain.models, "inference_copy", slow_copy)
    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", epochs=2, save=False))
    tr = rec["measure"]["train"]
    assert len(seen) == 3  # two per-epoch points and the final evaluation
    assert tr["seconds"] < 0.6, tr
    assert tr["peak_memory_mb"] < max(seen) / 2**20 + 256, (tr, [s / 2**20 for s in seen])


def test_inference_copy_never_holds_a_second_fp32_copy():
    """bf16 inference copy of fp32 weights: the transient peak is the bf16 copy, not fp32 + bf16."""
    import gc

    from transformers import LlamaConfig, LlamaForCausalLM

    from engrain.measure import Meter, rss_bytes
    from engrain.models import inference_copy

    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=8))
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20  # ~ 260 MiB
    gc.collect()
    start = rss_bytes()
    with Meter() as m:
        copy_ = inference_copy(model, torch.bfloat16)
    assert copy_.model.layers[0].mlp.up_proj.weight.dtype is torch.bfloat16
    grew = (m.peak_bytes - start) / 2**20
    assert grew < 0.75 * fp32_mb, (grew, fp32_mb)  # the bf16 copy is 0.5 x; a transient fp32 copy makes it 1.5 x


def test_an_adapter_from_a_task_with_other_labels_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    from engrain.cli import main

    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "head", "lora", epochs=1, limit=4, eval_sample=2))
    with pytest.raises(EngrainError, match=r"trained on task rte \(labels entailment, not_entailment\); task mnli3 has labels"):
        evaluate(EvalConfig(model=str(tiny_model_dir), task="mnli3", adapter=rec["adapter"]["path"], limit=4,
                            data_dir=str(data_dir), out=str(tmp_path / "ev"), progress=False, precision="fp32"))
    capsys.readouterr()
    assert main(["eval", "--task", "mnli3", "--adapter", rec["adapter"]["path"], "--data-dir", str(data_dir), "--out", ""]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # the same labels under another task name (an MNLI-trained model on RTE, say) are allowed
    ev = evaluate(EvalConfig(task="mnli", adapter=rec["adapter"]["path"], limit=4, ood=False, data_dir=str(data_dir), out="",
                             progress=False, precision="fp32"))
    assert ev["metrics"]["mnli"]["n"] == 4


def test_overwriting_an_adapter_never_loses_the_old_one(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import os

    import engrain.train as tr
    from engrain.train import save_adapter

    cfg = cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "bitfit", epochs=1, limit=4, eval_sample=2)
    rec, model, _ = train_model(cfg)
    target = tmp_path / rec["name"]
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real = os.replace

    def failing_replace(src, dst):
        if ".tmp" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(tr.os, "replace", failing_replace)
    lm = load_model(str(tiny_model_dir), "fp32", "cpu")
    with pytest.raises(OSError):
        save_adapter(model, None, cfg, lm, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_train_on_one_task_and_evaluate_on_another(tiny_model_dir, data_dir, tmp_path):
    """Training data and evaluation task are separate slots: MNLI's k examples, RTE (and HANS) evaluated."""
    rec, _, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", train_data="mnli", epochs=1, limit=4, eval_sample=2))
    assert "-k8-s0-from-mnli-" in rec["name"] and set(rec["metrics"]) == {"rte", "hans"}
    assert all(ex["line"].startswith("train.json:") for ex in rec["train_examples"])  # mnli/train.json, not rte/train.jsonl
    with pytest.raises(EngrainError, match=r"--train-data mnli3 has labels entailment, neutral, contradiction; --task rte has"):
        TrainConfig(model="x", task="rte", train_data="mnli3")


def test_a_token_level_method_plugs_in_through_the_registry(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """The loop carries per-token loss masks: a method that trains next-token loss on the hypothesis only
    runs through train_model unchanged, and its loss counts exactly the masked tokens."""
    import engrain.methods as methods
    from engrain.methods import token_nll
    from engrain.methods.base import indexed

    class HypothesisLM:
        name, head = "hyp-lm", None

        def __init__(self, items):
            self.items, self.record = indexed(items), {"hyp_tokens": sum(sum(it["loss_mask"]) for it in items)}

        @classmethod
        def build(cls, run):
            tok, items = run.lm.tokenizer, []
            for ex in run.shots:
                a = run.bos + tok(ex["premise"] + " ", add_special_tokens=False)["input_ids"]
                b = tok(ex["hypothesis"], add_special_tokens=False)["input_ids"]
                items.append({"input_ids": a + b, "loss_mask": [0] * len(a) + [1] * len(b)})
            return cls(items)

        def loss(self, model, batch):
            return token_nll(model, batch)

    monkeypatch.setitem(methods.REGISTRY, "pbft", HypothesisLM)  # under a name the config accepts
    rec, model, _ = train_model(cfg_for(tiny_model_dir, data_dir, tmp_path, "pbft", "lora", epochs=4, limit=4, eval_sample=2, lr=3e-2))
    assert rec["hyp_tokens"] > 0
    losses = [c["loss"] for c in rec["curve"]]
    assert losses[-1] < losses[0], losses

    # the masked mean is over the hypothesis tokens only: a hand computation on one item agrees
    item = HypothesisLM.build(type("R", (), {"lm": load_model(str(tiny_model_dir), "fp32", "cpu"), "bos": [1],
                                             "shots": [{"premise": "A cat sat.", "hypothesis": "A cat is sitting."}]})).items[0]
    from engrain.methods import collate

    batch = collate([item, {**item, "input_ids": item["input_ids"][:3], "loss_mask": [0, 0, 0]}], 0, "right")
    with torch.no_grad():
        got = token_nll(model, batch).item()
        ids = torch.tensor([item["input_ids"]])
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        targets = [(t - 1, ids[0, t].item()) for t, m in enumerate(item["loss_mask"]) if m and t > 0]
        want = -sum(logp[p, tok].item() for p, tok in targets) / len(targets)
    assert got == pytest.approx(want, rel=1e-4)


def test_training_is_followed_in_tensorboard(tiny_model_dir, data_dir, tmp_path):
    """--log-with tensorboard (Accelerate's tracker): loss and learning rate every step, the per-epoch and
    final accuracies, read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engrain.config import TrainConfig
    from engrain.train import train

    cfg = TrainConfig(model=str(tiny_model_dir), task="rte", shots=8, epochs=2, lr=1e-2, limit=6, eval_sample=4, train_batch_size=4,
                      precision="fp32", data_dir=str(data_dir), out=str(tmp_path), progress=False, save=False, log_with="tensorboard")
    rec = train(cfg)
    runs = list((tmp_path / "trackers" / "engrain").iterdir())  # the default --tracker-project
    assert [r.name for r in runs] == [rec["name"]]
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert len(loss) == rec["measure"]["train"]["steps"] == 4 and [e.step for e in loss] == [1, 2, 3, 4]
    # read from the device in batches (--log-every 10 > 4 steps: at the epochs' ends), logged at the steps they were taken
    assert [c["loss"] for c in rec["curve"]] == pytest.approx([(loss[0].value + loss[1].value) / 2, (loss[2].value + loss[3].value) / 2])
    assert len(events.Scalars("train/lr")) == 4
    per_epoch = [e.value for e in events.Scalars("eval/hans/accuracy")]
    assert per_epoch == pytest.approx([c["metrics"]["hans"]["accuracy"] for c in rec["curve"]])
    assert events.Scalars("final/rte/accuracy")[0].value == pytest.approx(rec["metrics"]["rte"]["accuracy"])


def test_an_unknown_or_missing_tracker_is_one_clear_error(monkeypatch):
    import importlib.util

    from engrain.config import TrainConfig
    from engrain.errors import EngrainError

    with pytest.raises(EngrainError, match="--log-with must be one of tensorboard, mlflow, wandb, got 'comet'"):
        TrainConfig(model="x", log_with="comet")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(EngrainError, match="--log-with mlflow needs the package mlflow: pip install mlflow"):
        TrainConfig(model="x", log_with="mlflow")


def test_training_forwards_on_cuda_leave_cudnn_attention_out():
    """pytorch/pytorch#196678: cuDNN's SDPA backward returns NaN gradients for left-padded bf16 batches on
    Hopper. Training forwards on CUDA pick from the other kernels; on CPU nothing changes."""
    from engrain.forward import training_attention

    assert torch.backends.cuda.cudnn_sdp_enabled()
    with training_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the block
    with training_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("length", [64, 192])  # 64 mod 128: the lengths where cuDNN's backward failed
def test_a_left_padded_bf16_training_step_on_cuda_has_finite_gradients(tiny_model_dir, length):
    from engrain.forward import training_attention
    from engrain.methods import collate, forward_last

    lm = load_model(str(tiny_model_dir), "fp32", "cuda")
    items = [{"input_ids": list(range(5, 5 + length))}, {"input_ids": list(range(5, 5 + length // 2))}]  # row 2: left pads
    batch = {k: v.cuda() for k, v in collate(items, lm.tokenizer.pad_token_id, "left").items()}
    with torch.autocast("cuda", dtype=torch.bfloat16), training_attention(torch.device("cuda")):
        logits = forward_last(lm.model, batch)[0].float()
    logits.log_softmax(-1)[:, 7].mean().backward()
    grads = [p.grad for p in lm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_each_run_gets_its_own_device_in_one_process(monkeypatch):
    """Accelerate's state is process-wide: a run after one on another device (the Python API; a GPU
    machine's test session, CPU and CUDA runs mixed) must not inherit it. A state made on the meta
    device stands in for a GPU."""
    from accelerate.state import AcceleratorState, PartialState

    from engrain.train import make_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "meta")
    assert PartialState().device.type == "meta"
    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE")
    acc = make_accelerator(TrainConfig(model="x", device="cpu"), torch.device("cpu"))
    assert acc.device.type == "cpu" and "ACCELERATE_TORCH_DEVICE" not in os.environ


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_every_run_logs_into_one_tracker_project_named_as_its_record(tracker):
    from types import SimpleNamespace

    from engrain.config import TrainConfig
    from engrain.results import run_name
    from engrain.train import start_tracking

    calls = []
    cfg = TrainConfig(model="m", task="rte", method="pbft", params="lora", tracker_project="nli-sweep")
    cfg.log_with = tracker  # set after validation: the tracker's package need not be installed to see what engrain asks of it
    start_tracking(SimpleNamespace(cfg=cfg, acc=SimpleNamespace(init_trackers=lambda *a, **k: calls.append((a, k)))))
    (args, kw), = calls
    name = run_name("train", "pbft", cfg)
    assert args == ("nli-sweep",) and kw["init_kwargs"] == {"wandb": {"name": name}, "mlflow": {"run_name": name}}
    assert kw["config"]["lr"] == cfg.lr and kw["config"]["tracker_project"] == "nli-sweep"
