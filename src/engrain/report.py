"""Readable tables of run records (rich)."""

from __future__ import annotations

from collections import Counter, defaultdict

from rich.console import Console
from rich.table import Table


def _f(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


# A documents record's baselines, in the order they are shown (engrain.documents.evaluate).
BASELINE_ROWS = (("chance", "chance"), ("corpus_prior", "corpus prior"), ("longest_choice", "longest choice"),
                 ("base", "base model, closed book"), ("open_book", "base model, open book"))


def qa_table(record: dict) -> Table:
    """Multiple-choice accuracy on a document task, all and per question type, by each scoring rule (the
    headline first), gap recovery, the baselines the record carries, and the cost."""
    cfg = record["config"]
    t = Table(title=f"{record['method']} | {cfg['model']} | {cfg['task']} | {'open' if cfg.get('open_book') else 'closed'} book")
    for col in ("questions", "n", "accuracy", "sum", "per token", "per char", "gap recovered", "ms/question", "peak MB"):
        t.add_column(col, justify="left" if col == "questions" else "right")
    for split, m in record["metrics"].items():
        s, gap = record["measure"][split], m.get("gap_recovery", {})

        def cells(x: dict, g) -> list[str]:  # older records: the per-token mean was the headline, the sum "unnormalised"
            return [_f(x["accuracy"]), _f(x.get("accuracy_sum", x.get("accuracy_unnormalised"))), _f(x.get("accuracy_token")),
                    _f(x.get("accuracy_char")), _f(g, ".0%")]

        t.add_row("all", str(m["n"]), *cells(m, gap.get("overall")), f"{s['ms_per_question']:.1f}", f"{s['peak_memory_mb']:.0f}")
        for kind, b in m["by_type"].items():
            t.add_row(f"  {kind}", str(b["n"]), *cells(b, gap.get("by_type", {}).get(kind)), "", "")
        for key, name in BASELINE_ROWS:
            if key in record.get("baselines", {}):
                b = record["baselines"][key]
                t.add_row(f"[dim]{name}[/dim]", "", _f(b["accuracy"]), *(_f(b.get(f"accuracy_{r}")) for r in ("sum", "token", "char")),
                          "", "", "")
    if "scoring" in record.get("baselines", {}) or any("scoring" in m for m in record["metrics"].values()):
        t.caption = "accuracy: the summed log-likelihood of each choice (lm-eval's acc); per char: lm-eval's acc_norm"
    return t


def eval_tables(record: dict) -> list[Table]:
    """Accuracy per evaluation set with its cost, then breakdowns (HANS per heuristic x label)."""
    if any("by_type" in m for m in record["metrics"].values()):
        return [qa_table(record)]
    cfg, meas = record["config"], record["measure"]
    main = Table(title=f"{record['method']} | {cfg['model']} | {cfg['task']} | k={cfg['shots']} seed={cfg['seed']}")
    for col in ("split", "n", "accuracy", "macro-F1", "MCC", "non-verb.", "seconds", "ex/s", "tok/s", "peak MB", "MFU"):
        main.add_column(col, justify="left" if col == "split" else "right")
    for split, m in record["metrics"].items():
        s = meas[split]
        main.add_row(
            split, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m['mcc']:.3f}",
            f"{m['non_verbalizer_rate']:.1%}", f"{s['seconds']:.1f}", f"{s['examples_per_s']:.1f}",
            f"{s['tokens_per_s']:.0f}", f"{s['peak_memory_mb']:.0f}", f"{s['mfu']:.1%}",
        )
    tables = [main]
    for split, m in record["metrics"].items():
        for key, by in m.items():
            if not key.startswith("by_"):
                continue
            labels = sorted({lab for row in by.values() for lab in row if lab != "all"})
            t = Table(title=f"{split} accuracy {key.replace('_', ' ')}")
            for col in (key[3:], *labels, "all"):
                t.add_column(col, justify="left" if col == key[3:] else "right")
            for value, row in by.items():
                t.add_row(value, *(f"{row[lab]:.3f}" if lab in row else "-" for lab in labels), f"{row['all']:.3f}")
            tables.append(t)
    return tables


def console() -> Console:
    """A console; when the output is not a terminal (a log, a pipe), wide enough for the tables."""
    c = Console()
    return c if c.is_terminal else Console(width=150)


