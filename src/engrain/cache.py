"""Results worth computing once: JSON files under ``$ENGRAIN_CACHE/<kind>/`` (or ``$ENGRAIN_RESULTS_CACHE/<kind>/``:
the test suite keeps its own), keyed by a hash of what they depend on (a model's files, precision, device
type, data, code version), written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """Where engrain keeps dequantised models and the measured matmul peak (movable via ENGRAIN_CACHE)."""
    return Path(os.environ.get("ENGRAIN_CACHE") or Path.home() / ".cache" / "engrain")


def model_fingerprint(name: str) -> str:
    """A model's identity: a local path by its files' names, sizes and times; a hub id or alias by its name."""
    p = Path(name)
    if not p.exists():
        return name
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return name + ":" + ";".join(f"{f.relative_to(p) if p.is_dir() else f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def cached(kind: str, key: list, compute: Callable[[], dict]) -> dict:
    """``compute()``'s result, from ``$ENGRAIN_CACHE/<kind>/<hash of key>.json`` when it is there."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = Path(os.environ.get("ENGRAIN_RESULTS_CACHE") or cache_dir()) / kind / f"{digest}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:  # a damaged entry is recomputed
            pass
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return out
