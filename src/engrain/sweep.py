"""Sweeps: an experiment is a YAML file; running it again skips the runs whose record exists.

    out: runs/fewshot            # where the records go
    base: {model: smollm2-135m, shots: 32, sample: 3000}
    grid: {task: [rte, mnli], seed: [0, 1, 2]}     # every combination ...
    runs:                                          # ... times every entry here
      - {method: icl}
      - {method: pbft, params: lora, shots: 16}    # an entry may pin a grid key: identical runs run once
    reuse: [runs/other]          # optional: folders whose records of identical runs are copied, not rerun

Entries with ``method: icl`` are evaluations (EvalConfig), the others fine-tuning (TrainConfig).
Every config is built, and so validated, before the first run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from engrain.config import NOT_MEASURED, EvalConfig, TrainConfig, from_dict, load_yaml
from engrain.errors import EngrainError
from engrain.results import eval_method, run_name


def plan(path: str | Path) -> tuple[Path, list[tuple[str, object]], list[Path]]:
    """(out folder, [(record name, config)] without duplicates, reuse folders), all validated."""
    return plan_spec(load_yaml(path), path)


def plan_spec(spec: dict, path: str | Path) -> tuple[Path, list[tuple[str, object]], list[Path]]:
    """:func:`plan` of an experiment given as a dict (``path`` names it in errors)."""
    unknown_keys = set(spec) - {"out", "base", "grid", "runs", "reuse"}
    if unknown_keys:
        raise EngrainError(f"{path}: unknown top-level key {sorted(unknown_keys)[0]!r}; expected out, base, grid, runs, reuse")
    out = Path(spec.get("out") or "runs")
    base, grid, runs = spec.get("base") or {}, spec.get("grid") or {}, spec.get("runs") or [{}]
    if not isinstance(base, dict) or not isinstance(grid, dict) or not isinstance(runs, list):
        raise EngrainError(f"{path}: base and grid must be mappings, runs a list of mappings")
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    planned = []
    for combo in itertools.product(*values):
        for entry in runs:
            opts = {**base, **dict(zip(keys, combo)), **entry, "out": str(out)}
            opts = {k.replace("-", "_"): v for k, v in opts.items()}
            if opts.get("method", "icl") == "icl":
                cfg = _icl_config(path, entry, opts)
                planned.append((run_name("eval", eval_method(cfg), cfg), cfg))
            else:
                cfg = from_dict(TrainConfig, opts, where=str(path))
                planned.append((run_name("train", cfg.method, cfg), cfg))
    seen: dict[str, object] = {}
    for name, cfg in planned:
        if name in seen and (diff := differences(seen[name], cfg, ignore=())):
            raise EngrainError(f"{path}: two runs would write the same record {name!r}; they differ in: {', '.join(diff)}")
        seen.setdefault(name, cfg)  # the same run planned twice (an entry pinning a grid key) runs once
    reuse = spec.get("reuse") or []
    reuse = [reuse] if isinstance(reuse, str) else reuse
    if not isinstance(reuse, list) or not all(isinstance(f, str) for f in reuse):
        raise EngrainError(f"{path}: reuse must be a folder or a list of folders")
    missing = [f for f in reuse if not Path(f).is_dir()]
    if missing:
        raise EngrainError(f"{path}: reuse folder not found: {missing[0]}")
    return out, list(seen.items()), [Path(f) for f in reuse]


TRAIN_ONLY = {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in dataclasses.fields(EvalConfig)}


def _icl_config(path, entry: dict, opts: dict) -> EvalConfig:
    """An icl entry is an evaluation: training options shared through base or grid are dropped (they are
    for the training entries), but one written in the entry itself is a mistake, as is an unknown key."""
    own = sorted(k.replace("-", "_") for k in entry if k.replace("-", "_") in TRAIN_ONLY - {"method"})
    if own:
        raise EngrainError(f"{path}: {own[0]!r} is a training option; an icl entry (engrain eval) trains nothing")
    return from_dict(EvalConfig, {k: v for k, v in opts.items() if k not in TRAIN_ONLY}, where=str(path))


def differences(a, b, ignore=NOT_MEASURED) -> list[str]:
    """The options in which config ``b`` differs from ``a`` (a config or a recorded config dict).
    An option missing from a record (added to engrain after it was written) counts as its default,
    except ``sample_seed``: before it existed the evaluation sample was drawn with the run's seed."""
    if not isinstance(a, dict) and type(a) is not type(b):
        return ["the kind of run"]
    defaults = {f.name: f.default for f in dataclasses.fields(b)}
    da = a if isinstance(a, dict) else dataclasses.asdict(a)
    if "sample_seed" not in da:
        da = {**da, "sample_seed": da.get("seed", 0)}
    return sorted(k for k, v in dataclasses.asdict(b).items() if k not in ignore and da.get(k, defaults[k]) != v)


def check_done(path: Path, cfg) -> bool:
    """True when ``path`` holds a record of exactly this config (then the run is skipped)."""
    if not path.is_file():
        return False
    from engrain.results import read_record

    diff = differences(read_record(path)["config"], cfg)
    if diff:
        raise EngrainError(f"{path} records a run with a different config (differs in: {', '.join(diff)}); move it away or change out")
    return True


def reusable(name: str, cfg, folders: list[Path]) -> Path | None:
    """The first record of exactly this run in ``folders``, or None."""
    from engrain.results import read_record

    for folder in folders:
        src = folder / f"{name}.json"
        if src.is_file() and not differences(read_record(src)["config"], cfg):
            return src
    return None


def run_one(cfg) -> None:
    from engrain.evaluation import evaluate
    from engrain.train import train

    (train if isinstance(cfg, TrainConfig) else evaluate)(cfg)


def _child(cfg) -> None:
    import sys

    try:
        run_one(cfg)
    except EngrainError as e:
        print(f"engrain: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        sys.exit(130)


def run_isolated(name: str, cfg) -> None:
    """Run in a fresh process, so that each record's time and memory are its own (a long-lived
    process keeps the memory high-water mark of earlier runs) and a crash cannot take the sweep's
    bookkeeping with it."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(cfg,), name=name)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise EngrainError(f"run {name} failed (exit code {proc.exitcode}); the runs before it are recorded, rerun the sweep to continue")


def run_sweep(path: str | Path, dry_run: bool = False, echo=print, isolate: bool = True) -> list[str]:
    """Run what is not done yet, each run in its own process unless ``isolate`` is false; returns the
    names run (or, with dry_run, that would run)."""
    return run_planned(*plan(path), dry_run=dry_run, echo=echo, isolate=isolate)


def run_planned(out: Path, planned: list, folders: list[Path], dry_run: bool = False, echo=print, isolate: bool = True) -> list[str]:
    """:func:`run_sweep` of a plan (:func:`plan_spec`)."""
    from engrain.results import read_record, write_record

    todo = [(n, c) for n, c in planned if not check_done(out / f"{n}.json", c)]
    reused = {n: src for n, c in todo if (src := reusable(n, c, folders))}
    for src in reused.values():
        echo(f"{'would reuse' if dry_run else 'reused'} {src}")
        if not dry_run:
            write_record(read_record(src), out)  # atomic, as every record
    todo = [(n, c) for n, c in todo if n not in reused]
    echo(f"{len(planned)} runs planned, {len(planned) - len(todo)} done, {len(todo)} to run")
    for i, (name, cfg) in enumerate(todo, 1):
        echo(f"[{i}/{len(todo)}] {name}")
        if not dry_run:
            run_isolated(name, cfg) if isolate else run_one(cfg)
    return [n for n, _ in todo]