def print_eval(record: dict, con: Console | None = None) -> None:
    con = con or console()
    for t in eval_tables(record):
        con.print(t)
    meas = record["measure"]
    if "context" in meas:
        con.print(
            f"context: {record['context_tokens']} tokens encoded once in {meas['context']['seconds']:.2f} s | "
            f"model load {record['model']['load_seconds']:.1f} s ({record['model']['dtype']}) | "
            f"matmul peak {meas['matmul_peak_tflops']:.2f} TFLOP/s"
        )
    if "train" in meas:
        tr, tp = meas["train"], record["trainable_parameters"]
        con.print(
            f"train: {tr['steps']} steps in {tr['seconds']:.1f} s | {tr['tokens_per_s']:.0f} tokens/s | MFU {tr['mfu']:.1%} | "
            f"peak {tr['peak_memory_mb']:.0f} MB | trainable {tp['trainable']:,} ({tp['share']:.3%})"
        )
        if "generated_tokens" in record.get("teacher", {}):  # distillation of documents: its transfer set was generated
            g = record["teacher"]
            con.print(f"transfer set: {g['samples']} texts, {g['generated_tokens']} tokens generated in {g['seconds']:.1f} s "
                      f"({g['generated_tokens_per_s']:.0f} tokens/s, {g['seconds'] / (g['seconds'] + tr['seconds']):.0%} of the run's "
                      "adaptation time)")
        if "forgetting" in record:
            b, a = record["forgetting"]["before"], record["forgetting"]["after"]
            con.print(f"forgetting: RTE 16-shot ICL {b['rte_icl16_accuracy']:.3f} -> {a['rte_icl16_accuracy']:.3f} | "
                      f"held-out perplexity {b['heldout_perplexity']:.2f} -> {a['heldout_perplexity']:.2f}")
        for point in record["curve"]:
            accs = "  ".join(f"{k} {v['accuracy']:.3f}" for k, v in point["metrics"].items())  # classification or QA
            con.print(f"  epoch {point['epoch']:>3} step {point['step']:>4} loss {point['loss']:.4f}  {accs}")
    if "adapter" in record:
        con.print(f"adapter: {record['adapter']['path']} ({record['adapter']['bytes'] / 2**20:.1f} MiB)")
    if "path" in record:
        con.print(f"record: {record['path']}")


def _mean_std(xs: list[float]) -> str:
    import statistics

    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


# The rows a method is compared with: ICL (demonstrations in the prompt); on a document task the model
# alone (closed book, the floor) and with the documents in the prompt (open book, whose per-query cost
# an adapted model saves).
BASELINES = ("icl", "closed-book", "open-book")
IN_PROMPT = ("icl", "open-book")  # the baselines with the context in every prompt: the per-query cost to beat


def _settings(record: dict) -> dict:
    """What a run measured: its whole config but the seed and the options that do not change the
    numbers; an option missing from an older record counts as its default."""
    from engrain.config import NOT_MEASURED, config_defaults

    c = {**config_defaults(record["kind"]), **record["config"]}
    return {k: v for k, v in c.items() if k != "seed" and k not in NOT_MEASURED}


