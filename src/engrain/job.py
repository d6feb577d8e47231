"""`engrain run`: the main job. Learn the generated facts benchmark's documents into a model's weights
by each method and compare them with the model alone (closed book, the floor) and with the documents
in the prompt (open book, the reference), in one table, a Markdown report and a plot.

It is an experiment like any other (engrain.sweep): each run in its own process, one record per run
in the output folder, and running it again skips what is recorded. ``--config FILE`` replaces the
default experiment with your own (the sweep YAML format), e.g. more seeds, epochs or another model.
"""

from __future__ import annotations

import time
from pathlib import Path

# The default: seed 0 of configs/facts_docs.yaml (the same settings, so its numbers are those runs'),
# plus the forgetting probes. About 10 minutes on a 2-core CPU.
TRAINING = {"params": "lora", "lr": 1.0e-3, "eval_sample": 40, "forgetting": True}
MAIN = {
    "out": "runs/main",
    "base": {"model": "smollm2-135m", "task": "facts", "seed": 0},
    "runs": [
        {"method": "icl"},  # closed book: the model alone
        {"method": "icl", "open_book": True},  # open book: each question's documents in the prompt
        {"method": "cpt", "epochs": 10, **TRAINING},
        {"method": "cft", "epochs": 10, **TRAINING},
        {"method": "distill", "epochs": 3, **TRAINING},
    ],
}


def main_spec(out: str | None = None, model: str | None = None, seed: int | None = None, config: str | None = None) -> dict:
    """The experiment: ``config`` (a sweep YAML) or the default, with the flags given applied over it."""
    import copy

    from engrain.config import load_yaml

    spec = load_yaml(config) if config else copy.deepcopy(MAIN)
    spec["base"] = dict(spec.get("base") or {})
    for key, value in (("model", model), ("seed", seed)):
        if value is not None:
            spec["base"][key] = value
    if out is not None:
        spec["out"] = out
    return spec


def run_main(spec: dict, where: str = "engrain run", echo=print, dry_run: bool = False, isolate: bool = True) -> dict | None:
    """Run what is not recorded yet (each run in its own process unless ``isolate`` is false), then write
    ``report.md`` and ``accuracy_vs_time.png`` into the output folder; returns {"rows", "report", "plot"}
    (None with ``dry_run``)."""
    from engrain.results import read_record
    from engrain.sweep import plan_spec, run_planned

    start = time.perf_counter()
    out, planned, folders = plan_spec(spec, where)
    run_planned(out, planned, folders, dry_run=dry_run, echo=echo, isolate=isolate)
    if dry_run:
        return None
    records = [read_record(out / f"{name}.json") for name, _ in planned]
    rows = summary_rows(records)
    plot = plot_accuracy_vs_time(rows, out / "accuracy_vs_time.png")
    report = write_report(rows, records, out, plot, time.perf_counter() - start)
    return {"rows": rows, "report": report, "plot": plot}


