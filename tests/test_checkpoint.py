"""Checkpoints inside a run (engrain.checkpoint): a run killed after a checkpoint and resumed ends exactly as
an uninterrupted run of the same config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import engrain.train as tr
from engrain.config import TrainConfig
from engrain.errors import EngrainError
from engrain.train import train_model


def config(tiny_model_dir, out, data_dir, **kw):
    base = dict(model=str(tiny_model_dir), precision="fp32", device="cpu", out=str(out), progress=False, save=True, save_every=3,
                seed=1, data_dir=str(data_dir))
    return TrainConfig(**{**base, **kw})


KINDS = {
    "cpt-documents": dict(task="facts", method="cpt", params="lora", epochs=2, lr=1e-2, limit=8, eval_sample=4, qa_train="train",
                          qa_first=1),
    "pbft-labelled": dict(task="rte", method="pbft", params="lora", shots=16, epochs=3, lr=1e-2, limit=8, eval_sample=4, ood=False,
                          train_batch_size=4, lora_dropout=0.1),
    # fp16: the grad scaler's scale and growth tracker resume with the checkpoint
    "pbft-fp16": dict(task="rte", method="pbft", params="lora", shots=16, epochs=3, lr=1e-2, limit=8, eval_sample=4, ood=False,
                      train_batch_size=4, precision="fp16"),
}


def weights(record) -> dict:
    return load_file(f"{record['adapter']['path']}/adapter_model.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_run_resumes_to_the_uninterrupted_result(tiny_model_dir, data_dir, tmp_path, monkeypatch, kind):
    whole, _, _ = train_model(config(tiny_model_dir, tmp_path / "whole", data_dir, **KINDS[kind]))
    assert not (tmp_path / "whole" / "checkpoints" / whole["name"]).exists()  # removed once the record is written
    calls, step = [0], tr.train_step

    def dies_at_the_eighth_step(*a, **k):
        calls[0] += 1
        if calls[0] == 8:
            raise KeyboardInterrupt  # killed mid-epoch, two steps after the checkpoint of step 6
        return step(*a, **k)

    monkeypatch.setattr(tr, "train_step", dies_at_the_eighth_step)
    cfg = config(tiny_model_dir, tmp_path / "killed", data_dir, **KINDS[kind])
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg)
    latest = tmp_path / "killed" / "checkpoints" / whole["name"] / "latest"
    assert json.loads((latest / "loop.json").read_text())["step"] == 6 and not (tmp_path / "killed" / f"{whole['name']}.json").exists()
    if cfg.precision == "fp16":  # the grad scaler is in the checkpoint
        assert torch.load(latest / "custom_checkpoint_0.pkl", weights_only=False)["scale"] > 1
    monkeypatch.setattr(tr, "train_step", step)
    resumed, _, _ = train_model(config(tiny_model_dir, tmp_path / "killed", data_dir, resume=True, **KINDS[kind]))
    assert resumed["measure"]["train"]["resumed_from_step"] == 6 and resumed["measure"]["train"]["steps"] == whole["measure"]["train"]["steps"]
    assert resumed["metrics"] == whole["metrics"]
    assert [(p["step"], p["loss"], p["metrics"]) for p in resumed["curve"]] == [(p["step"], p["loss"], p["metrics"]) for p in whole["curve"]]
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["measure"]["train"]["tokens"] == whole["measure"]["train"]["tokens"]
    assert resumed["measure"]["train"].get("loss_scale") == whole["measure"]["train"].get("loss_scale")


def test_resume_without_a_checkpoint_starts_afresh_and_another_configs_checkpoint_is_refused(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    kw = dict(KINDS["cpt-documents"], qa_first=0)
    rec, _, _ = train_model(config(tiny_model_dir, tmp_path, data_dir, resume=True, keep_checkpoints=True, **kw))
    assert "resumed_from_step" not in rec["measure"]["train"]
    latest = tmp_path / "checkpoints" / rec["name"] / "latest"
    assert (latest / "loop.json").is_file()  # kept (--keep-checkpoints)
    state = json.loads((latest / "loop.json").read_text())
    state["config"]["lr"] = 0.5
    (latest / "loop.json").write_text(json.dumps(state))
    with pytest.raises(EngrainError, match=r"is a checkpoint of another config \(differs in: lr\)"):
        train_model(config(tiny_model_dir, tmp_path, data_dir, resume=True, **kw))
