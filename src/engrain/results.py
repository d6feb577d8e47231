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
DOC_DISTILL_OPTIONS = [("samples_per_chunk", 4, "n"), ("gen_tokens", 96, "g"), ("gen_temperature", 0.7, "gt"), ("topk", 32, "top")]


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
    return name


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
    name = f"{cfg.task}-{variant(kind, method, dataclasses.asdict(cfg))}-{model_slug(cfg.model)}{shots}-s{cfg.seed}"
    if getattr(cfg, "train_data", None) and cfg.train_data != cfg.task:
        name += f"-from-{model_slug(cfg.train_data.rstrip('/'))}"
    if getattr(cfg, "adapter", None):
        name += f"-{Path(cfg.adapter).name}"
    if getattr(cfg, "limit", None):
        name += f"-n{cfg.limit}"
    if getattr(cfg, "sample", None):
        name += f"-sample{cfg.sample}" + (f"-ss{cfg.sample_seed}" if getattr(cfg, "sample_seed", 0) else "")
    return f"{kind}-{name}"


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
