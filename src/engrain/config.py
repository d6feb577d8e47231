"""Typed run configuration: one dataclass per command, documented once, mapped to CLI flags and YAML.

Each field's ``help`` is its documentation; the CLI builds its flags from these fields, and a YAML
file (``--config run.yaml``) sets the same names. Validation happens when the config is built, before
any data or model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engrain.errors import EngrainError


def opt(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class EvalConfig:
    """In-context learning evaluation of a model on a task and its out-of-domain partners."""

    model: str = opt("smollm2-135m", "model: a bundled alias (engrain models), a local folder, a .gguf file or a hub id")
    task: str = opt("rte", "task name (engrain tasks)")
    shots: int = opt(16, "number of demonstrations k (0 = zero-shot)")
    seed: int = opt(0, "seed of the demonstration sample")
    format: str | None = opt(None, "prompt format: minimal, gpt-3 or eval-harness (default: the task's)")
    template: str | None = opt(None, "your own pattern with the task's fields in braces; the format's verbalisers are kept")
    balanced: bool = opt(True, "sample demonstrations class-balanced")
    ood: bool = opt(True, "also evaluate on the task's out-of-domain partners")
    limit: int | None = opt(None, "evaluate on the first N examples of each split")
    batch_size: int = opt(16, "queries per forward pass")
    precision: str = opt("auto", "auto (bf16 where the hardware has it), bf16 or fp32")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    data_dir: str | None = opt(None, "folder laid out like engrain's data (default: $ENGRAIN_DATA, else the hub)")
    out: str | None = opt("runs", "folder for the run record (JSON); empty to write none")
    progress: bool = opt(True, "show progress bars")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from engrain.models import PRECISIONS
        from engrain.tasks import get_task

        spec = get_task(self.task)
        spec.prompt_format(self.format, self.template)
        _at_least("shots", self.shots, 0)
        _at_least("batch_size", self.batch_size, 1)
        if self.limit is not None:
            _at_least("limit", self.limit, 1)
        if self.precision not in PRECISIONS:
            raise EngrainError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.shots > 0 and "train" not in spec.splits:
            raise EngrainError(
                f"task {self.task} has no train split to draw demonstrations from; use --shots 0, "
                "or evaluate it as the out-of-domain partner of another task"
            )


def _at_least(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise EngrainError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys with the allowed ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    bad = [k for k in values if k not in names]
    if bad:
        from engrain.errors import unknown

        raise unknown(f"key in {where}", bad[0], names)
    return cls(**values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise EngrainError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise EngrainError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise EngrainError(f"{p}: expected a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}