def group_runs(records: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Runs grouped by everything but the seed: [(row header, runs)], per model, task and k with ICL first.
    Groups that share a name (model, task, method, k) get a ``differs`` entry: their values of the options
    that tell them apart."""
    import json
    from collections import defaultdict

    from engrain.results import variant

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[json.dumps(_settings(r), sort_keys=True, default=str)].append(r)
    from engrain.tasks.documents import is_document_task

    named: dict[tuple, list[dict]] = defaultdict(list)
    for rs in groups.values():
        c = rs[0]["config"]
        k = "-" if is_document_task(c["task"]) else c["shots"]  # a document task has no demonstrations
        named[(c["model"], c["task"], variant(rs[0]["kind"], rs[0]["method"], c), k)].append(rs)
    out = []
    first = {m: i for i, m in enumerate(BASELINES)}  # per model, task and k: the baselines, then the rest by name
    for (model, task, name, shots) in sorted(named, key=lambda g: (g[0], g[1], g[3], first.get(g[2], len(first)), g[2])):
        runs = named[(model, task, name, shots)]
        settings = [_settings(rs[0]) for rs in runs]
        differ = sorted(k for k in settings[0] if len({json.dumps(s.get(k), default=str) for s in settings}) > 1)
        for rs, s in sorted(zip(runs, settings), key=lambda x: [str(x[1].get(k)) for k in differ]):
            head = {"model": model, "task": task, "method": name, "k": shots}
            if differ:
                head["differs"] = ", ".join(f"{k}={s.get(k)}" for k in differ)
            out.append((head, rs))
    return out


def summarize(records: list[dict]) -> list[dict]:
    """One row per configuration (everything but the seed) over seeds: accuracy (and MCC) mean ± std
    per evaluation set, HANS per heuristic, train time, peak memory and per-query inference time."""
    import statistics

    rows = []
    for head, rs in group_runs(records):
        task = head["task"]
        row = {**head, "seeds": sorted(r["config"]["seed"] for r in rs)}
        for split in rs[0]["metrics"]:
            col = "in-domain" if split == task else split  # one column for every task's own validation set
            row[col] = _mean_std([r["metrics"][split]["accuracy"] for r in rs])
            if all("mcc" in r["metrics"][split] for r in rs):  # 0 for a constant guess, which accuracy flatters on QQP
                row[f"{col} MCC"] = _mean_std([r["metrics"][split]["mcc"] for r in rs])
            for heur in rs[0]["metrics"][split].get("by_heuristic", {}):
                row[f"{col}:{heur}"] = _mean_std([r["metrics"][split]["by_heuristic"][heur]["all"] for r in rs])
            for kind in rs[0]["metrics"][split].get("by_type", {}):  # a document task's question types
                row[kind] = _mean_std([r["metrics"][split]["by_type"][kind]["accuracy"] for r in rs if kind in r["metrics"][split]["by_type"]])
            gaps = [r["metrics"][split]["gap_recovery"] for r in rs if "gap_recovery" in r["metrics"][split]]
            for kind in ([None] + list(gaps[0]["by_type"])) if gaps else []:
                values = [g["overall"] if kind is None else g["by_type"].get(kind) for g in gaps]
                row[f"gap {kind or 'all'}"] = _mean_std([v for v in values if v is not None])
            per_query = [r["measure"][split]["seconds"] / r["metrics"][split]["n"] * 1000 for r in rs]
            row[f"{col} ms/query"] = f"{statistics.median(per_query):.1f}"
        train = [r["measure"]["train"] for r in rs if "train" in r["measure"]]
        row["train s"] = f"{statistics.median([t['seconds'] for t in train]):.0f}" if train else "-"
        teacher = [r["teacher"]["seconds"] for r in rs if "teacher" in r]
        if teacher or any(r["method"] == "distill" for r in records):  # the column only where distillation is compared
            row["teacher s"] = f"{statistics.median(teacher):.0f}" if teacher else "-"
        if any("forgetting" in r for r in records):  # the columns only where forgetting was measured
            probes = [r["forgetting"]["after"] for r in rs if "forgetting" in r]
            row["RTE 16-shot after"] = _mean_std([p["rte_icl16_accuracy"] for p in probes])
            row["held-out ppl after"] = _mean_std([p["heldout_perplexity"] for p in probes])
        peaks = [r["measure"]["train"]["peak_memory_mb"] if "train" in r["measure"] else max(
            v["peak_memory_mb"] for v in r["measure"].values() if isinstance(v, dict) and "peak_memory_mb" in v) for r in rs]
        row["peak MB"] = f"{max(peaks):.0f}"
        rows.append(row)
    return _with_baseline_rows(_with_speedup(rows), records)


def _with_baseline_rows(rows: list[dict], records: list[dict]) -> list[dict]:
    """Before each model's rows on a document task: chance, the corpus prior and the longest choice (no model),
    from a record that carries them (engrain.documents.evaluate)."""
    out, done = [], set()
    for row in rows:
        key = (row["model"], row["task"])
        source = next((r for r in records if "baselines" in r and (r["config"]["model"], r["config"]["task"]) == key), None)
        if source is not None and key not in done:
            done.add(key)
            for name, label in BASELINE_ROWS[:3]:
                b = source["baselines"][name]
                out.append({"model": row["model"], "task": row["task"], "method": label, "k": row["k"], "in-domain": f"{b['accuracy']:.3f}",
                            **{kind: f"{v['accuracy']:.3f}" for kind, v in b["by_type"].items()}})
        out.append(row)
    return out


def _with_speedup(rows: list[dict]) -> list[dict]:
    """After the in-domain per-query time: how many times faster a query is than ICL's (open book's, on a
    document task) with the same model, task and k (the per-query saving of moving the context into the weights)."""
    icl = {(r["model"], r["task"], r["k"]): float(r["in-domain ms/query"]) for r in rows if r["method"] in IN_PROMPT}
    if not icl or len(icl) == len(rows):
        return rows
    out = []
    for row in rows:
        ms, base = float(row["in-domain ms/query"]), icl.get((row["model"], row["task"], row["k"]))
        items = list(row.items())
        at = list(row).index("in-domain ms/query") + 1
        moved = row["method"] in IN_PROMPT or row["method"] not in BASELINES  # closed book never had the context
        out.append(dict(items[:at] + [("speed-up vs icl", f"{base / ms:.1f}" if base and moved else "-")] + items[at:]))
    return out


MACHINE_SPREAD = 1.5  # matmul peaks (same dtype) this far apart or more: the records come from machines of different speed


def machine_note(records: list[dict]) -> str | None:
    """A warning when the records' timings come from machines of different speed, by their measured matmul peak per dtype."""
    peaks: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if peak := r.get("measure", {}).get("matmul_peak_tflops"):
            peaks[r.get("model", {}).get("dtype", "?")][round(peak, 2)] += 1
    spread = {dtype: c for dtype, c in peaks.items() if max(c) >= MACHINE_SPREAD * min(c)}
    if not spread:
        return None
    parts = [f"{dtype}: " + ", ".join(f"{p:.2f} TFLOP/s in {n} records" for p, n in sorted(c.items())) + f" ({max(c) / min(c):.1f}x apart)"
             for dtype, c in sorted(spread.items())]
    return ("Timings come from machines of different speed (measured matmul peak, " + "; ".join(parts) + "): "
            "compare times only between runs measured on the same machine, or compare MFU.")


def markdown(rows: list[dict]) -> str:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in (row.get(c, "") for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
