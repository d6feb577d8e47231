"""The `engrain` command: a real run writes its record; bad input is one line on stderr and exit 2."""

from __future__ import annotations

import json

import pytest

from engrain.cli import main


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_prints_table_and_writes_record(tiny_model_dir, data_dir, tmp_path, capsys):
    code, out, err = run(
        capsys, "eval", "--model", str(tiny_model_dir), "--task", "rte", "--shots", "2", "--limit", "6",
        "--precision", "fp32", "--data-dir", str(data_dir), "--out", str(tmp_path), "--no-progress",
    )
    assert code == 0, err
    assert "rte" in out and "hans" in out and "lexical_overlap" in out
    records = list(tmp_path.glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["config"]["limit"] == 6 and rec["method"] == "icl"


def test_yaml_config_and_flag_override(tiny_model_dir, data_dir, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ntask: rte\nshots: 2\nlimit: 3\nprecision: fp32\nood: false\nprogress: false\ndata-dir: {data_dir}\n")
    code, _, err = run(capsys, "eval", "--config", str(cfg), "--limit", "4", "--out", str(tmp_path / "o"))
    assert code == 0, err
    rec = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    assert rec["config"]["limit"] == 4 and set(rec["metrics"]) == {"rte"}


def test_lists(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == 0 and "paws-qqp" in out and "cola-ood" in out and "facts[:SEED]" in out
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2-135m" in out and "gemma3-270m" in out


BAD = [
    (["--task", "rtee"], r"unknown task 'rtee'\. Did you mean 'rte'"),
    (["--model", "smollm3"], r"unknown model 'smollm3'\. Did you mean 'smollm2-135m'"),
    (["--model", "/no/such/model.gguf"], r"GGUF file not found: /no/such/model.gguf"),
    (["--template", "{premise} {question}"], r"format placeholder \{question\} is not a field of task rte"),
    (["--format", "gpt3"], r"unknown format for task rte 'gpt3'\. Did you mean 'gpt-3'"),
    (["--shots", "99999"], r"--shots 99999 is larger than the rte train split"),
    (["--shots", "-1"], r"--shots must be an integer >= 0"),
    (["--limit", "0"], r"--limit must be an integer >= 1"),
    (["--precision", "fp8"], r"--precision must be one of auto, bf16, fp16, fp32"),
    (["--task", "hans", "--shots", "4"], r"task hans has no train split"),
    (["--shots", "many"], r"argument --shots: invalid int value: 'many'"),
    (["--config", "/no/such.yaml"], r"config file not found: /no/such.yaml"),
    (["--adapter", "/no/such/adapter"], r"/no/such/adapter is not an engrain adapter folder"),
    (["--device", "tpu"], r"unknown device 'tpu'; expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], r"--device cuda:99: (this machine has no CUDA device|there are \d+ CUDA devices)"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_exit_2(data_dir, tmp_path, capsys, argv, message):
    import re

    code, _, err = run(capsys, "eval", "--data-dir", str(data_dir), "--out", str(tmp_path), "--no-progress", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engrain: error:"), err
    assert re.search(message, lines[0]), lines[0]
    assert not list(tmp_path.iterdir()), "a failed run writes nothing"


def test_bad_data_file_is_one_line_and_keeps_old_record(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "rte").mkdir(parents=True)
    (data / "rte" / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "entailment"}\n')
    (data / "rte" / "val.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "yes"}\n')
    out = tmp_path / "runs"
    out.mkdir()
    old = out / "eval-rte-icl-x-k0-s0.json"
    old.write_text('{"keep": true}')
    code, _, err = run(capsys, "eval", "--model", str(tiny_model_dir), "--shots", "0", "--data-dir", str(data), "--out", str(out))
    assert code == 2
    assert err.strip() == f"engrain: error: {data}/rte/val.jsonl:1: unknown label 'yes'; expected one of 'entailment', 'not_entailment'"
    assert [p.name for p in out.iterdir()] == [old.name] and old.read_text() == '{"keep": true}'


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], r"--epochs must be an integer >= 1"),
    (["--params", "loraa"], r"--params must be one of full, lora, bitfit, ia3, prefix"),
    (["--method", "distill", "--alpha", "2"], r"--alpha must be in \[0, 1\]"),
    (["--adapter", "x"], r"unrecognized arguments: --adapter x"),
])
def test_train_bad_options_exit_2_before_loading(tmp_path, capsys, argv, message):
    import re

    code, _, err = run(capsys, "train", "--model", "/no/such/model", "--out", str(tmp_path), *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not list(tmp_path.iterdir())


def test_python_dash_m_engrain_is_the_command(tmp_path):
    """``python -m engrain`` (no console script needed, e.g. on a machine with only PYTHONPATH=src)
    passes main's exit code through: 2 and one line for bad input."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "engrain", "report", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "missing" in p.stderr
