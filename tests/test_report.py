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


def test_mcc_sits_beside_accuracy_where_the_records_have_it():
    """On an unbalanced set (QQP, PAWS-QQP) accuracy flatters a constant guess; MCC is 0 for it."""
    runs = [record(s, 0.62) for s in (0, 1)]
    for r, m in zip(runs, (0.0, 0.2)):
        r["metrics"]["rte"]["mcc"] = m
    row = summarize(runs)[0]
    assert row["in-domain MCC"] == "0.100 ± 0.141" and list(row).index("in-domain MCC") == list(row).index("in-domain") + 1
    assert "in-domain MCC" not in summarize([record(0, 0.5)])[0]  # a document task's records have none


def test_forgetting_columns_appear_where_it_was_measured():
    assert "RTE 16-shot after" not in summarize([record(0, 0.5)])[0]
    probe = lambda acc, ppl: {"rte_icl16_accuracy": acc, "heldout_perplexity": ppl}  # noqa: E731
    runs = [{**record(s, 0.5, forgetting=True), "forgetting": {"before": probe(0.6, 20.0), "after": probe(a, p)}}
            for s, a, p in ((0, 0.5, 21.0), (1, 0.7, 23.0))]
    rows = summarize(runs + [record(0, 0.4)])
    by_forgetting = {"differs" in r and r["differs"]: r for r in rows}
    measured = by_forgetting["forgetting=True"]
    assert measured["RTE 16-shot after"] == "0.600 ± 0.141" and measured["held-out ppl after"] == "22.000 ± 1.414"
    assert by_forgetting["forgetting=False"]["RTE 16-shot after"] == "-"


def test_a_document_distillation_record_prints_its_generation_and_forgetting():
    from rich.console import Console

    from engrain.report import print_eval

    qa = {"n": 4, "accuracy": 0.5, "accuracy_unnormalised": 0.25, "chance": 0.25, "by_type": {"verbatim": {"n": 4, "accuracy": 0.5, "accuracy_unnormalised": 0.25}}}
    probe = lambda acc, ppl: {"rte_icl16_accuracy": acc, "heldout_perplexity": ppl}  # noqa: E731
    rec = {"kind": "train", "method": "distill", "config": {"model": "m", "task": "facts", "seed": 0}, "metrics": {"facts": qa},
           "measure": {"facts": {"ms_per_question": 5.0, "peak_memory_mb": 9.0},
                       "train": {"steps": 3, "seconds": 30.0, "tokens_per_s": 100.0, "mfu": 0.1, "peak_memory_mb": 20.0}},
           "trainable_parameters": {"trainable": 10, "share": 0.01}, "curve": [],
           "teacher": {"samples": 8, "generated_tokens": 400, "seconds": 10.0, "generated_tokens_per_s": 40.0},
           "forgetting": {"before": probe(0.55, 20.0), "after": probe(0.52, 21.5)}}
    con = Console(record=True, width=200)
    print_eval(rec, con)
    text = con.export_text()
    assert "transfer set: 8 texts, 400 tokens generated in 10.0 s (40 tokens/s, 25% of the run's adaptation time)" in text
    assert "forgetting: RTE 16-shot ICL 0.550 -> 0.520 | held-out perplexity 20.00 -> 21.50" in text


