"""Reading a YAML mapping with one-line errors (configs, sweeps, task files); imports nothing of engrain's but errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engrain.errors import EngrainError


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
