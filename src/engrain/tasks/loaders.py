"""Read a task split from a local folder (the layout of ../shared/data) or from the Hugging Face hub.

An example is a plain dict: the task's text fields, ``label`` (class id), ``line`` (where it came
from) and any metadata columns (HANS: heuristic, subcase). Every problem with a file is an
:class:`EngrainError` that names the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from engrain.errors import EngrainError
from engrain.tasks.spec import HubSource, LocalSource, TaskSpec

Example = dict

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def default_data_dir() -> Path | None:
    env = os.environ.get("ENGRAIN_DATA")
    return Path(env).expanduser() if env else None


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) from a JSON-lines file; blank lines skipped; one-line errors."""
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EngrainError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise EngrainError(f"{path}:{n}: expected a JSON object per line")
                yield n, row
    except UnicodeDecodeError as e:
        raise EngrainError(f"{path}: not UTF-8 text (byte {e.start}); convert it, e.g. iconv -t utf-8") from None


def _rows(path: Path, src: LocalSource) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row dict) from one file."""
    if src.reader == "jsonl":
        yield from jsonl_rows(path)
    elif src.reader == "json_dict":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EngrainError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise EngrainError(f"{path}: expected one JSON object mapping ids to examples")
        for key, row in data.items():
            if not isinstance(row, dict):
                raise EngrainError(f"{path}: entry {key!r} is not a JSON object")
            yield key, row
    elif src.reader in ("tsv", "tsv_noheader"):
        with path.open(encoding="utf-8", newline="") as f:
            # Quotes are literal in these files (MNLI, HANS): no quote handling.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = list(src.header) if src.reader == "tsv_noheader" else next(reader, None)
            if header is None:
                raise EngrainError(f"{path}: empty file, expected a header line")
            start = 1 if src.reader == "tsv_noheader" else 2
            for n, values in enumerate(reader, start):
                if not values:
                    continue
                if len(values) < len(header):
                    raise EngrainError(f"{path}:{n}: {len(values)} tab-separated columns, expected {len(header)}")
                yield n, dict(zip(header, values))
    else:  # a bug in a spec, not user input
        raise ValueError(f"unknown reader {src.reader}")


def read_local(spec: TaskSpec, split: str, data_dir: Path) -> list[Example]:
    src = spec.splits[split].local
    path = data_dir / src.path
    if not path.is_file():
        raise EngrainError(f"data file not found: {path} (the {spec.name} {split} split; check --data-dir / ENGRAIN_DATA)")
    label_id = {name: i for i, name in enumerate(spec.labels)}
    out = []
    for line, row in _rows(path, src):
        ex: Example = {}
        for ours, theirs in src.columns.items():
            if theirs not in row:
                raise EngrainError(f"{path}:{line}: missing column {theirs!r} (expected columns: {', '.join(src.columns.values())})")
            ex[ours] = row[theirs]
        raw = str(ex["label"]).strip()
        if raw not in src.labels:
            raise EngrainError(f"{path}:{line}: unknown label {raw!r}; expected one of {', '.join(map(repr, src.labels))}")
        if src.labels[raw] is None:  # dropped on purpose (MNLI neutral when binarised)
            continue
        ex["label"] = label_id[src.labels[raw]]
        for m in spec.meta:
            if m in row:
                ex[m] = row[m]
        ex["line"] = f"{path.name}:{line}"
        out.append(ex)
    if not out:
        raise EngrainError(f"{path}: no examples read")
    return out


def read_hub(spec: TaskSpec, split: str) -> list[Example]:
    hub: HubSource | None = spec.splits[split].hub
    if hub is None:
        raise EngrainError(f"{spec.hub_note or spec.name + ' has no hub source'}; pass --data-dir or set ENGRAIN_DATA to a local copy")
    try:
        import datasets

        ds = datasets.load_dataset(hub.path, hub.config, split=hub.split)
    except Exception as e:  # offline, renamed dataset, ...: the user can only act on the message
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngrainError(
            f"could not load {hub.path}{'/' + hub.config if hub.config else ''} ({hub.split}) from the hub: {msg}; "
            "pass --data-dir or set ENGRAIN_DATA to a local copy"
        ) from None
    if hub.rows is not None:
        ds = ds.select(range(*hub.rows))
    label_id = {name: i for i, name in enumerate(spec.labels)}
    out = []
    for n, row in enumerate(ds):
        lab = row["label"]
        if not 0 <= lab < len(hub.labels):  # GLUE test splits carry -1
            continue
        name = hub.labels[lab]
        if name is None:
            continue
        ex = {ours: row[theirs] for ours, theirs in hub.columns.items()}
        ex["label"] = label_id[name]
        ex.update({m: row[m] for m in spec.meta if m in row})
        ex["line"] = f"{hub.path}:{hub.split}:{n}"
        out.append(ex)
    return out


def load_split(spec: TaskSpec, split: str, data_dir: Path | str | None = None) -> list[Example]:
    """Examples of one split: from ``data_dir`` (or $ENGRAIN_DATA) when given, else from the hub."""
    if "read" in spec.extra:  # a spec that reads its own data (your task, engrain.tasks.user), whatever data_dir says
        return spec.extra["read"](spec, split)
    if split not in spec.splits:
        raise EngrainError(f"task {spec.name} has no {split} split (it has: {', '.join(spec.splits)})")
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if data_dir is not None:
        if not data_dir.is_dir():
            raise EngrainError(f"data folder not found: {data_dir} (from --data-dir / ENGRAIN_DATA)")
        return read_local(spec, split, data_dir)
    return read_hub(spec, split)
