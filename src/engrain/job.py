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

# Two sizes of the same experiment, each trained method next to its shuffled-facts control (README: the
# times measured). "full": seed 0 of configs/facts_docs.yaml (the same settings, so its numbers are
# those runs'), with the forgetting probes: about 18 min on a 2-core CPU with AMX, about an hour on one
# that computes in fp32; the default on a GPU. "compact": the same runs with about a third of the
# training, smaller per-epoch samples and no forgetting probes: the default on a CPU, sized so that a
# newcomer's first command ends within 15 minutes on 2 cores with or without native bf16.
PROFILES = {
    "full": {"out": "runs/main", "training": {"params": "lora", "lr": 1.0e-3, "eval_sample": 20}, "forgetting": True,
             "methods": [{"method": "cpt", "epochs": 10}, {"method": "cft", "epochs": 10},
                         {"method": "distill", "epochs": 2, "samples_per_chunk": 2}]},
    "compact": {"out": "runs/main-compact", "training": {"params": "lora", "lr": 1.0e-3, "eval_sample": 10}, "forgetting": False,
                "methods": [{"method": "cpt", "epochs": 3}, {"method": "cft", "epochs": 3},
                            {"method": "distill", "epochs": 1, "samples_per_chunk": 1}]},
}


def profile_spec(name: str) -> dict:
    """The main job's experiment at one of its sizes: closed and open book, then every method (with the
    forgetting probes in the full profile) and its shuffled-facts control."""
    p = PROFILES[name]
    runs = [{"method": "icl"}, {"method": "icl", "open_book": True}]  # the model alone; each question's documents in the prompt
    for m in p["methods"]:
        runs += [{**m, **p["training"], **({"forgetting": True} if p["forgetting"] else {})}, {**m, **p["training"], "shuffled_facts": True}]
    return {"out": p["out"], "base": {"model": "smollm2-135m", "task": "facts", "seed": 0}, "runs": runs}


MAIN = profile_spec("full")


def auto_profile() -> str:
    """full on a GPU, compact on a CPU (README: the full job takes 18 min on a 2-core CPU even with AMX)."""
    import torch

    return "full" if torch.cuda.is_available() else "compact"


def main_spec(out: str | None = None, model: str | None = None, seed: int | None = None, config: str | None = None,
              profile: str = "auto") -> dict:
    """The experiment: ``config`` (a sweep YAML) or the default at ``profile``'s size, with the flags given applied over it."""
    from engrain.config import load_yaml
    from engrain.errors import EngrainError

    if profile not in ("auto", *PROFILES):
        raise EngrainError(f"--profile must be auto, {' or '.join(PROFILES)}, got {profile!r}")
    spec = load_yaml(config) if config else profile_spec(auto_profile() if profile == "auto" else profile)
    if seed is not None and "seed" in (spec.get("grid") or {}):
        raise EngrainError(f"--seed {seed} and the seed grid of {config} ({spec['grid']['seed']}) both choose seeds: drop --seed, "
                           "or the grid's seed")
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


def _types(m: dict) -> dict:
    return {t: b["accuracy"] for t, b in m["by_type"].items()}


