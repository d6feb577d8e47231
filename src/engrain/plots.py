"""`engrain report DIR... --out DIR`: report.md, a self-contained report.html (images embedded) and PNG
plots, every number from the run records (engrain.results.scan_records / flatten; the tables are
engrain.report.summarize's).

Plots, each where the records have what it needs:
  shots_<task>.png      in-domain accuracy (and MCC) against k per method, mean ± std over seeds (the llmft view)
  ood_vs_id_<task>.png  out-of-domain against in-domain accuracy, one point per run, coloured by method
  cost_<task>.png       train time, peak memory and per-query time per method, and break-even queries vs ICL
  hans.png              HANS accuracy per heuristic x gold label per method (heatmap)
  curves_<task>.png     in-domain and out-of-domain accuracy per epoch per method (training curves)
  documents_<task>.png  closed-book accuracy per method and question type, against open book
"""

from __future__ import annotations

import base64
import re
import statistics
from collections import defaultdict
from pathlib import Path

BASELINE = ("icl", "open-book")  # the in-prompt rows a trained method's per-query cost and training time are weighed against


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r.get(k) for k in keys)].append(r)
    return out


def _natural(key: tuple) -> tuple:
    """Sort key for group keys mixing names, shot counts and None: numbers in numeric order (k = 16 before 128)."""
    return tuple((v is None, not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)) for v in key)


def _is_doc(task: str) -> bool:
    from engrain.tasks.documents import is_document_task

    return is_document_task(task)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def shots_curve(rows: list[dict], task: str, out: Path) -> Path | None:
    """In-domain accuracy against k per method, and MCC beside it where the records have it (on an
    unbalanced set a constant guess scores the majority share in accuracy, 0 in MCC)."""
    rs = [r for r in rows if r["task"] == task]
    if _is_doc(task) or len({r["shots"] for r in rs}) < 2:  # documents have no k
        return None
    metrics = ["accuracy"] + (["mcc"] if all(r.get(f"metrics.{task}.mcc") is not None for r in rs) else [])
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for (variant,), group in sorted(_by(rs, "variant").items()):
            ks = sorted({r["shots"] for r in group})
            vals = [[r[f"metrics.{task}.{metric}"] for r in group if r["shots"] == k] for k in ks]
            mean = [statistics.mean(v) for v in vals]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.plot(ks, mean, marker="o", label=variant)
            ax.fill_between(ks, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.15)
        ax.set_xscale("log", base=2)
        name = "MCC" if metric == "mcc" else metric
        ax.set(xlabel="k (shots)", ylabel=f"{task} {name}", title=f"{task}: in-domain {name} against k (mean ± std over seeds)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, out / f"shots_{task}.png")


def ood_vs_id(rows: list[dict], task: str, out: Path) -> Path | None:
    rs = [r for r in rows if r["task"] == task]
    partners = sorted({k.split(".")[1] for r in rs for k in r if k.startswith("metrics.") and k.endswith(".accuracy")
                       and k.count(".") == 2 and k.split(".")[1] != task})
    if not partners:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(partners), figsize=(5.5 * len(partners), 4), squeeze=False)
    for ax, partner in zip(axes[0], partners):
        for (variant,), group in sorted(_by(rs, "variant").items()):
            pts = [(r[f"metrics.{task}.accuracy"], r[f"metrics.{partner}.accuracy"]) for r in group if f"metrics.{partner}.accuracy" in r]
            if pts:
                ax.scatter(*zip(*pts), label=variant, s=22)
        ax.set(xlabel=f"{task} (in-domain) accuracy", ylabel=f"{partner} (out-of-domain) accuracy", title=f"{task} -> {partner}: one point per run")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / f"ood_vs_id_{task}.png")


