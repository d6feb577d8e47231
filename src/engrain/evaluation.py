"""Scoring and in-context learning evaluation.

The prediction for a query is the argmax over the verbaliser tokens' logits at the answer position
(the last prompt token). The demonstrations are the same for every query, so their KV cache is
computed once and each query batch runs only its own tokens against it; only each query's last
position gets logits (``logits_to_keep``), and batches are padded to their own longest member.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from engrain.config import EvalConfig
from engrain.data import example_key, make_prompter, sample_few_shot, stratified_sample
from engrain.errors import EngrainError
from engrain.forward import encode_context, last_outputs
from engrain.measure import FlopModel, Meter, causal_pairs, matmul_peak
from engrain.shard import sharded, world
from engrain.tasks import TASKS, Example, TaskSpec, get_task, load_split

# ---------------------------------------------------------------------------- scoring


@torch.no_grad()
def score(
    model: torch.nn.Module,
    context_ids: Sequence[int],
    queries: Sequence[Sequence[int]],
    verbalizer_ids: Sequence[int],
    batch_size: int = 16,
    pad_id: int = 0,
    cache=None,
    progress=None,
    head: torch.nn.Module | None = None,
    pack: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix-cached scoring: class logits (N, C) in fp32 and the full-vocabulary argmax (N,).

    The class logits are the verbaliser tokens' logits at the answer position, or, with a
    classification ``head``, the head applied to the last token's final hidden state. ``pack``: see
    :func:`~engrain.forward.last_outputs`.
    """
    verb = torch.tensor(list(verbalizer_ids), device=model.device)
    out_v = torch.empty(len(queries), head.out_features if head is not None else len(verbalizer_ids))
    out_top = torch.empty(len(queries), dtype=torch.long)
    batches = last_outputs(model, context_ids, queries, batch_size, pad_id, cache, head is not None, pack)
    for idx, logits, h in batches:
        logits = logits.float()  # (B, V)
        cls = logits[:, verb] if head is None else head(h.float())  # (B, C)
        out_v[idx] = cls.float().cpu()
        out_top[idx] = logits.argmax(-1).cpu()
        if progress is not None:
            progress.update(len(idx))
    return out_v, out_top


