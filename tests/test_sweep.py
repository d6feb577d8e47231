"""Sweeps run what is not done yet; reports aggregate seeds."""

from __future__ import annotations

import pytest

from engrain.cli import main
from engrain.errors import EngrainError
from engrain.report import summarize
from engrain.results import load_records
from engrain.sweep import plan, run_sweep


def write_sweep(tmp_path, tiny_model_dir, data_dir, extra=""):
    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / 'runs'}
base: {{model: {tiny_model_dir}, shots: 4, limit: 6, precision: fp32, device: cpu, progress: false, data_dir: {data_dir}, epochs: 1, eval_sample: 2}}
grid: {{seed: [0, 1]}}
runs:
  - {{method: icl}}
  - {{method: pbft, params: lora}}
{extra}""")
    return f


def test_sweep_runs_once_then_skips_and_reports(tiny_model_dir, data_dir, tmp_path, capsys):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    ran = run_sweep(f, echo=lambda *_: None, isolate=False)
    assert len(ran) == 4
    assert run_sweep(f, echo=lambda *_: None, isolate=False) == []  # everything recorded: nothing runs again
    records = load_records(tmp_path / "runs")
    assert {r["config"]["batch_size"] for r in records} == {16}  # unset: the CPU's default, recorded as chosen
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f.read_text().replace("epochs: 1,", "epochs: 1, batch_size: 16,"))
    assert run_sweep(pinned, echo=lambda *_: None, isolate=False) == []  # the same runs
    pinned.write_text(f.read_text().replace("epochs: 1,", "epochs: 1, batch_size: 4,"))
    with pytest.raises(EngrainError, match="different config .*batch_size"):
        run_sweep(pinned, echo=lambda *_: None, isolate=False)
    rows = summarize(records)
    assert [(r["method"], r["seeds"]) for r in rows] == [("icl", [0, 1]), ("pbft-lora", [0, 1])]
    assert "±" in rows[0]["in-domain"] and "hans:lexical_overlap" in rows[0]
    assert main(["report", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model | task | method |") and "pbft-lora" in out


def test_sweep_validates_every_run_before_running(tiny_model_dir, data_dir, tmp_path):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir, extra="  - {method: pbft, params: lora, lr: -1}\n")
    with pytest.raises(EngrainError, match="--lr must be > 0"):
        run_sweep(f, echo=lambda *_: None, isolate=False)
    assert not (tmp_path / "runs").exists()


def test_sweep_unknown_key(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x}\nruns:\n  - {method: pbft, paramz: lora}\n")
    with pytest.raises(EngrainError, match="unknown key in .*'paramz'"):
        plan(f)


def test_runs_that_would_share_a_record_are_rejected(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x, task: rte}\nruns:\n  - {method: pbft, params: lora, lr: 0.1}\n  - {method: pbft, params: lora, lr: 0.2}\n")
    with pytest.raises(EngrainError, match=r"two runs would write the same record .*differ in: lr"):
        plan(f)


def test_distill_options_are_in_the_name(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x, task: rte}\nruns:\n  - {method: distill}\n  - {method: distill, alpha: 0.5, temperature: 2.0}\n")
    names = [n for n, _ in plan(f)[1]]
    assert names == ["train-rte-distill-lora-x-k32-s0", "train-rte-distill-lora-T2.0-a0.5-x-k32-s0"]


def test_a_record_with_another_config_is_not_taken_as_done(tiny_model_dir, data_dir, tmp_path):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    run_sweep(f, echo=lambda *_: None, isolate=False)
    rec = next((tmp_path / "runs").glob("eval-*-s0-n6.json"))
    rec.write_text(rec.read_text().replace('"balanced": true', '"balanced": false'))  # recorded by some other config
    with pytest.raises(EngrainError, match="records a run with a different config .*balanced"):
        run_sweep(f, echo=lambda *_: None, isolate=False)


def test_options_added_later_count_as_their_defaults(tiny_model_dir, data_dir, tmp_path):
    import json

    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    run_sweep(f, echo=lambda *_: None, isolate=False)
    rec = next((tmp_path / "runs").glob("train-*-s0-n6.json"))
    data = json.loads(rec.read_text())
    del data["config"]["temperature"]  # as written by an engrain without that option
    rec.write_text(json.dumps(data))
    assert run_sweep(f, echo=lambda *_: None, isolate=False) == []


def test_report_into_a_marked_section(tiny_model_dir, data_dir, tmp_path, capsys):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    run_sweep(f, echo=lambda *_: None, isolate=False)
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- table:runs -->\nold\n<!-- /table:runs -->\nend\n")
    assert main(["report", str(tmp_path / "runs"), "--into", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n<!-- table:runs -->\n| model |") and "old" not in text and text.endswith("<!-- /table:runs -->\nend\n")


def test_an_entry_pinning_a_grid_key_runs_once(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x, task: rte}\ngrid: {shots: [16, 32]}\nruns:\n  - {method: icl, shots: 16}\n  - {method: distill}\n")
    names = [n for n, _ in plan(f)[1]]
    assert names == ["eval-rte-icl-x-k16-s0", "train-rte-distill-lora-x-k16-s0", "train-rte-distill-lora-x-k32-s0"]


def test_reuse_copies_identical_records_and_runs_the_rest(tiny_model_dir, data_dir, tmp_path):
    first = write_sweep(tmp_path, tiny_model_dir, data_dir)
    run_sweep(first, echo=lambda *_: None, isolate=False)
    second = tmp_path / "second.yaml"  # same runs, but the LoRA run trains for 2 epochs: only that one differs
    second.write_text(first.read_text().replace(f"out: {tmp_path / 'runs'}", f"out: {tmp_path / 'second'}\nreuse: [{tmp_path / 'runs'}]")
                      .replace("{method: pbft, params: lora}", "{method: pbft, params: lora, epochs: 2}"))
    lines: list[str] = []
    ran = run_sweep(second, echo=lines.append, isolate=False)
    assert sorted(ran) == sorted(n for n, _ in plan(second)[1] if n.startswith("train-"))
    assert sum(line.startswith("reused ") for line in lines) == 2
    icl = sorted((tmp_path / "second").glob("eval-*.json"))
    assert [p.read_text() for p in icl] == [(tmp_path / "runs" / p.name).read_text() for p in icl]
    assert run_sweep(second, echo=lambda *_: None, isolate=False) == []


def test_reuse_folder_must_exist(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"out: {tmp_path / 'o'}\nreuse: {tmp_path / 'nope'}\nbase: {{model: x, task: rte}}\n")
    with pytest.raises(EngrainError, match="reuse folder not found"):
        run_sweep(f, echo=lambda *_: None, isolate=False)


def test_report_separates_distillation_variants(tiny_model_dir, data_dir, tmp_path):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir, extra="  - {method: distill, transfer_size: 4}\n  - {method: distill, transfer_size: 4, alpha: 0.5}\n")
    run_sweep(f, echo=lambda *_: None, isolate=False)
    rows = {r["method"]: r for r in summarize(load_records(tmp_path / "runs"))}
    assert sorted(rows) == ["distill-lora", "distill-lora-a0.5", "icl", "pbft-lora"]
    assert rows["distill-lora"]["seeds"] == [0, 1] and rows["distill-lora"]["teacher s"] != "-"
    assert rows["icl"]["teacher s"] == "-"
    for r in rows.values():  # per-query speed-up over ICL with the same k, right after the in-domain time
        cols = list(r)
        assert cols[cols.index("in-domain ms/query") + 1] == "speed-up vs icl"
        want = float(rows["icl"]["in-domain ms/query"]) / float(r["in-domain ms/query"])
        assert float(r["speed-up vs icl"]) == pytest.approx(want, abs=0.051)
    assert rows["icl"]["speed-up vs icl"] == "1.0"


def test_the_cli_runs_each_run_in_its_own_process(tiny_model_dir, data_dir, tmp_path, capsys):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    f.write_text(f.read_text().replace("grid: {seed: [0, 1]}", "grid: {seed: [0]}"))
    assert main(["sweep", str(f)]) == 0
    assert len(load_records(tmp_path / "runs")) == 2
    assert run_sweep(f, echo=lambda *_: None, isolate=False) == []


def test_a_failing_isolated_run_stops_the_sweep_with_one_line(tiny_model_dir, data_dir, tmp_path, capsys):
    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    f.write_text(f.read_text().replace("grid: {seed: [0, 1]}", "grid: {seed: [0]}").replace("{method: icl}", "{method: icl, model: /nonexistent/model}"))
    assert main(["sweep", str(f)]) == 2
    err = capsys.readouterr().err
    assert "failed (exit code 2)" in err and not (tmp_path / "runs").exists()


def test_an_icl_entry_rejects_unknown_keys(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x, task: rte, epochs: 3}\nruns:\n  - {method: icl, shot: 4}\n  - {method: pbft}\n")
    with pytest.raises(EngrainError, match=r"unknown key in .*'shot'\. Did you mean 'shots'\?"):
        plan(f)


def test_an_icl_entry_rejects_training_options_of_its_own(tmp_path):
    """Training options shared through base/grid are for the training entries; in an icl entry they are a mistake."""
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x, task: rte, epochs: 3}\nruns:\n  - {method: icl, lr: 0.1}\n")
    with pytest.raises(EngrainError, match=r"'lr' is a training option; an icl entry .* trains nothing"):
        plan(f)
    f.write_text("base: {model: x, task: rte, epochs: 3}\nruns:\n  - {method: icl}\n  - {method: pbft}\n")
    assert len(plan(f)[1]) == 2


def test_a_record_from_before_the_fixed_evaluation_sample_is_not_taken_as_done(tiny_model_dir, data_dir, tmp_path):
    """Before sample_seed existed the evaluation sample was drawn with the run's seed: a seed-1 record of
    that time was scored on other examples; a seed-0 record on the same ones."""
    import json

    f = write_sweep(tmp_path, tiny_model_dir, data_dir)
    run_sweep(f, echo=lambda *_: None, isolate=False)
    for rec in (tmp_path / "runs").glob("*.json"):
        data = json.loads(rec.read_text())
        del data["config"]["sample_seed"]
        rec.write_text(json.dumps(data))
    (tmp_path / "runs" / "train-rte-pbft-lora-tiny-llama0-k4-s1-n6.json").unlink()
    (tmp_path / "runs" / "eval-rte-icl-tiny-llama0-k4-s1-n6.json").rename(tmp_path / "old.json")
    assert sorted(run_sweep(f, echo=lambda *_: None, isolate=False)) == ["eval-rte-icl-tiny-llama0-k4-s1-n6",
                                                                          "train-rte-pbft-lora-tiny-llama0-k4-s1-n6"]
    (tmp_path / "old.json").rename(tmp_path / "runs" / "eval-rte-icl-tiny-llama0-k4-s1-n6.json")
    with pytest.raises(EngrainError, match=r"records a run with a different config \(differs in: sample_seed\)"):
        run_sweep(f, echo=lambda *_: None, isolate=False)


def test_a_document_task_sweep_skips_what_it_recorded(tiny_model_dir, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"""out: {tmp_path / 'runs'}
base: {{model: {tiny_model_dir}, task: facts, precision: fp32, progress: false, limit: 8}}
runs:
  - {{method: icl}}
  - {{method: icl, open_book: true}}
  - {{method: cpt, params: lora, epochs: 1, eval_sample: 4}}
