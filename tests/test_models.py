"""Model resolution, precision and loading (tiny in-process models; the real ones are in test_real.py)."""

from __future__ import annotations

import pytest
import torch

from engrain.errors import EngrainError
from engrain.models import cpu_has_bf16, load_model, resolve_dtype, resolve_source


def test_unknown_name_lists_aliases():
    with pytest.raises(EngrainError, match=r"unknown model 'smolm2'\. Did you mean 'smollm2-135m'\? Known: gemma3-270m, smollm2-135m"):
        resolve_source("smolm2")


def test_folder_without_config(tmp_path):
    with pytest.raises(EngrainError, match="has no config.json"):
        resolve_source(str(tmp_path))


def test_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(EngrainError, match="neither a model folder nor a .gguf file"):
        resolve_source(str(f))


def test_hub_id_is_recognised():
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == ("hub", "HuggingFaceTB/SmolLM2-135M")


def test_unreachable_hub_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import: the env alone is too late
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(EngrainError, match="could not load model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model", precision="fp32", device="cpu")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) is torch.float32
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    assert resolve_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    with pytest.raises(EngrainError, match="unknown precision"):
        resolve_dtype("fp16x", cpu)


def test_bf16_body_with_fp32_head(tiny_model_dir, tiny):
    lm = load_model(str(tiny_model_dir), precision="bf16", device="cpu")
    assert lm.model.model.layers[0].mlp.up_proj.weight.dtype is torch.bfloat16
    head = lm.model.get_output_embeddings()
    assert head.weight.dtype is torch.float32
    assert head.weight.data_ptr() != lm.model.get_input_embeddings().weight.data_ptr()  # an fp32 copy
    ids = tiny.tokenizer(["The cat sat on the mat. Yes or No? answer:"], return_tensors="pt")["input_ids"]
    low = lm.model(input_ids=ids).logits[0, -1]
    ref = tiny.model(input_ids=ids).logits[0, -1]
    assert low.dtype is torch.float32
    # bf16 body: close to the fp32 model, and the fp32 head leaves logits off the bf16 grid.
    assert torch.corrcoef(torch.stack([low, ref]))[0, 1] > 0.99
    assert not torch.equal(low, low.bfloat16().float())
