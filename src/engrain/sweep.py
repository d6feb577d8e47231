"""Sweeps: an experiment is a YAML file; running it again skips the runs whose record exists.

    out: runs/fewshot            # where the records go
    base: {model: smollm2-135m, shots: 32, sample: 3000}
    grid: {task: [rte, mnli], seed: [0, 1, 2]}     # every combination ...
    runs:                                          # ... times every entry here
      - {method: icl}
      - {method: pbft, params: lora}

Entries with ``method: icl`` are evaluations (EvalConfig), the others fine-tuning (TrainConfig).
Every config is built, and so validated, before the first run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from engrain.config import EvalConfig, TrainConfig, from_dict, load_yaml
from engrain.errors import EngrainError
from engrain.results import run_name


def plan(path: str | Path) -> tuple[Path, list[tuple[str, object]]]:
    spec = load_yaml(path)
    unknown_keys = set(spec) - {"out", "base", "grid", "runs"}
    if unknown_keys:
        raise EngrainError(f"{path}: unknown top-level key {sorted(unknown_keys)[0]!r}; expected out, base, grid, runs")
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
                opts.pop("method", None)
                names = {f.name for f in dataclasses.fields(EvalConfig)}
                cfg = from_dict(EvalConfig, {k: v for k, v in opts.items() if k in names}, where=str(path))
                planned.append((run_name("eval", "icl", cfg), cfg))
            else:
                cfg = from_dict(TrainConfig, opts, where=str(path))
                planned.append((run_name("train", cfg.method, cfg), cfg))
    seen: dict[str, object] = {}
    for name, cfg in planned:
        if name in seen:
            raise EngrainError(f"{path}: two runs would write the same record {name!r}; they differ in: {', '.join(differences(seen[name], cfg))}")
        seen[name] = cfg
    return out, planned


def differences(a, b) -> list[str]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k)) or ["the kind of run"]


def check_done(path: Path, cfg) -> bool:
    """True when ``path`` holds a record of exactly this config (then the run is skipped)."""
    if not path.is_file():
        return False
    from engrain.results import read_record

    recorded = read_record(path)["config"]
    mine = dataclasses.asdict(cfg)
    # An option added to engrain after the record was written counts as its default then.
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    diff = sorted(k for k in mine if k not in ("progress", "data_dir", "device", "out", "save")
                  and recorded.get(k, defaults[k]) != mine[k])
    if diff:
        raise EngrainError(f"{path} records a run with a different config (differs in: {', '.join(diff)}); move it away or change out")
    return True


def run_sweep(path: str | Path, dry_run: bool = False, echo=print) -> list[str]:
    """Run what is not done yet; returns the names run (or, with dry_run, that would run)."""
    from engrain.evaluate import evaluate
    from engrain.train import train

    out, planned = plan(path)
    todo = [(n, c) for n, c in planned if not check_done(out / f"{n}.json", c)]
    echo(f"{len(planned)} runs planned, {len(planned) - len(todo)} done, {len(todo)} to run")
    for i, (name, cfg) in enumerate(todo, 1):
        echo(f"[{i}/{len(todo)}] {name}")
        if not dry_run:
            (train if isinstance(cfg, TrainConfig) else evaluate)(cfg)
    return [n for n, _ in todo]
