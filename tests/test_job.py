"""`engrain run`, the main job: every method on the facts benchmark, one table, a report and a plot."""

from __future__ import annotations

import pytest

from engrain.job import MAIN, main_spec, run_main


def small_spec(tiny_model_dir, data_dir, out):
    spec = main_spec(out=str(out), model=str(tiny_model_dir))
    spec["base"].update(precision="fp32", data_dir=str(data_dir), progress=False)
    for run in spec["runs"]:
        if run["method"] != "icl":
            run.update(epochs=1, eval_sample=8, lr=1e-2)
        if run["method"] == "distill":
            run.update(gen_tokens=6, samples_per_chunk=1)
    return spec


def test_the_main_job_compares_every_method_and_resumes(tiny_model_dir, data_dir, tmp_path):
    lines: list[str] = []
    result = run_main(small_spec(tiny_model_dir, data_dir, tmp_path / "main"), echo=lines.append, isolate=False)
    assert lines[0] == "5 runs planned, 0 done, 5 to run"
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["base (closed book)", "open book (ICL)", "cpt-lora s0", "cft-lora s0", "distill-lora-n1-g6 s0"]
    for name in ("cpt-lora s0", "cft-lora s0", "distill-lora-n1-g6 s0"):
        row = rows[name]
        assert row["adapt s"] > 0 and row["vs open book"] > 0 and 0 <= row["RTE 16-shot"] <= 1 and row["held-out ppl"] > 1
        assert {"verbatim", "paraphrase", "two-hop"} <= set(row)
    assert rows["distill-lora-n1-g6 s0"]["generating s"] > 0 and rows["cpt-lora s0"]["generating s"] == 0
    assert rows["open book (ICL)"]["vs open book"] is None and rows["open book (ICL)"]["RTE 16-shot"] is None
    assert rows["base (closed book)"]["RTE 16-shot"] is not None  # the base model's probes: every training run's "before"
    report = result["report"].read_text()
    assert report.count("\n| ") == 6 and "accuracy_vs_time.png" in report  # header + 5 rows, and the plot
    assert result["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines.clear()
    again = run_main(small_spec(tiny_model_dir, data_dir, tmp_path / "main"), echo=lines.append)
    assert lines == ["5 runs planned, 5 done, 0 to run"] and again["rows"] == result["rows"]


def test_the_default_job_is_the_facts_sweeps_seed_0():
    import yaml

    sweep = yaml.safe_load(open("configs/facts_docs.yaml"))
    swept = [{k: v for k, v in r.items() if k != "seed"} for r in sweep["runs"]]
    for run in MAIN["runs"]:
        mine = {k: v for k, v in run.items() if k not in ("forgetting", "eval_sample")}
        assert any(mine == {k: v for k, v in r.items() if k != "eval_sample"} for r in swept), run


def test_run_errors_are_one_line(capsys, tmp_path):
    from engrain.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {task: facts}\nruns: [{method: cpt, chunk_tokens: 4}]\n")
    assert main(["run", "--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--chunk-tokens must be an integer >= 8" in err
    assert main(["run", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_dry_run_lists_the_default_runs(capsys, tmp_path):
    from engrain.cli import main

    assert main(["run", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5 runs planned, 0 done, 5 to run" in out and "train-facts-distill-lora-smollm2-135m-s0" in out
    assert not list(tmp_path.iterdir())
