"""Run records: one self-describing JSON file per run, written atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from pathlib import Path

from engrain.config import trains_on_documents
from engrain.errors import EngrainError


def model_slug(name: str) -> str:
    base = Path(name).name if ("/" in name or name.endswith(".gguf")) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base.removesuffix(".gguf"))


# The options a distillation comparison varies: (field, default, tag in the name) when not default.
DISTILL_OPTIONS = [("transfer", "pool", "t-"), ("distill_loss", "verbalizer", ""), ("kl", "forward", ""), ("temperature", 1.0, "T"), ("alpha", 0.0, "a")]
# ... and distillation of documents (its transfer set is generated).
DOC_DISTILL_OPTIONS = [("doc_transfer", "texts", ""), ("samples_per_chunk", 4, "n"), ("gen_tokens", 96, "g"), ("gen_temperature", 0.7, "gt"), ("topk", 32, "top")]


def variant(kind: str, method: str, config: dict) -> str:
    """What a run compares, e.g. ``icl``, ``pbft-lora``, ``distill-lora-a0.5``: names and report rows."""
    if kind != "train":
        return method
    name = f"{method}-{config['params']}"
    if config.get("prefix_tokens"):  # a compressed KV prefix (missing from older records: the whole context)
        name += f"-p{config['prefix_tokens']}"
    if method == "cft" and (config.get("cft_prompts_file") or config.get("cft_prompts", "contextual") != "contextual"):
        name += "-own-prompts" if config.get("cft_prompts_file") else f"-{config['cft_prompts']}"  # the paper's ablations
    if method == "distill":  # an option missing from an older record counts as its default
        options = DOC_DISTILL_OPTIONS if trains_on_documents(method, config["task"], config.get("train_data")) else DISTILL_OPTIONS
        name += "".join(f"-{tag}{config.get(f, default)}" for f, default, tag in options if config.get(f, default) != default)
    if config.get("augment"):
        from engrain.documents.augment import parse, slug

        name += f"-aug-{slug(parse(config['augment']))}" + (f"-by-{model_slug(config['generator'])}" if config.get("generator") else "")
    if config.get("qa_train"):
        name += "-qa" if config["qa_train"] == "train" else f"-qa-{model_slug(Path(config['qa_train']).stem)}"
        name += (f"-first{config['qa_first']}" if config.get("qa_first") else "") + ("" if config.get("qa_mix", True) else "-unmixed")
    return name + ("-shuffled" if config.get("shuffled_facts") else "")  # the shuffled-facts control: the method's name, then this


def eval_method(cfg) -> str:
    """What an evaluation without an adapter measures: ICL, or, on a document task, the closed or open book."""
    from engrain.tasks.documents import is_document_task

    if is_document_task(cfg.task):
        return "open-book" if cfg.open_book else "closed-book"
    return "icl"


def run_name(kind: str, method: str, cfg) -> str:
    """A readable, deterministic name: the same config gives the same name (sweeps skip done runs)."""
    from engrain.tasks.documents import is_document_task

    on_documents = is_document_task(cfg.task) or (kind == "train" and trains_on_documents(method, cfg.task, cfg.train_data))
    shots = "" if on_documents else f"-k{cfg.shots}"  # documents are not k examples
    task = model_slug(Path(cfg.task).stem) if cfg.task.lower().endswith((".yaml", ".yml")) else cfg.task  # your own task's file
    name = f"{task}-{variant(kind, method, dataclasses.asdict(cfg))}-{model_slug(cfg.model)}{shots}-s{cfg.seed}"
    if getattr(cfg, "train_data", None) and cfg.train_data != cfg.task:
        name += f"-from-{model_slug(cfg.train_data.rstrip('/'))}"
    chat = getattr(cfg, "chat_template", "none")
    if chat != "none":  # prompts through a chat template: other prompts, other numbers
        name += "-chat" if chat == "auto" else f"-chat-{model_slug(Path(chat).stem)}"
    if getattr(cfg, "adapter", None):
        name += f"-{Path(cfg.adapter).name}"
    if getattr(cfg, "limit", None):
        name += f"-n{cfg.limit}"
    if getattr(cfg, "sample", None):
        name += f"-sample{cfg.sample}" + (f"-ss{cfg.sample_seed}" if getattr(cfg, "sample_seed", 0) else "")
    return f"{kind}-{name}"


def device_name(device) -> str:
    """The GPU's name on CUDA, the CPU's model name on CPU."""
    import torch

    from engrain.measure import cpu_name

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def base_record(kind: str, method: str, cfg, lm) -> dict:
    from engrain.measure import git_revision, host, versions

    n_params = sum(p.numel() for p in lm.model.parameters())
    return {
        "name": run_name(kind, method, cfg),
        "kind": kind,
        "method": method,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(cfg),
        "model": {
            "name": lm.name,
            "source": lm.source,
            "dtype": str(lm.dtype).replace("torch.", ""),
            "device": str(lm.device),
            "device_name": device_name(lm.device),
            "attention": getattr(lm.model.config, "_attn_implementation", None),  # the attention kernel (sdpa, eager, ...)
            "parameters": n_params,
            "max_length": lm.max_length,
            "load_seconds": lm.load_seconds,
        },
        "versions": versions(),
        "git_revision": git_revision(),
        "host": host(),
    }


def write_record(record: dict, out: str | Path) -> Path:
    """Write ``record`` to ``out/<name>.json`` via a temporary file and rename: never half a record."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngrainError(f"cannot create output folder {folder}: {e.strerror}") from None
    path = folder / f"{record['name']}.json"
    tmp = folder / f".{record['name']}.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def read_record(path: str | Path) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise EngrainError(f"run record not found: {p}") from None
    except json.JSONDecodeError as e:
        raise EngrainError(f"{p}:{e.lineno}: not a valid run record ({e.msg})") from None