def baseline_rows(records: list[dict]) -> list[dict]:
    """Chance and the corpus prior (no model) from a record that carries them (engrain.documents.evaluate)."""
    source = next((r for r in records if "baselines" in r), None)
    if source is None:
        return []
    b = source["baselines"]
    return [{"method": name, "accuracy": b[key]["accuracy"], **_types(b[key])} for key, name in (("chance", "chance"), ("corpus_prior", "corpus prior"))]


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per record, after the no-model rows (chance, corpus prior): accuracy (all, per question type), gap
    recovery against the base model and open book (all, per type), what adapting cost, the per-question cost
    against open book, and forgetting (after training vs the base model)."""
    from engrain.documents.baselines import gap_recovery

    evals = [r for r in records if r["kind"] == "eval" and not r["config"].get("adapter")]
    book = next((r for r in evals if r["config"].get("open_book")), None)
    base = next((r for r in evals if not r["config"].get("open_book")), None)
    task = records[0]["config"]["task"]
    open_ms = book["measure"][task]["ms_per_question"] if book else None
    before = next((r["forgetting"]["before"] for r in records if "forgetting" in r and base and r["config"]["model"] == base["config"]["model"]), None)
    rows = baseline_rows(records)
    for r in records:
        m, meas = r["metrics"][task], r["measure"][task]
        row = {"method": label(r), "accuracy": m["accuracy"], **_types(m)}
        gap = m.get("gap_recovery") or (gap_recovery(m, base["metrics"][task], book["metrics"][task]) if r["kind"] == "train" and base and book else None)
        if gap:
            row["gap"] = gap["overall"]
            row.update({f"gap {t}": g for t, g in gap["by_type"].items()})
        teacher = r.get("teacher", {}).get("seconds", 0.0)
        train = r["measure"].get("train")
        row["adapt s"] = (train["seconds"] + teacher) if train else 0.0
        row["generating s"] = teacher if train else 0.0
        row["peak MB"] = max([meas["peak_memory_mb"]] + ([train["peak_memory_mb"]] if train else []) + (
            [r["teacher"]["peak_memory_mb"]] if teacher else []))
        row["ms/question"] = meas["ms_per_question"]
        row["vs open book"] = open_ms / meas["ms_per_question"] if open_ms and not r["config"].get("open_book") else None
        probe = r["forgetting"]["after"] if "forgetting" in r else (before if r is base else None)
        row["RTE 16-shot"] = probe["rte_icl16_accuracy"] if probe else None
        row["held-out ppl"] = probe["heldout_perplexity"] if probe else None
        rows.append(row)
    return rows


def measured_seconds(record: dict) -> float:
    """What a record measured itself spending: evaluation, training, generating, probes (not start-up and loading)."""
    total = sum(v["seconds"] for v in record["measure"].values() if isinstance(v, dict) and "seconds" in v)
    total += record["measure"].get("train", {}).get("per_epoch_eval_seconds", 0.0) + record.get("teacher", {}).get("seconds", 0.0)
    for probe in record.get("forgetting", {}).values():
        total += 0.0 if probe.get("cached") else probe.get("seconds", 0.0)
    return total


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
    if key.startswith("gap"):
        return f"{value:.0%}"
    return f"{value:.3f}"


def formatted(rows: list[dict]) -> list[dict]:
    """Rows as text; a column no row has a value in (the forgetting probes of the compact profile) is left out."""
    empty = {k for k in {k for row in rows for k in row} if all(row.get(k) is None for row in rows)}
    return [{k: _cell(k, v) for k, v in row.items() if k not in empty} for row in rows]


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path:
    """Closed-book accuracy against the seconds spent adapting (training, plus generating for distill): one
    point per method (shuffled-facts controls hollow); open book as the line to reach, chance and the corpus
    prior below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    lines = {"open book": "tab:green", "chance": "tab:gray", "corpus prior": "tab:brown", "base": "tab:blue"}
    for row in rows:
        line = next((name for name in lines if row["method"].startswith(name)), None)
        if line:
            ax.axhline(row["accuracy"], color=lines[line], ls="--" if line == "open book" else ":", lw=1)
            note = f" ({row['ms/question']:.0f} ms/question)" if line == "open book" else ""
            ax.annotate(f"{row['method']}: {row['accuracy']:.3f}{note}", (0, row["accuracy"]), xytext=(4, 4), textcoords="offset points",
                        color=lines[line], fontsize=7)
            continue
        control = "shuffled" in row["method"]
        ax.scatter(row["adapt s"], row["accuracy"], s=40, zorder=3, facecolors="none" if control else None,
                   edgecolors="tab:gray" if control else None)
        ax.annotate(row["method"], (row["adapt s"], row["accuracy"]), xytext=(5, -10), textcoords="offset points", fontsize=7)
    ax.margins(x=0.2)
    ax.set_xlabel("seconds spent adapting the model (training; distill: + generating its transfer set)")
    ax.set_ylabel("closed-book accuracy")
    ax.set_title("Learning the documents into the weights: accuracy against cost (hollow: shuffled-facts control)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _control_of(row: dict, rows: list[dict]) -> dict | None:
    name, seed = row["method"].rsplit(" ", 1)
    return next((r for r in rows if r["method"] == f"{name}-shuffled {seed}"), None)


def write_report(rows: list[dict], records: list[dict], out: Path, plot: Path, seconds: float) -> Path:
    from engrain.report import markdown

    host, cfg = records[0]["host"], records[0]["config"]
    trained = [r for r in rows if r.get("adapt s") and "shuffled" not in r["method"]]
    params = sorted({r["config"]["params"] for r in records if r["kind"] == "train"})
    measured = sum(measured_seconds(r) for r in records)
    lines = [
        f"# engrain run: {cfg['task']} on {cfg['model']}",
        "",
        f"{len(records)} runs, records in `{out}` ({host.get('cpu', '?')}, {host.get('cpu_bf16', '?')} bf16, "
        f"torch {records[0]['versions'].get('torch', '?')}). The runs measured {measured / 60:.1f} min of work (training, "
        f"generating, evaluating, probes; without start-up and model loading); this call took {seconds / 60:.1f} min "
        "(runs already recorded are not rerun).",
        "",
        f"Closed-book multiple-choice accuracy after learning the documents into the weights ({', '.join(params) or 'no training'}), "
        "against chance and the corpus prior (pick the choice the corpus mentions most: no model; facts v2 is built so that "
        "it scores chance), the model alone (base, closed book) and with each question's documents in the prompt (open book). "
        "`-shuffled` rows are the shuffled-facts control: the same method on a corpus whose attribute values are permuted "
        "across entities (same words, same value counts, wrong facts); what a method gains over its control is knowledge, "
        "not the corpus's surface. `gap`: gap recovery, (closed - base) / (open book - base), overall and per question type. "
        "Accuracy is scored by the summed log-likelihood of each choice (lm-eval's acc). `adapt s`: training time, plus "
        "generating the transfer set for distill. `vs open book`: how much faster a question is answered than with the "
        "documents in the prompt. `RTE 16-shot`, `held-out ppl`: general ability after training (the base model's on its row).",
        "",
        markdown(formatted(rows)),
        "",
        f"![accuracy against adaptation time]({plot.name})",
        "",
    ]
    if trained and any("gap" in r for r in trained):
        best = max(trained, key=lambda r: r["accuracy"])
        control = _control_of(best, rows)
        versus = (f"; its shuffled-facts control scores {control['accuracy']:.3f} (gap {_cell('gap', control.get('gap'))}), so "
                  f"{best['accuracy'] - control['accuracy']:+.3f} of it is knowledge of the facts" if control else "")
        lines += [f"Best closed-book: {best['method']} at {best['accuracy']:.3f}, gap recovery {_cell('gap', best.get('gap'))} "
                  f"(verbatim {_cell('gap', best.get('gap verbatim'))}, paraphrase {_cell('gap', best.get('gap paraphrase'))}, two-hop "
                  f"{_cell('gap', best.get('gap two-hop'))}){versus}; it answers {best['vs open book']:.1f}x faster per question than "
                  "open book.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# The terminal table's short headings (the report keeps the long ones and every column).
SHORT = {"paraphrase": "para.", "two-hop": "2-hop", "verbatim": "verb.", "gap": "gap", "gap verbatim": "gap v.",
         "gap paraphrase": "gap p.", "gap two-hop": "gap 2h", "adapt s": "adapt s", "ms/question": "ms/q", "vs open book": "vs open",
         "RTE 16-shot": "RTE-16", "held-out ppl": "ppl"}


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