def cost(rows: list[dict], task: str, out: Path) -> tuple[Path | None, list[dict]]:
    """Bars of train time, peak memory and per-query time per method (medians), and break-even queries:
    (training + teacher seconds) / (baseline ms per query - method ms per query)."""
    rs = [r for r in rows if r["task"] == task]
    per_query = lambda r: r[f"measure.{task}.seconds"] / r[f"metrics.{task}.n"] * 1000  # noqa: E731
    stats = []
    for (variant, shots), group in sorted(_by(rs, "variant", "shots").items(), key=lambda kv: _natural(kv[0][::-1])):
        train = [r.get("measure.train.seconds", 0.0) + r.get("teacher.seconds", 0.0) for r in group]
        peak = [r.get("measure.train.peak_memory_mb") or r.get(f"measure.{task}.peak_memory_mb", 0.0) for r in group]
        stats.append({"variant": variant, "shots": shots, "adapt s": statistics.median(train), "peak MB": max(peak),
                      "ms/query": statistics.median(per_query(r) for r in group)})
    base = {s["shots"] if not _is_doc(task) else None: s for s in stats if s["variant"] in BASELINE}
    for s in stats:
        b = base.get(s["shots"] if not _is_doc(task) else None)
        saved = (b["ms/query"] - s["ms/query"]) if b and s["variant"] not in BASELINE and s["adapt s"] else None
        s["break-even queries"] = round(s["adapt s"] * 1000 / saved) if saved and saved > 0 else None
    if not stats:
        return None, stats
    plt = _plt()
    labels = [f"{s['variant']}" + (f" k{s['shots']}" if not _is_doc(task) else "") for s in stats]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(stats) + 1.8))
    for ax, key in zip(axes, ("adapt s", "peak MB", "ms/query")):
        ax.barh(labels, [s[key] for s in stats])
        ax.set(title=key)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{task}: cost per method (medians over seeds; adapt s = training + teacher)", fontsize=10)
    return _save(fig, out / f"cost_{task}.png"), stats


def hans_heatmap(rows: list[dict], out: Path) -> Path | None:
    keys = sorted({k for r in rows for k in r if k.startswith("metrics.hans.by_heuristic.") and not k.endswith(".all")})
    rs = [r for r in rows if any(k in r for k in keys)]
    if not keys or not rs:
        return None
    groups = sorted(_by(rs, "task", "variant", "shots").items(), key=lambda kv: _natural(kv[0]))
    import numpy as np

    grid = np.array([[statistics.mean([r[k] for r in g if k in r] or [float("nan")]) for k in keys] for _, g in groups])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.1 * len(keys) + 3, 0.35 * len(groups) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(keys)), [k.removeprefix("metrics.hans.by_heuristic.").replace(".", "\n") for k in keys], fontsize=7)
    ax.set_yticks(range(len(groups)), [f"{t} {v} k{s}" for (t, v, s), _ in groups], fontsize=7)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("HANS accuracy per heuristic x gold label (mean over seeds)", fontsize=10)
    return _save(fig, out / "hans.png")