""")
    names = [n for n, _ in plan(f)[1]]
    assert names == ["eval-facts-closed-book-tiny-llama0-s0-n8", "eval-facts-open-book-tiny-llama0-s0-n8", "train-facts-cpt-lora-tiny-llama0-s0-n8"]
    assert sorted(run_sweep(f, echo=lambda *_: None, isolate=False)) == sorted(names)
    assert run_sweep(f, echo=lambda *_: None, isolate=False) == []
    rows = summarize(load_records(tmp_path / "runs"))
    assert [r["method"] for r in rows] == ["chance", "corpus prior", "longest choice", "closed-book", "open-book", "cpt-lora"]
    assert rows[1]["in-domain"] == "0.250" and "gap all" in rows[5]  # no-model rows first; gap recovery beside the trained one
    rows = rows[3:]
    assert rows[1]["speed-up vs icl"] == "1.0" and rows[0]["speed-up vs icl"] == "-" and rows[2]["speed-up vs icl"] != "-"
    assert {r["k"] for r in rows} == {"-"}  # no demonstrations in a document task


def test_every_shipped_config_is_valid():
    """Every experiment under configs/ plans (each run's config is built and so validated), without running."""
    from pathlib import Path

    from engrain.sweep import plan

    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        out, planned, _ = plan(path)
        assert planned and str(out).startswith("docs/results/"), path


# ---------------------------------------------------------------------------- parallel sweeps, killed and resumed


def _in_session(sid: int) -> list[int]:
    """PIDs of the live processes in session ``sid`` (the sweep and the runs it spawned)."""
    from pathlib import Path

    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session; skip zombies
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_a_parallel_sweep_killed_by_sigterm_and_sigkill_resumes_to_exactly_its_runs(tiny_model_dir, data_dir, tmp_path):
    """2 methods x 2 seeds x 2 shot counts with --jobs 2: stopped by SIGTERM, then by SIGKILL, mid-run; no
    run outlives the sweep, every record left is whole, and the third start ends with exactly the 8 runs."""
    import json
    import signal
    import subprocess
    import sys
    import time

    f = write_sweep(tmp_path, tiny_model_dir, data_dir).with_name("sweep.yaml")
    f.write_text(f.read_text().replace("grid: {seed: [0, 1]}", "grid: {seed: [0, 1], shots: [2, 4]}"))
    expected = {name for name, _ in plan(f)[1]}
    assert len(expected) == 8
    out = tmp_path / "runs"
    records = lambda: sorted(p.stem for p in out.glob("*.json")) if out.is_dir() else []  # noqa: E731

    def start_and_stop(sig) -> None:
        before = len(records())
        proc = subprocess.Popen([sys.executable, "-m", "engrain.cli", "sweep", str(f), "--jobs", "2"], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(records()) == before and time.time() < deadline:
            time.sleep(0.2)
        assert len(records()) > before, "no run finished in time"
        time.sleep(1.0)  # the next runs have started (a tiny run takes a few seconds): stop them mid-run
        proc.send_signal(sig)
        proc.wait(timeout=60)
        at_stop = records()
        deadline = time.time() + 10  # a run that outlived the sweep would finish (and write) within this
        while _in_session(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not _in_session(proc.pid), "a run outlived its sweep"
        assert records() == at_stop, "a run went on after its sweep was stopped"
        for name in records():  # every record there is whole, and one of the planned runs
            assert name in expected and json.loads((out / f"{name}.json").read_text())["name"] == name

    start_and_stop(signal.SIGTERM)
    start_and_stop(signal.SIGKILL)
    assert len(records()) < 8, "the sweep was not stopped mid-run"
    assert main(["sweep", str(f), "--jobs", "2"]) == 0
    assert set(records()) == expected and len(records()) == 8
    assert run_sweep(f, echo=lambda *_: None) == []  # nothing left to run, nothing run twice


def test_jobs_must_be_positive(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x, task: rte}\nruns: [{method: icl}]\n")
    assert main(["sweep", str(f), "--jobs", "0"]) == 2
    assert "--jobs must be an integer >= 1, got 0" in capsys.readouterr().err


def test_gpu_slots_round_robin(monkeypatch):
    from engrain.sweep import gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert gpu_slots(3) == ["2", "5", "2"] and gpu_slots(1) == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots(2) == [None, None]


def test_exclude_leaves_out_the_combinations_it_names(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {model: x}\ngrid: {task: [rte, mnli], shots: [16, 128]}\nruns: [{method: icl}, {method: pbft}]\n"
                 "exclude: [{task: rte, shots: 128, method: icl}]\n")
    names = [n for n, _ in plan(f)[1]]
    assert len(names) == 7 and "eval-rte-icl-x-k128-s0" not in names and "train-rte-pbft-lora-x-k128-s0" in names
    f.write_text("base: {model: x}\nruns: [{method: icl}]\nexclude: {task: rte}\n")
    with pytest.raises(EngrainError, match="exclude must be a list of mappings"):
        plan(f)