def score_uncached(
    model: torch.nn.Module,
    context_ids: Sequence[int],
    queries: Sequence[Sequence[int]],
    verbalizer_ids: Sequence[int],
    batch_size: int = 16,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scorer: context + query concatenated for every query (what prefix caching avoids)."""
    return score(model, [], [list(context_ids) + list(q) for q in queries], verbalizer_ids, batch_size, pad_id)


# ---------------------------------------------------------------------------- metrics


def mcc(confusion: torch.Tensor) -> float:
    """Matthews correlation for C classes (Gorodkin 2004) from a (C, C) gold x predicted count matrix."""
    c = confusion.double()
    t, p, n, correct = c.sum(1), c.sum(0), c.sum(), c.trace()
    cov_tp = correct * n - (t * p).sum()
    denom = math.sqrt(float((n * n - (p * p).sum()) * (n * n - (t * t).sum())))
    return float(cov_tp / denom) if denom > 0 else 0.0


def metrics(
    spec: TaskSpec, examples: Sequence[Example], pred: torch.Tensor, non_verbalizer: torch.Tensor
) -> dict:
    """Accuracy, per-label accuracy, macro-F1, MCC, the rate of non-verbaliser argmaxes, and the
    task's breakdowns (HANS: accuracy per heuristic and gold label)."""
    gold = torch.tensor([ex["label"] for ex in examples])
    n_cls = len(spec.labels)
    conf = torch.zeros(n_cls, n_cls, dtype=torch.long)
    conf.index_put_((gold, pred), torch.ones_like(gold), accumulate=True)
    correct = pred == gold
    f1s = []
    for c in range(n_cls):
        tp, fp, fn = conf[c, c].item(), conf[:, c].sum().item() - conf[c, c].item(), conf[c].sum().item() - conf[c, c].item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {
        "n": len(examples),
        "accuracy": correct.float().mean().item(),
        "per_label_accuracy": {
            spec.labels[c]: correct[gold == c].float().mean().item() for c in range(n_cls) if (gold == c).any()
        },
        "macro_f1": sum(f1s) / n_cls,
        "mcc": mcc(conf),
        "predicted_share": {spec.labels[c]: (pred == c).float().mean().item() for c in range(n_cls)},
        "non_verbalizer_rate": non_verbalizer.float().mean().item(),
    }
    for col in spec.breakdown:
        table: dict[str, dict[str, float]] = {}
        for value in sorted({ex[col] for ex in examples}):
            sel = torch.tensor([ex[col] == value for ex in examples])
            table[value] = {
                spec.labels[c]: correct[sel & (gold == c)].float().mean().item()
                for c in range(n_cls)
                if (sel & (gold == c)).any()
            }
            table[value]["all"] = correct[sel].float().mean().item()
        out[f"by_{col}"] = table
    return out


# ---------------------------------------------------------------------------- evaluation sets


def eval_sets(spec: TaskSpec, cfg) -> list[tuple[TaskSpec, list[Example], dict[str, str] | None]]:
    """(spec, examples, label map) for the task's validation split and, with cfg.ood, its partners."""
    sets = [(spec, load_split(spec, "validation", cfg.data_dir), None)]
    if cfg.ood:
        for partner in spec.ood:
            pspec = get_task(partner.task)
            sets.append((pspec, load_split(pspec, "validation", cfg.data_dir), partner.label_map))
    if cfg.limit:
        sets = [(s, ex[: cfg.limit], m) for s, ex, m in sets]
    if cfg.sample:
        # its own fixed seed: every seed and method of a comparison is scored on the same examples
        sets = [(s, stratified_sample(s, ex, cfg.sample, cfg.sample_seed), m) for s, ex, m in sets]
    return sets


def map_predictions(pred: torch.Tensor, spec: TaskSpec, target: TaskSpec, label_map: dict[str, str] | None) -> torch.Tensor:
    """Predicted class ids of ``spec`` -> class ids of the OOD ``target`` (by label name)."""
    if label_map is None and spec.labels == target.labels:
        return pred
    names = [label_map[lab] if label_map else lab for lab in spec.labels]
    lut = torch.tensor([target.labels.index(n) for n in names])
    return lut[pred]


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate ICL with k demonstrations, or a model saved by ``engrain train`` (``cfg.adapter``),
    on the task and its out-of-domain partners; return the record (also written under ``cfg.out``)."""
    from engrain.params import load_for_eval, read_adapter_meta
    from engrain.results import base_record, write_record
    from engrain.tasks.documents import is_document_task

    cfg.validate()
    if is_document_task(cfg.task):
        from engrain.documents.evaluate import evaluate_documents

        return evaluate_documents(cfg)
    spec = get_task(cfg.task)
    meta = read_adapter_meta(cfg.adapter) if cfg.adapter else {}
    if meta:  # the record names the model actually evaluated
        check_adapter_task(cfg.adapter, meta, spec)
        cfg = dataclasses.replace(cfg, model=meta["base_model"], chat_template=meta.get("chat_template", "none"))  # as it trained
    fmt = spec.prompt_format(cfg.format or meta.get("format"), cfg.template or meta.get("template"))
    # Data first (cheap, and bad files fail before the model loads).
    sets = eval_sets(spec, cfg)
    exclude = {example_key(s, ex) for s, exs, _ in sets for ex in exs}
    demos = sample_few_shot(spec, load_split(spec, "train", cfg.data_dir), cfg.shots, cfg.seed, cfg.balanced, exclude) if cfg.shots else []

    lm, head, meta = load_for_eval(cfg)
    prompter = make_prompter(spec, fmt, lm.tokenizer, cfg.chat_template)
    verb = prompter.verbalizer_ids()
    prefix_tokens = meta.get("prefix_tokens", 0)
    after_context = bool(demos) or prefix_tokens > 0
    ctx = [] if prefix_tokens else prompter.context_ids(demos)  # a prefix adapter already holds the context and BOS
    queries = {s.name: prompter.query_ids(exs, with_context=after_context) for s, exs, _ in sets}
    check_fits(prefix_tokens + len(ctx), [q for qs in queries.values() for q in qs], lm.max_length)

    with Meter(lm.device) as m_ctx:
        cache = encode_context(lm.model, ctx)
    record = base_record("eval", meta.get("method", "icl"), cfg, lm)
    record["demonstrations"] = [{"line": d["line"], "label": spec.labels[d["label"]]} for d in demos]
    record["context_tokens"] = len(ctx)
    metrics_, measure = score_sets(lm, spec, sets, ctx, queries, verb, cfg, cache=cache, head=head, prefix_tokens=prefix_tokens)
    record["metrics"] = metrics_
    record["measure"] = {"context": {"seconds": m_ctx.seconds, "tokens": len(ctx)}, **measure}
    if cfg.out:
        record["path"] = str(write_record(record, cfg.out))
    return record


def score_sets(lm, spec: TaskSpec, sets, ctx, queries, verb, cfg, cache=None, head=None, progress=None,
               prefix_tokens: int = 0, model=None) -> tuple[dict, dict]:
    """Score every evaluation set against one context with ``model`` (default ``lm.model``); metrics and cost per set."""
    model = model if model is not None else lm.model
    flops, peak = FlopModel.of(model), matmul_peak(lm.device, lm.dtype)
    metrics_out, measure = {}, {"matmul_peak_tflops": peak / 1e12}
    show = cfg.progress if progress is None else progress
    processes = world()[1]
    for tspec, exs, label_map in sets:
        q = queries[tspec.name]
        with _progress(show, len(q), f"{cfg.task}->{tspec.name}" if tspec is not spec else tspec.name) as bar:
            with Meter(lm.device) as m:  # under `accelerate launch` each process scores its shard (engrain.shard)
                rows = sharded(lambda part: zip(*score(model, ctx, part, verb, cfg.batch_size, lm.tokenizer.pad_token_id,
                                                       cache=cache, progress=bar, head=head)), q)
                cls, top = torch.stack([c for c, _ in rows]), torch.stack([t for _, t in rows])
        pred = map_predictions(cls.argmax(-1), spec, tspec, label_map)
        metrics_out[tspec.name] = metrics(tspec, exs, pred, ~torch.isin(top, torch.tensor(verb)))
        n_tok = sum(len(x) for x in q)
        fl = flops.forward(n_tok, sum(causal_pairs(prefix_tokens + len(ctx), len(x)) for x in q), len(q))
        measure[tspec.name] = {
            "seconds": m.seconds,
            "examples_per_s": len(q) / m.seconds,
            "query_tokens": n_tok,
            "tokens_per_s": n_tok / m.seconds,
            **m.memory(),
            "flops": fl,
            "mfu": fl / (peak * m.seconds * processes),
            **({"processes": processes} if processes > 1 else {}),
        }
    return metrics_out, measure


def check_fits(before: int, seqs: Sequence[Sequence[int]], max_length: int | None) -> None:
    """Refuse, before any compute, sequences that with ``before`` positions ahead of them (a cached
    context, a KV prefix) do not fit the model's window."""
    longest = max((len(q) for q in seqs), default=0)
    if max_length and before + longest > max_length:
        raise EngrainError(
            f"prompt too long for the model: {before} context tokens + {longest} for the longest query = "
            f"{before + longest} > the model's window of {max_length}; lower --shots"
        )


def check_adapter_task(path: str, meta: dict, spec: TaskSpec) -> None:
    """An adapter scores a task only if it was trained for the same labels (an MNLI model on RTE is fine)."""
    trained = get_task(meta["task"]) if meta.get("task") in TASKS else None
    if trained is not None and trained.labels != spec.labels:
        raise EngrainError(
            f"the adapter {path} was trained on task {trained.name} (labels {', '.join(trained.labels)}); "
            f"task {spec.name} has labels {', '.join(spec.labels)}: evaluate it on a task with the same labels"
        )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False, dynamic_ncols=True)

