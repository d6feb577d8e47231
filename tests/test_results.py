"""Results as a table: every run record as one flat row (engrain results, engrain.results.to_frame)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engrain.errors import EngrainError
from engrain.results import flatten, scan_records, select, to_frame

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.fixture()
def folder(tmp_path):
    """Two real records of the distillation sweep, a file that is not JSON and a JSON file that is not a record."""
    out = tmp_path / "runs"
    out.mkdir()
    for name in ("eval-rte-icl-smollm2-135m-k16-s0-sample3000.json", "train-mnli-distill-lora-smollm2-135m-k16-s0-sample3000.json"):
        shutil.copy(DOCS / "distill_nli" / name, out / name)
    (out / "broken.json").write_text('{"name": "half a rec')
    (out / "notes.json").write_text(json.dumps({"hello": "world"}))
    return out


def test_foreign_and_malformed_files_are_skipped_with_a_warning_and_left_alone(folder):
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    warnings: list[str] = []
    records = scan_records(folder, warn=warnings.append)
    assert sorted(r["name"] for r in records) == ["eval-rte-icl-smollm2-135m-k16-s0-sample3000",
                                                   "train-mnli-distill-lora-smollm2-135m-k16-s0-sample3000"]
    assert len(warnings) == 2 and all(w.count("\n") == 0 for w in warnings)
    assert "broken.json: not valid JSON" in warnings[0] and "notes.json: not an engrain run record" in warnings[1]
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # never rewritten
    with pytest.raises(EngrainError, match="results folder not found"):
        scan_records(folder / "nope")


def test_one_flat_row_per_run_with_stable_names(folder):
    frame = to_frame([folder])
    assert len(frame) == 2
    row = frame.set_index("name").loc["train-mnli-distill-lora-smollm2-135m-k16-s0-sample3000"]
    record = json.loads((folder / "train-mnli-distill-lora-smollm2-135m-k16-s0-sample3000.json").read_text())
    assert row["variant"] == "distill-lora" and row["seed"] == 0 and row["lr"] == record["config"]["lr"]
    assert row["metrics.mnli.accuracy"] == record["metrics"]["mnli"]["accuracy"]
    h = record["metrics"]["hans"]["by_heuristic"]["lexical_overlap"]
    assert row["metrics.hans.by_heuristic.lexical_overlap.all"] == h["all"]
    assert row["measure.train.seconds"] == record["measure"]["train"]["seconds"]
    assert row["teacher.seconds"] == record["teacher"]["seconds"]
    assert set(flatten(record)) <= set(frame.columns)


def test_filters(folder):
    rows = [flatten(r) for r in scan_records(folder, warn=lambda _: None)]
    assert [r["method"] for r in select(rows, ["kind=train"])] == ["distill"]
    assert [r["task"] for r in select(rows, ["seed=0", "task=rte"])] == ["rte"]
    assert select(rows, ["task=qqp"]) == []
    with pytest.raises(EngrainError, match="no run has a column 'colour'"):
        select(rows, ["colour=red"])
    with pytest.raises(EngrainError, match="--filter takes key=value"):
        select(rows, ["seed"])


def test_the_results_command(folder, capsys):
    from engrain.cli import main

    assert main(["results", str(folder), "--filter", "method=distill"]) == 0
    out, err = capsys.readouterr()
    assert "| train-mnli-distill-lora-smollm2-135m-k16-s0-sample3000 | distill-lora | smollm2-135m | mnli | 16 | 0 |" in out
    assert "skipped" in err and "broken.json" in err
    assert main(["results", str(folder), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and "metrics.hans.accuracy" in rows[1]
    assert main(["results", str(folder), "--format", "csv", "--filter", "kind=eval"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("name,kind,method,variant,")
    assert main(["results", str(folder), "--filter", "nope"]) == 2
    lines = capsys.readouterr().err.splitlines()  # the two skipped files, then the error in one line
    assert len(lines) == 3 and lines[-1] == "engrain: error: --filter takes key=value, got 'nope'"
