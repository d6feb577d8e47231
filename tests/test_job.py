"""`engrain run`, the main job: every method on the facts benchmark, one table, a report and a plot."""

from __future__ import annotations

from engrain.job import MAIN, main_spec, run_main


def small_spec(tiny_model_dir, data_dir, out):
    spec = main_spec(out=str(out), model=str(tiny_model_dir), profile="full")
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
    assert lines[0] == "8 runs planned, 0 done, 8 to run"
    rows = {r["method"]: r for r in result["rows"]}
    trained = ["cpt-lora s0", "cpt-lora-shuffled s0", "cft-lora s0", "cft-lora-shuffled s0", "distill-lora-n1-g6 s0",
               "distill-lora-n1-g6-shuffled s0"]
    assert list(rows) == ["chance", "corpus prior", "base (closed book)", "open book (ICL)", *trained]
    assert rows["chance"]["accuracy"] == rows["corpus prior"]["accuracy"] == 0.25  # facts v2: no prior beats chance
    for name in trained:
        row = rows[name]
        assert row["adapt s"] > 0 and row["vs open book"] > 0
        if "shuffled" in name:  # a control measures knowledge, not what training costs elsewhere
            assert row["RTE 16-shot"] is None
        else:
            assert 0 <= row["RTE 16-shot"] <= 1 and row["held-out ppl"] > 1
        assert {"verbatim", "paraphrase", "two-hop"} <= set(row) and "gap" in row  # gap recovery, per type too
        assert {"gap verbatim", "gap paraphrase", "gap two-hop"} <= set(row)
    assert rows["distill-lora-n1-g6 s0"]["generating s"] > 0 and rows["cpt-lora s0"]["generating s"] == 0
    assert rows["open book (ICL)"]["vs open book"] is None and rows["open book (ICL)"]["RTE 16-shot"] is None
    assert rows["base (closed book)"]["RTE 16-shot"] is not None  # the base model's probes: every training run's "before"
    report = result["report"].read_text()
    assert report.count("\n| ") == 11 and "accuracy_vs_time.png" in report  # header + 10 rows, and the plot
    assert "shuffled-facts control" in report and "min of work" in report and "(lora)" in report
    assert result["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines.clear()
    again = run_main(small_spec(tiny_model_dir, data_dir, tmp_path / "main"), echo=lines.append)
    assert lines == ["8 runs planned, 8 done, 0 to run"] and again["rows"] == result["rows"]


def test_the_default_job_is_the_facts_sweeps_seed_0():
    import yaml

    sweep = yaml.safe_load(open("configs/facts_docs.yaml"))
    swept = [{k: v for k, v in r.items() if k != "seed"} for r in sweep["runs"]]
    for run in MAIN["runs"]:  # exactly, so that the job's records are the sweep's seed 0
        assert run in swept, run


def test_the_job_is_sized_to_the_machine(monkeypatch):
    from engrain.job import auto_profile

    full, compact = main_spec(profile="full"), main_spec(profile="compact")
    assert [r["method"] for r in full["runs"]] == [r["method"] for r in compact["runs"]]  # the same comparison
    assert compact["out"] != full["out"]  # its records never meet the full job's
    assert sum(r.get("epochs", 0) for r in compact["runs"]) * 3 <= sum(r.get("epochs", 0) for r in full["runs"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU, with native bf16 or not
    assert auto_profile() == "compact" and main_spec()["out"] == compact["out"]
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert auto_profile() == "full" and main_spec()["out"] == full["out"]


def test_seed_and_a_seed_grid_are_refused(capsys, tmp_path):
    from engrain.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {task: facts}\ngrid: {seed: [0, 1]}\nruns: [{method: icl}]\n")
    assert main(["run", "--config", str(grid), "--seed", "3", "--dry-run"]) == 2
    assert "--seed 3 and the seed grid of" in capsys.readouterr().err


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
    import re

    assert "8 runs planned, 0 done, 8 to run" in out  # the profile this machine gets: n2 (full) or n1 (compact) texts per chunk
    assert re.search(r"train-facts-distill-lora-n[12]-shuffled-smollm2-135m-s0", out)
    assert not list(tmp_path.iterdir())