def training_curves(records: list[dict], task: str, out: Path) -> Path | None:
    from engrain.results import variant

    rs = [r for r in records if r["kind"] == "train" and r["config"]["task"] == task and r.get("curve")]
    if not rs:
        return None
    splits = list(rs[0]["curve"][0]["metrics"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 3.8), squeeze=False)
    groups = _by([{"variant": variant("train", r["method"], r["config"]), "shots": r["config"]["shots"], "r": r} for r in rs], "variant", "shots")
    for ax, split in zip(axes[0], splits):
        for (name, shots), group in sorted(groups.items(), key=lambda kv: _natural(kv[0])):
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for g in group:
                for point in g["r"]["curve"]:
                    if split in point["metrics"]:
                        by_epoch[point["epoch"]].append(point["metrics"][split]["accuracy"])
            epochs = sorted(by_epoch)
            ax.plot(epochs, [statistics.mean(by_epoch[e]) for e in epochs], label=name + ("" if _is_doc(task) else f" k{shots}"))
        ax.set(xlabel="epoch", ylabel=f"{split} accuracy (per-epoch sample)", title=f"{task}: {split} during training (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, out / f"curves_{task}.png")


def documents(rows: list[dict], task: str, out: Path) -> Path | None:
    rs = [r for r in rows if r["task"] == task]
    types = sorted({k.split(".")[3] for r in rs for k in r if k.startswith(f"metrics.{task}.by_type.") and k.endswith(".accuracy")
                    and k.count(".") == 4})
    if not rs:
        return None
    import numpy as np

    groups = sorted(_by(rs, "variant").items(), key=lambda kv: (kv[0][0] not in ("closed-book", "open-book"), kv[0][0]))
    cols = ["all"] + types
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.4 * len(groups) + 3, 4))
    width = 0.8 / len(cols)
    for j, col in enumerate(cols):
        key = f"metrics.{task}.accuracy" if col == "all" else f"metrics.{task}.by_type.{col}.accuracy"
        vals = [statistics.mean([r[key] for r in g if key in r] or [0.0]) for _, g in groups]
        ax.bar(np.arange(len(groups)) + j * width, vals, width, label=col)
    for key, name, style in (("baselines.chance.accuracy", "chance", ":"), ("baselines.corpus_prior.accuracy", "corpus prior (no model)", "--")):
        vals = [r[key] for r in rs if key in r]
        if vals:
            ax.axhline(vals[0], ls=style, color="gray", lw=1, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [v for (v,), _ in groups], fontsize=7, rotation=20)
    ax.set(ylabel="accuracy (mean over seeds)",
           title=f"{task}: closed book per method and question type (-shuffled: its control), against open book")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out / f"documents_{task}.png")


def build(folders: list[str], out: str | Path) -> dict:
    """Write report.md, report.html and the plots into ``out``; returns their paths and what was read."""
    from engrain.report import machine_note, markdown, summarize
    from engrain.results import flatten, scan_records

    skipped: list[str] = []
    records = scan_records(folders, warn=skipped.append)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [flatten(r) for r in records]
    sections, images = [], []
    for task in sorted({r["task"] for r in rows}):
        table = markdown(summarize([r for r in records if r["config"]["task"] == task]))
        plots = [shots_curve(rows, task, out), ood_vs_id(rows, task, out)]
        cost_png, stats = cost(rows, task, out)
        plots += [cost_png, training_curves(records, task, out)]
        if _is_doc(task):
            plots.append(documents(rows, task, out))
        even = [s for s in stats if s["break-even queries"]]
        lines = [f"## {task}", "", table, ""]
        if even:
            lines += ["Break-even against the in-prompt baseline (training + teacher seconds / per-query time saved):", "",
                      markdown([{"variant": s["variant"], "k": "-" if _is_doc(task) else s["shots"], "adapt s": f"{s['adapt s']:.0f}",
                                 "ms/query": f"{s['ms/query']:.1f}", "break-even queries": s["break-even queries"]} for s in even]), ""]
        for p in filter(None, plots):
            lines += [f"![{p.stem}]({p.name})", ""]
            images.append(p)
        sections.append("\n".join(lines))
    hans = hans_heatmap(rows, out)
    if hans:
        sections.append(f"## HANS per heuristic and label\n\n![hans]({hans.name})\n")
        images.append(hans)
    head = ["# engrain report", "", f"{len(records)} run records read from {', '.join(f'`{f}`' for f in folders)}; "
            f"{len(skipped)} files skipped" + (":" if skipped else "."), ""]
    head += [f"- {s.removeprefix('engrain: ')}" for s in skipped] + ([""] if skipped else [])
    head += [note, ""] if (note := machine_note(records)) else []
    md = "\n".join(head) + "\n" + "\n".join(sections)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md, out))
    return {"records": len(records), "skipped": skipped, "markdown": out / "report.md", "html": out / "report.html", "images": images}


def to_html(md: str, folder: Path) -> str:
    """The report's Markdown as one HTML file: tables as tables, images inlined as base64 (opens offline)."""
    import html

    body, table = [], []

    def flush_table() -> None:
        if table:
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in table if not re.fullmatch(r"\|(---\|)+", line)]
            head, *rest = cells
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest) + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if m := re.fullmatch(r"!\[(.*)\]\((.*)\)", line):
            data = base64.b64encode((folder / m.group(2)).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px}" \
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>engrain report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