def load_records(folder: str | Path) -> list[dict]:
    """Every run record in ``folder`` (not recursive); unreadable files are an error naming the file."""
    p = Path(folder)
    if not p.is_dir():
        raise EngrainError(f"results folder not found: {p}")
    return [read_record(f) for f in sorted(p.glob("*.json"))]


# ---------------------------------------------------------------------------- results as a table

RECORD_KEYS = ("name", "kind", "method", "config", "metrics", "measure")  # what makes a JSON file a run record
FLATTENED = ("metrics", "measure", "teacher", "forgetting", "trainable_parameters", "corpus")  # nested parts kept as columns


def scan_records(folders, warn=None) -> list[dict]:
    """The run records in ``folders`` (each not recursive, files in name order). A file that is not valid
    JSON or not a run record is skipped with a one-line warning naming it (``warn``, default stderr);
    nothing is ever rewritten. A folder that does not exist is an error."""
    import sys

    warn = warn or (lambda line: print(line, file=sys.stderr))
    out = []
    for folder in [folders] if isinstance(folders, (str, Path)) else folders:
        p = Path(folder)
        if not p.is_dir():
            raise EngrainError(f"results folder not found: {p}")
        for f in sorted(p.glob("*.json")):
            try:
                record = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                warn(f"engrain: skipped {f}: not valid JSON ({getattr(e, 'msg', e)})")
                continue
            if not isinstance(record, dict) or not all(k in record for k in RECORD_KEYS):
                warn(f"engrain: skipped {f}: not an engrain run record (no {', '.join(RECORD_KEYS)})")
                continue
            out.append(record)
    return out


def flatten(record: dict) -> dict:
    """One run as one flat row: name, kind, method, variant, every config key under its own name, and the
    nested parts (metrics, measure, teacher, forgetting, ...) with dotted names that mirror the record,
    e.g. ``metrics.hans.by_heuristic.lexical_overlap.all`` or ``measure.train.seconds``."""
    row = {"name": record["name"], "kind": record["kind"], "method": record["method"],
           "variant": variant(record["kind"], record["method"], record["config"]), **record["config"]}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif not isinstance(value, list):
            row[prefix] = value

    for part in FLATTENED:
        if part in record:
            walk(part, record[part])
    return row


def to_frame(folders):
    """Every run record in ``folders`` as a pandas DataFrame: one row per run, one column per config key and
    metric (:func:`flatten`); files that are not run records are skipped with a warning."""
    import pandas as pd

    return pd.DataFrame([flatten(r) for r in scan_records(folders)])


def select(rows: list[dict], filters: list[str]) -> list[dict]:
    """The rows whose columns equal every ``key=value`` of ``filters`` (compared as text: seed=0, lr=0.001)."""
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or not key:
            raise EngrainError(f"--filter takes key=value, got {f!r}")
        if rows and not any(key in r for r in rows):
            raise EngrainError(f"--filter {f}: no run has a column {key!r} (e.g. method, task, seed, params, lr)")
        rows = [r for r in rows if key in r and str(r[key]) == value]
    return rows


def headline(row: dict) -> dict:
    """What `engrain results` shows per run by default: who it is and its main numbers."""
    from engrain.tasks.documents import is_document_task

    task = row.get("task")
    out = {k: row.get(k) for k in ("name", "variant", "model", "task", "shots", "seed")}
    if task and is_document_task(task):
        out["shots"] = None  # documents, not k examples
    out["accuracy"] = row.get(f"metrics.{task}.accuracy")
    out["train s"] = row.get("measure.train.seconds")
    out["peak MB"] = row.get("measure.train.peak_memory_mb")
    return out
