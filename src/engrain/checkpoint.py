"""Checkpoints inside a training run, so that a killed run resumes where it was (``--save-every N``, ``--resume``).

A checkpoint is Accelerate's ``save_state`` (model, optimiser, schedule, every RNG) plus the loop's own
state: the epoch and the batches of it already trained, the step, the tokens seen, the losses since the
last curve point, the curve so far, the metered seconds, and the shuffling generators' states as they
were when the epoch began, so that the resumed epoch draws the same order and skips what was trained
(``Accelerator.skip_first_batches``). Resumed, a run ends with the weights and the record an
uninterrupted run of the same config ends with (tests/test_checkpoint.py). One checkpoint per run is kept,
``OUT/checkpoints/<run name>/latest``, replaced by rename; it is removed when the run's record is
written unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from engrain.errors import EngrainError
from engrain.files import swap_in


def folder(cfg) -> Path:
    from engrain.results import run_name

    return Path(cfg.out or "runs") / "checkpoints" / run_name("train", cfg.method, cfg)


def save(run, loop, state: dict) -> Path:
    """Write the checkpoint of ``state`` (the loop's own, JSON) and of everything Accelerate holds."""
    target = folder(run.cfg) / "latest"
    tmp, old = (target.with_name(f".latest.{tag}{os.getpid()}") for tag in ("tmp", "old"))
    if run.acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    run.acc.wait_for_everyone()
    run.acc.save_state(str(tmp))
    if run.acc.is_main_process:
        torch.save(state.pop("generator_states"), tmp / "generators.pt")
        (tmp / "loop.json").write_text(json.dumps({**state, "config": dataclasses.asdict(run.cfg)}, default=str))
        swap_in(tmp, target, old)
    run.acc.wait_for_everyone()
    return target


def load(run, loop) -> dict | None:
    """The loop's state from the run's checkpoint, with Accelerate's restored; None without one."""
    from engrain.config import differences

    target = folder(run.cfg) / "latest"
    if not (target / "loop.json").is_file():
        return None
    state = json.loads((target / "loop.json").read_text())
    diff = differences(state.pop("config"), run.cfg)
    if diff:
        raise EngrainError(f"{target} is a checkpoint of another config (differs in: {', '.join(diff)}); remove it or change --out")
    run.acc.load_state(str(target))
    state["generator_states"] = torch.load(target / "generators.pt")
    return state


def remove(cfg) -> None:
    shutil.rmtree(folder(cfg), ignore_errors=True)
