"""The report: one row per configuration (seeds averaged), never two configurations in one row."""

from __future__ import annotations

from engrain.report import summarize


def record(seed: int, acc: float, **config) -> dict:
    cfg = {"model": "m", "task": "rte", "shots": 16, "seed": seed, "method": "pbft", "params": "lora", "lr": 2e-4,
           "epochs": 40, "limit": None, "sample": None, "progress": False, "out": f"runs{seed}", **config}
    split = {"n": 100, "accuracy": acc}
    return {"kind": "train", "method": "pbft", "config": cfg, "metrics": {"rte": split},
            "measure": {"rte": {"seconds": 1.0, "peak_memory_mb": 10.0}, "train": {"seconds": 5.0, "peak_memory_mb": 20.0}}}


def test_runs_that_differ_beyond_the_seed_get_their_own_rows():
    rows = summarize([record(0, 0.5), record(1, 0.7), record(0, 0.9, lr=1e-3), record(0, 0.6, sample=3000)])
    assert len(rows) == 3
    by_diff = {r["differs"]: r for r in rows}
    assert set(by_diff) == {"lr=0.0002, sample=None", "lr=0.001, sample=None", "lr=0.0002, sample=3000"}
    assert by_diff["lr=0.0002, sample=None"]["seeds"] == [0, 1] and by_diff["lr=0.0002, sample=None"]["in-domain"] == "0.600 ± 0.141"
    assert by_diff["lr=0.001, sample=None"]["in-domain"] == "0.900"


def test_options_that_do_not_change_the_measurement_do_not_split_rows():
    rows = summarize([record(0, 0.5), record(1, 0.7, progress=True, out="elsewhere", data_dir="/d")])
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1] and "differs" not in rows[0]


def test_an_option_missing_from_an_older_record_counts_as_its_default():
    old = record(1, 0.7)
    new = record(0, 0.5, sample_seed=0)
    assert len(summarize([old, new])) == 1