def test_report_out_writes_markdown_self_contained_html_and_plots(tmp_path, capsys):
    import re
    import shutil
    from pathlib import Path

    from engrain.cli import main

    docs = Path(__file__).resolve().parents[1] / "docs" / "results"
    nli, facts = tmp_path / "nli", tmp_path / "facts"
    shutil.copytree(docs / "distill_nli", nli, ignore=shutil.ignore_patterns("*/"))
    shutil.copytree(docs / "v1" / "facts_docs", facts)  # records of the first scoring still report
    (nli / "broken.json").write_text("{")
    out = tmp_path / "report"
    assert main(["report", str(nli), str(facts), "--out", str(out)]) == 0
    n = len(list(nli.glob("*.json"))) - 1 + len(list(facts.glob("*.json")))
    assert f"{n} records read, 1 files skipped" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert f"{n} run records read from" in md and "broken.json: not valid JSON" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    for name in ("shots_mnli.png", "ood_vs_id_mnli.png", "cost_rte.png", "hans.png", "curves_mnli.png", "documents_facts.png"):
        assert name in pngs and f"]({name})" in md
    from matplotlib.image import imread

    height, width = imread(out / "shots_mnli.png").shape[:2]
    assert width > 2.5 * height  # two panels side by side (one alone is 6.5 x 4 inches): MCC beside accuracy
    assert "| in-domain MCC |" not in md.split("## mnli")[0] and "in-domain MCC" in md.split("## mnli")[1]  # facts: none
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs) and not re.search(r"src=['\"]https?:", html)  # opens offline
    assert "<table>" in html and "distill-lora" in html
    assert "break-even queries" in md  # trained methods weighed against ICL's per-query cost
    assert main(["report", str(nli), str(facts), "--into", str(tmp_path / "x.md")]) == 2


def test_timings_from_machines_of_different_speed_are_flagged():
    from engrain.report import machine_note

    def on(peak: float, dtype: str = "bfloat16") -> dict:
        r = record(0, 0.5)
        r["measure"]["matmul_peak_tflops"], r["model"] = peak, {"dtype": dtype, "device_name": "AMD EPYC"}
        return r

    assert machine_note([on(0.97), on(1.03), record(1, 0.5)]) is None  # one machine, measured twice; an old record without a peak
    assert machine_note([on(1.0), on(0.2, "float32")]) is None  # fp32 is slower on the same machine: that is the run, not the machine
    note = machine_note([on(0.41), on(0.41), on(1.03)])
    assert note and "0.41" in note and "1.03" in note and "2.5x" in note and "MFU" in note


def test_the_report_says_when_its_timings_come_from_different_machines(tmp_path, capsys):
    import json
    from pathlib import Path

    from engrain.cli import main

    shots = Path(__file__).resolve().parents[1] / "docs" / "results" / "fewshot_shots"
    folder = tmp_path / "runs"
    folder.mkdir()
    for k, peak in ((16, 1.0), (32, 1.0)):
        rec = json.loads((shots / f"eval-cola-icl-smollm2-135m-k{k}-s0-sample3000.json").read_text())
        rec["measure"]["matmul_peak_tflops"] = peak
        (folder / f"k{k}.json").write_text(json.dumps(rec))
    assert main(["report", str(folder), "--out", str(tmp_path / "same")]) == 0
    assert "different speed" not in (tmp_path / "same" / "report.md").read_text()
    rec["measure"]["matmul_peak_tflops"] = 0.4  # k = 32 measured on a machine 2.5x slower
    (folder / "k32.json").write_text(json.dumps(rec))
    assert main(["report", str(folder), "--out", str(tmp_path / "mixed")]) == 0
    assert "machines of different speed" in (tmp_path / "mixed" / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", str(folder)]) == 0
    assert "0.40 TFLOP/s in 1 records, 1.00 TFLOP/s in 1 records (2.5x apart)" in capsys.readouterr().out


def test_cost_rows_run_in_numeric_k_order_and_break_even_is_training_over_time_saved(tmp_path):
    from engrain.plots import cost

    def row(variant: str, shots: int, ms: float, train: float | None = None) -> dict:
        r = {"task": "rte", "variant": variant, "shots": shots, "measure.rte.seconds": ms / 1000 * 100, "metrics.rte.n": 100}
        return r | ({"measure.train.seconds": train} if train is not None else {})

    rows = [row("pbft-lora", 128, 20.0, 400.0), row("icl", 128, 220.0), row("icl", 16, 60.0), row("pbft-lora", 16, 20.0, 80.0)]
    _, stats = cost(rows, "rte", tmp_path)
    assert [(s["shots"], s["variant"]) for s in stats] == [(16, "icl"), (16, "pbft-lora"), (128, "icl"), (128, "pbft-lora")]
    assert [s["break-even queries"] for s in stats] == [None, 2000, None, 2000]  # 80 s / 40 ms saved; 400 s / 200 ms saved