def label(record: dict) -> str:
    from engrain.results import variant

    if record["kind"] == "eval":
        return "open book (ICL)" if record["config"].get("open_book") else "base (closed book)"
    return variant("train", record["method"], record["config"]) + f" s{record['config']['seed']}"


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per record: accuracy (all, per question type), what adapting cost, the per-question cost
    against open book, and forgetting (after training vs the base model)."""
    books = [r for r in records if r["kind"] == "eval" and r["config"].get("open_book")]
    open_ms = books[0]["measure"][books[0]["config"]["task"]]["ms_per_question"] if books else None
    before = next((r["forgetting"]["before"] for r in records if "forgetting" in r), None)
    rows = []
    for r in records:
        task = r["config"]["task"]
        m, meas = r["metrics"][task], r["measure"][task]
        row = {"method": label(r), "accuracy": m["accuracy"], **{t: b["accuracy"] for t, b in m["by_type"].items()}}
        teacher = r.get("teacher", {}).get("seconds", 0.0)
        train = r["measure"].get("train")
        row["adapt s"] = (train["seconds"] + teacher) if train else 0.0
        row["generating s"] = teacher if train else 0.0
        row["peak MB"] = max([meas["peak_memory_mb"]] + ([train["peak_memory_mb"]] if train else []) + (
            [r["teacher"]["peak_memory_mb"]] if teacher else []))
        row["ms/question"] = meas["ms_per_question"]
        row["vs open book"] = open_ms / meas["ms_per_question"] if open_ms and not r["config"].get("open_book") else None
        probe = r["forgetting"]["after"] if "forgetting" in r else (before if r["kind"] == "eval" and not r["config"].get("open_book") else None)
        row["RTE 16-shot"] = probe["rte_icl16_accuracy"] if probe else None
        row["held-out ppl"] = probe["heldout_perplexity"] if probe else None
        rows.append(row)
    return rows


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if key in ("adapt s", "generating s", "peak MB"):
        return f"{value:.0f}"
    if key in ("ms/question", "held-out ppl"):
        return f"{value:.1f}"
    if key == "vs open book":
        return f"{value:.1f}x faster"
    return f"{value:.3f}"


def formatted(rows: list[dict]) -> list[dict]:
    return [{k: _cell(k, v) for k, v in row.items()} for row in rows]


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path:
    """Closed-book accuracy against the seconds spent adapting (training, plus generating for distill):
    one point per method; open book as the line to reach, chance below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for row in rows:
        if row["method"].startswith("open book"):
            ax.axhline(row["accuracy"], color="tab:green", ls="--", lw=1)
            ax.annotate(f"open book: {row['accuracy']:.3f} ({row['ms/question']:.0f} ms/question)", (0, row["accuracy"]),
                        xytext=(4, 4), textcoords="offset points", color="tab:green", fontsize=8)
            continue
        ax.scatter(row["adapt s"], row["accuracy"], s=40, zorder=3)
        ax.annotate(row["method"], (row["adapt s"], row["accuracy"]), xytext=(5, -10), textcoords="offset points", fontsize=8)
    ax.margins(x=0.2)
    ax.set_xlabel("seconds spent adapting the model (training; distill: + generating its transfer set)")
    ax.set_ylabel("closed-book accuracy")
    ax.set_title("Learning the documents into the weights: accuracy against cost", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(rows: list[dict], records: list[dict], out: Path, plot: Path, seconds: float) -> Path:
    from engrain.report import markdown

    host, cfg = records[0]["host"], records[0]["config"]
    trained = [r for r in rows if r["adapt s"]]
    floor = next((r for r in rows if r["method"].startswith("base")), None)
    book = next((r for r in rows if r["method"].startswith("open book")), None)
    lines = [
        f"# engrain run: {cfg['task']} on {cfg['model']}",
        "",
        f"{len(records)} runs, records in `{out}` ({host.get('cpu', '?')}, {host.get('cpu_bf16', '?')} bf16, "
        f"torch {records[0]['versions'].get('torch', '?')}); this report took {seconds:.0f} s to make "
        "(runs already recorded are not rerun).",
        "",
        "Closed-book multiple-choice accuracy after learning the documents into the weights (LoRA), against the model alone "
        "(floor) and with each question's documents in the prompt (open book). `adapt s`: training time, plus generating "
        "the transfer set for distill. `vs open book`: how much faster a question is answered than with the documents in "
        "the prompt. `RTE 16-shot`, `held-out ppl`: general ability after training (the base model's on its own row).",
        "",
        markdown(formatted(rows)),
        "",
        f"![accuracy against adaptation time]({plot.name})",
        "",
    ]
    if trained and floor and book:
        best = max(trained, key=lambda r: r["accuracy"])
        share = (best["accuracy"] - floor["accuracy"]) / (book["accuracy"] - floor["accuracy"]) if book["accuracy"] != floor["accuracy"] else 0
        lines += [f"Best closed-book: {best['method']} at {best['accuracy']:.3f}, against {floor['accuracy']:.3f} for the model alone "
                  f"and {book['accuracy']:.3f} open book: {share:.0%} of the way from the floor to open book, answering "
                  f"{best['vs open book']:.1f}x faster per question than open book.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# The terminal table's short headings (the report keeps the long ones and every column).
SHORT = {"paraphrase": "para.", "two-hop": "2-hop", "verbatim": "verb.", "adapt s": "adapt s", "peak MB": "peak MB",
         "ms/question": "ms/q", "vs open book": "vs open", "RTE 16-shot": "RTE-16", "held-out ppl": "ppl"}


def print_rows(rows: list[dict]) -> None:
    from rich.table import Table

    from engrain.report import console

    cells = formatted(rows)
    t = Table(title="documents into weights: closed-book accuracy and cost (all columns: report.md)")
    t.add_column("method", no_wrap=True)
    t.add_column("accuracy", justify="right")
    cols = [c for c in dict.fromkeys(k for row in cells for k in row) if c in SHORT]
    for col in cols:
        t.add_column(SHORT[col], justify="right")
    for row in cells:
        t.add_row(row["method"], row["accuracy"], *(row.get(c, "-").replace(" faster", "") for c in cols))
    console().print(t)
