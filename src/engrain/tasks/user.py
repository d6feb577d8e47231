"""Your own labelled task, declared in a YAML file and used as ``--task my_task.yaml`` everywhere a built-in
task name goes (eval, train with icl / pbft / head / distill, YAML configs, sweeps, saved adapters):

    # reviews.yaml
    train: data/reviews_train.csv        # a .csv / .tsv / .jsonl / .json file (relative to this file), or a
    validation: data/reviews_dev.csv     #   Hugging Face dataset id, optionally with a split: imdb:test
    text_fields: [review]                # the columns the template names
    label_field: sentiment               # default: label
    labels: [positive, negative]         # the label column's values, in class order ({value: name} to rename)
    verbalizers: [" Yes", " No"]         # one answer per label, each a single token of the model's tokenizer
    template: "Review: {review}\\nDid the reviewer like it?"
    ood: {validation: data/tweets.csv}   # optional: an out-of-domain set with the same labels (and fields,
                                         #   unless it names its own text_fields / label_field)
    hub_config: null                     # a hub dataset's configuration, if it has several

Only ``data: FILE|HUB_ID`` instead of ``train``/``validation``: a hub dataset's train and validation
splits; a file is split by a stable hash of each row's text, a fifth held out for validation. The
task's name (in records, metrics and run names) is the file's path as given. Files are read whatever
``--data-dir`` says (they are yours, not the built-in tasks' data).
"""

from __future__ import annotations

import csv
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from engrain.errors import EngrainError
from engrain.tasks.spec import OODPartner, PromptFormat, TaskSpec

SUFFIXES = (".yaml", ".yml")
FILE_READERS = (".csv", ".tsv", ".jsonl", ".json")
KEYS = {"name", "description", "data", "train", "validation", "text_fields", "label_field", "labels", "verbalizers",
        "template", "ood", "hub_config"}
OOD_SUFFIX = "#ood"


def is_task_file(name: str) -> bool:
    return name.removesuffix(OOD_SUFFIX).lower().endswith(SUFFIXES)


def get_user_task(name: str) -> TaskSpec:
    """The task declared in the file ``name`` (or its out-of-domain set: ``name#ood``)."""
    path = name.removesuffix(OOD_SUFFIX)
    p = Path(path)
    if not p.is_file():
        raise EngrainError(f"task file not found: {path} (a YAML file declaring your task: see engrain.tasks.user)")
    main, ood = _load(path, p.stat().st_mtime_ns)
    if name.endswith(OOD_SUFFIX):
        if ood is None:
            raise EngrainError(f"{path} declares no ood set")
        return ood
    return main


@lru_cache(maxsize=32)
def _load(path: str, mtime: int) -> tuple[TaskSpec, TaskSpec | None]:
    from engrain.yamlfile import load_yaml

    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise EngrainError(f"{path}: expected a mapping of task keys ({', '.join(sorted(KEYS))})")
    bad = sorted(set(raw) - KEYS)
    if bad:
        from engrain.errors import unknown

        raise unknown(f"key in task file {path}:", bad[0], KEYS)
    for key in ("text_fields", "labels", "verbalizers", "template"):
        if key not in raw:
            raise EngrainError(f"{path}: missing {key!r} (a task file needs text_fields, labels, verbalizers and template)")
    here = Path(path).parent
    fields = _names(raw["text_fields"], path, "text_fields")
    values, names = _labels(raw["labels"], path)
    verbs = _names(raw["verbalizers"], path, "verbalizers", strip=False)
    if len(verbs) != len(names):
        raise EngrainError(f"{path}: {len(verbs)} verbalizers for {len(names)} labels ({', '.join(names)}): give one per label")
    if len(set(verbs)) != len(verbs):
        raise EngrainError(f"{path}: two labels have the same verbalizer; each label needs its own answer")
    label_field = raw.get("label_field", "label")
    sources = _sources(raw, here, path)
    fmt = PromptFormat(str(raw["template"]).replace("\\n", "\n"), dict(zip(names, verbs)))
    common = dict(labels=tuple(names), formats={"custom": fmt}, default_format="custom")
    ood_spec, ood = None, ()
    if raw.get("ood") is not None:
        o = raw["ood"]
        if not isinstance(o, dict) or "validation" not in o or set(o) - {"validation", "text_fields", "label_field", "hub_config"}:
            raise EngrainError(f"{path}: ood must be a mapping with validation: FILE|HUB_ID (and optionally text_fields, "
                               "label_field, hub_config)")
        ood_fields = _names(o.get("text_fields", fields), path, "ood text_fields")
        if ood_fields != fields:
            raise EngrainError(f"{path}: the ood set must have the task's text fields ({', '.join(fields)}), to be read by its template")
        ood_src = {"validation": _source(o["validation"], here, "validation", o.get("hub_config", raw.get("hub_config")))}
        ood_spec = TaskSpec(name=path + OOD_SUFFIX, description=f"out-of-domain set of {path}", fields=tuple(fields), splits=dict.fromkeys(ood_src),
                            extra={"read": read_user_split, "sources": ood_src, "values": values, "label_field": o.get("label_field", label_field)}, **common)
        ood = (OODPartner(ood_spec.name),)
    spec = TaskSpec(name=path, description=raw.get("description", f"your task ({path})"), fields=tuple(fields), splits=dict.fromkeys(sources), ood=ood,
                    extra={"read": read_user_split, "sources": sources, "values": values, "label_field": label_field}, **common)
    spec.prompt_format()  # a placeholder that is no text field: one line now, not at the first prompt
    return spec, ood_spec


