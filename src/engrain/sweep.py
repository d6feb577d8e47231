"""Sweeps: an experiment is a YAML file; running it again skips the runs whose record exists.

    out: runs/fewshot            # where the records go
    base: {model: smollm2-135m, shots: 32, sample: 3000}
    grid: {task: [rte, mnli], seed: [0, 1, 2]}     # every combination ...
    runs:                                          # ... times every entry here
      - {method: icl}
      - {method: pbft, params: lora, shots: 16}    # an entry may pin a grid key: identical runs run once
    reuse: [runs/other]          # optional: folders whose records of identical runs are copied, not rerun
    exclude: [{task: mnli, method: icl, seed: 2}]   # optional: combinations left out (every key must match)

Entries with ``method: icl`` are evaluations (EvalConfig), the others fine-tuning (TrainConfig).
Every config is built, and so validated, before the first run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from engrain.config import EvalConfig, TrainConfig, differences, from_dict, load_yaml
from engrain.errors import EngrainError
from engrain.results import eval_method, run_name


def plan(path: str | Path) -> tuple[Path, list[tuple[str, object]], list[Path]]:
    """(out folder, [(record name, config)] without duplicates, reuse folders), all validated."""
    return plan_spec(load_yaml(path), path)


def plan_spec(spec: dict, path: str | Path) -> tuple[Path, list[tuple[str, object]], list[Path]]:
    """:func:`plan` of an experiment given as a dict (``path`` names it in errors)."""
    unknown_keys = set(spec) - {"out", "base", "grid", "runs", "reuse", "exclude"}
    if unknown_keys:
        raise EngrainError(f"{path}: unknown top-level key {sorted(unknown_keys)[0]!r}; expected out, base, grid, runs, reuse, exclude")
    exclude = spec.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise EngrainError(f"{path}: exclude must be a list of mappings (option: value), e.g. [{{task: rte, shots: 128, method: icl}}]")
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
            if any(all(opts.get(k.replace("-", "_"), "icl" if k == "method" else None) == v for k, v in e.items()) for e in exclude):
                continue  # a combination the experiment leaves out (e.g. a context that does not fit the window)
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

    if isinstance(cfg, TrainConfig):
        cfg.resume = True  # a run killed with its sweep continues from its last checkpoint (--save-every), if any
        train(cfg)
    else:
        evaluate(cfg)


def _child(cfg, device: str | None = None, parent: int | None = None) -> None:
    """One run in a spawned process: it dies with the sweep (``parent``; Linux: the parent's death signals
    it), and with ``device`` it sees only that GPU."""
    import os
    import sys

    _die_with_parent()
    if parent is not None and os.getppid() != parent:  # the sweep died before the signal was asked for
        sys.exit(143)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before torch is imported in this process
    try:
        run_one(cfg)
    except EngrainError as e:
        print(f"engrain: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        sys.exit(130)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL (no orphan keeps computing)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except OSError:
            pass


def gpu_slots(jobs: int) -> list[str | None]:
    """The GPU each of ``jobs`` parallel runs sees (CUDA_VISIBLE_DEVICES), round-robin over the visible
    ones; None for every job without GPUs (or a single job, which sees what the sweep sees)."""
    import os

    if jobs < 2:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return [devices[i % len(devices)] if devices else None for i in range(jobs)]


def run_parallel(todo: list, jobs: int, echo=print) -> None:
    """Run ``todo`` ([(name, config)]) in up to ``jobs`` spawned processes at once, each with its own time
    and memory. A record is written by rename when its run ends, so stopping the sweep at any moment
    (Ctrl-C, SIGTERM: the running children are stopped too; SIGKILL: they die with it) loses no
    finished record and leaves none half-written; running the sweep again resumes. After a failed run
    no new run starts; the ones under way finish, then the sweep reports the failures."""
    import multiprocessing
    import multiprocessing.connection
    import os
    import signal

    ctx, slots = multiprocessing.get_context("spawn"), gpu_slots(jobs)
    free, queue, running, failed, started = list(range(jobs)), list(todo), {}, [], 0

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while running or (queue and not failed):
            while queue and free and not failed:
                (name, cfg), slot = queue.pop(0), free.pop(0)
                proc = ctx.Process(target=_child, args=(cfg, slots[slot % len(slots)], os.getpid()), name=name)
                proc.start()
                running[proc.sentinel] = (proc, name, slot)
                started += 1
                echo(f"[{started}/{len(todo)}] {name}" + (f" (job {slot + 1} of {jobs})" if jobs > 1 else ""))
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc, name, slot = running.pop(sentinel)
                proc.join()
                free.append(slot)
                if proc.exitcode != 0:
                    failed.append(f"{name} failed (exit code {proc.exitcode})")
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.join()
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise EngrainError(f"run {'; '.join(failed)}; the runs that finished are recorded, rerun the sweep to continue")


def run_sweep(path: str | Path, dry_run: bool = False, echo=print, isolate: bool = True, jobs: int = 1) -> list[str]:
    """Run what is not done yet, each run in its own process (``jobs`` at once) unless ``isolate`` is false;
    returns the names run (or, with dry_run, that would run)."""
    return run_planned(*plan(path), dry_run=dry_run, echo=echo, isolate=isolate, jobs=jobs)


def run_planned(out: Path, planned: list, folders: list[Path], dry_run: bool = False, echo=print, isolate: bool = True,
                jobs: int = 1) -> list[str]:
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
    if dry_run or not isolate:
        for i, (name, cfg) in enumerate(todo, 1):
            echo(f"[{i}/{len(todo)}] {name}")
            if not dry_run:
                run_one(cfg)
    else:
        run_parallel(todo, jobs, echo)
    return [n for n, _ in todo]