def _names(value, path: str, key: str, strip: bool = True) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, (str, int)) for v in items):
        raise EngrainError(f"{path}: {key} must be a list (or a comma-separated string) of names")
    return [str(v).strip() if strip else str(v) for v in items]


def _labels(value, path: str) -> tuple[dict[str, str], list[str]]:
    """(label value as read -> label name, label names in class order)."""
    if isinstance(value, dict):
        values = {str(k): str(v) for k, v in value.items()}
    else:
        values = {v: v for v in _names(value, path, "labels")}
    names = list(dict.fromkeys(values.values()))
    if len(names) < 2:
        raise EngrainError(f"{path}: labels must name at least two classes")
    return values, names


def _sources(raw: dict, here: Path, path: str) -> dict:
    config = raw.get("hub_config")
    if "data" in raw:
        if "train" in raw or "validation" in raw:
            raise EngrainError(f"{path}: give data (one source) or train and validation, not both")
        src = _source(raw["data"], here, None, config)
        if "hub" in src:  # the dataset's own train and validation splits
            return {k: {**src, "split": k} for k in ("train", "validation")}
        return {"train": {**src, "part": "train"}, "validation": {**src, "part": "validation"}}
    missing = [k for k in ("train", "validation") if k not in raw]
    if missing == ["train", "validation"]:
        raise EngrainError(f"{path}: missing the data: give data: FILE|HUB_ID, or train: and validation:")
    return {k: _source(raw[k], here, k, config) for k in ("train", "validation") if k in raw}


def _source(value, here: Path, split: str | None, config) -> dict:
    """A file (resolved against the task file's folder) or a hub id with an optional :split."""
    value = str(value)
    local = here / value if not Path(value).is_absolute() else Path(value)
    if local.suffix.lower() in FILE_READERS:
        return {"file": str(local)}
    hub, _, hub_split = value.partition(":")
    return {"hub": hub, "split": hub_split or split, "config": config}


def read_user_split(spec: TaskSpec, split: str) -> list[dict]:
    """One split of a user task as examples: its text fields (strings), ``label`` (class id), ``line``."""
    sources = spec.extra["sources"]
    if split not in sources:
        raise EngrainError(f"task {spec.name} has no {split} split (it has: {', '.join(sources)})")
    src = sources[split]
    rows = _file_rows(Path(src["file"])) if "file" in src else _hub_rows(src)
    if "part" in src:  # one source split for you: a stable hash of the row's text, a fifth held out
        rows = [(n, r) for n, r in rows if (_held_out(r, spec.fields) == (src["part"] == "validation"))]
    label_field, values = spec.extra["label_field"], spec.extra["values"]
    ids = {name: i for i, name in enumerate(spec.labels)}
    out = []
    for where, row in rows:
        missing = [c for c in (*spec.fields, label_field) if c not in row]
        if missing:
            from engrain.errors import unknown

            raise EngrainError(f"{where}: " + str(unknown("column", missing[0], row.keys())).removeprefix("unknown "))
        raw = row[label_field]
        raw = str(raw).strip() if not isinstance(raw, float) or not raw.is_integer() else str(int(raw))
        if raw not in values:
            raise EngrainError(f"{where}: label {raw!r} is not one of the task's labels ({', '.join(values)})")
        out.append({**{f: str(row[f]) for f in spec.fields}, "label": ids[values[raw]], "line": where})
    if not out:
        raise EngrainError(f"task {spec.name}: its {split} split has no examples")
    return out


def _held_out(row: dict, fields) -> bool:
    text = "\x1f".join(str(row.get(f, "")) for f in fields)
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 5 == 0


def _file_rows(path: Path):
    from engrain.tasks.loaders import jsonl_rows

    if not path.is_file():
        raise EngrainError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [(f"{path.name}:{n}", row) for n, row in jsonl_rows(path)]
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EngrainError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise EngrainError(f"{path}: expected a JSON list of objects (one per example)")
        return [(f"{path.name}:[{i}]", row) for i, row in enumerate(data)]
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        return [(f"{path.name}:{n}", row) for n, row in enumerate(reader, 2)]


def _hub_rows(src: dict):
    """Rows of a hub dataset's split; a ClassLabel column's ids become its names (what ``labels`` lists)."""
    try:
        import datasets

        ds = datasets.load_dataset(src["hub"], src["config"], split=src["split"])
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngrainError(f"could not load {src['hub']} ({src['split']}) from the hub or its cache: {msg}") from None
    names = {c: f.names for c, f in ds.features.items() if hasattr(f, "names")}
    return [(f"{src['hub']}:{src['split']}:{n}", {k: (names[k][v] if k in names and isinstance(v, int) and v >= 0 else v)
                                                  for k, v in row.items()}) for n, row in enumerate(ds)]
