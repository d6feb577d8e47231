"""Few-shot fine-tuning on Accelerate: `accelerate launch` runs this same code on several processes.

fp32 master weights for the trainable parameters, bf16 autocast where the hardware has it; AdamW,
linear warmup then linear decay (or constant), clipping, accumulation; batches padded to their own
longest member. In-domain and out-of-domain accuracy every epoch (on a seeded stratified sample)
and on the full sets at the end; the whole curve goes into the run record.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from engrain.config import TrainConfig
from engrain.data import Prompter, example_key, sample_few_shot, stratified_sample
from engrain.errors import EngrainError
from engrain.evaluate import check_fits, encode_context, eval_sets, pad, padding_side, score_sets
from engrain.measure import FlopModel, Meter, causal_pairs
from engrain.methods import build_method
from engrain.methods.distill import teacher_outputs
from engrain.params import ParamSpec, apply_params, trainable_summary
from engrain.tasks import get_task, load_split


def collate(items: list[tuple[list[int], int, int]], pad_id: int, side: str = "left") -> dict[str, torch.Tensor]:
    """(ids, label, index) items -> a batch padded on ``side`` (the model's evaluate.padding_side)."""
    ids, mask = pad([x for x, _, _ in items], pad_id, side)
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([y for _, y, _ in items]), "index": torch.tensor([i for _, _, i in items])}


def transfer_set(cfg: TrainConfig, spec, shots: list, exclude: set) -> list:
    """Distillation inputs: the k demonstrations, or a seeded sample of the rest of the train split
    (never the demonstrations, never evaluation data). Their labels only matter when alpha > 0."""
    if cfg.transfer == "shots":
        return list(shots)
    used = exclude | {example_key(spec, ex) for ex in shots}
    pool = [ex for ex in load_split(spec, "train", cfg.data_dir) if example_key(spec, ex) not in used]
    if not pool:
        raise EngrainError(f"the transfer set is empty: no {spec.name} train examples beyond the demonstrations; use --transfer shots")
    return random.Random(cfg.seed + 1).sample(pool, min(cfg.transfer_size, len(pool)))


def build_optimizer(params, cfg: TrainConfig, total_steps: int):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)
    if cfg.schedule == "linear":
        return opt, get_linear_schedule_with_warmup(opt, warmup, total_steps)
    return opt, get_constant_schedule_with_warmup(opt, warmup)


def train(cfg: TrainConfig) -> dict:
    """Fine-tune on k examples, evaluate per epoch and at the end, save the adapter and the record."""
    return train_model(cfg)[0]


def train_model(cfg: TrainConfig):
    """As :func:`train`, also returning the trained model and classification head (or None)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from engrain.models import inference_copy, load_model, resolve_device, resolve_dtype
    from engrain.results import base_record, write_record

    cfg.validate()
    spec = get_task(cfg.task)
    fmt = spec.prompt_format(cfg.format, cfg.template)
    sets = eval_sets(spec, cfg)
    exclude = {example_key(s, ex) for s, exs, _ in sets for ex in exs}
    shots = sample_few_shot(spec, load_split(spec, "train", cfg.data_dir), cfg.shots, cfg.seed, cfg.balanced, exclude)

    compute = resolve_dtype(cfg.precision, resolve_device(cfg.device))
    acc = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.device == "cpu",
    )
    set_seed(cfg.seed)
    lm = load_model(cfg.model, "fp32", str(acc.device))  # fp32 master weights; bf16 compute via autocast
    lm.dtype = compute  # what the matmuls run in (autocast), for MFU
    # bf16 compute is plain torch autocast rather than Accelerate's mixed_precision, whose process-wide
    # state cannot change between two runs in one process (a sweep mixing precisions, the Python API).
    autocast = lambda: torch.autocast(acc.device.type, dtype=compute, enabled=compute != torch.float32)  # noqa: E731
    prompter = Prompter(spec, fmt, lm.tokenizer)
    verb = prompter.verbalizer_ids()
    ctx = prompter.context_ids(shots)  # the k examples as ICL demonstrations (teacher context, prefix init)
    # A prefix student starts as the ICL prompt: its KV prefix holds the context (BOS included), or the
    # context's first --prefix-tokens tokens, so its queries are the ICL queries (with the separator).
    as_icl = cfg.params == "prefix"
    if cfg.prefix_tokens > len(ctx):
        raise EngrainError(f"--prefix-tokens {cfg.prefix_tokens} is more than the {len(ctx)} tokens of the {len(shots)} demonstrations")
    prefix, prefix_tokens = ([], cfg.prefix_tokens or len(ctx)) if as_icl else (prompter.context_ids([]), 0)
    queries = {s.name: prompter.query_ids(exs, with_context=as_icl) for s, exs, _ in sets}
    inputs = transfer_set(cfg, spec, shots, exclude) if cfg.method == "distill" else shots
    train_ids = [prefix + q for q in prompter.query_ids(inputs, with_context=as_icl)]
    teacher_queries = prompter.query_ids(inputs, with_context=True) if cfg.method == "distill" else []
    check_fits(ctx, {"train": train_ids, "teacher": teacher_queries, **queries}, lm.max_length)

    record_extra: dict = {}
    cache = None
    if cfg.method == "distill" or as_icl:
        with Meter(lm.device) as m_teacher, autocast():
            cache = encode_context(lm.model, ctx)
            teacher = None
            if cfg.method == "distill":  # computed once, before any adapter exists: never a second model copy
                topk = cfg.topk if cfg.distill_loss == "topk" else 0
                teacher = teacher_outputs(lm.model, ctx, teacher_queries, verb, cfg.batch_size, lm.tokenizer.pad_token_id, cache, topk)
        if cfg.method == "distill":
            record_extra["teacher"] = {"seconds": m_teacher.seconds, "peak_memory_mb": m_teacher.peak_mb, "context_tokens": len(ctx),
                                       "transfer_examples": len(inputs), "transfer_tokens": sum(map(len, teacher_queries))}

    targets = tuple(t.strip() for t in cfg.target_modules.split(",")) if cfg.target_modules else None
    model = apply_params(lm.model, ParamSpec(cfg.params, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets, cfg.prefix_tokens), cache, len(ctx))
    lm.model = model  # evaluation runs the adapted model (a prefix lives in the peft wrapper)
    method = build_method(cfg.method, verb, model.config.get_text_config().hidden_size, len(spec.labels),
                          full_vocab_loss=cfg.full_vocab_loss, teacher=teacher if cfg.method == "distill" else None,
                          distill_loss=cfg.distill_loss, kl=cfg.kl, temperature=cfg.temperature, alpha=cfg.alpha)
    head = method.head
    trainable = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    summary = trainable_summary(model, head)

    g = torch.Generator().manual_seed(cfg.seed)
    pad_id, side = lm.tokenizer.pad_token_id, padding_side(model)
    items = [(ids, ex["label"], i) for i, (ids, ex) in enumerate(zip(train_ids, inputs))]
    loader = torch.utils.data.DataLoader(items, batch_size=cfg.train_batch_size, shuffle=True, generator=g,
                                         collate_fn=lambda b: collate(b, pad_id, side))
    steps_per_epoch = -(-len(loader) // cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    opt, sched = build_optimizer(trainable, cfg, total_steps)
    if head is not None:
        model, head, opt, loader, sched = acc.prepare(model, head, opt, loader, sched)
        method.head = head
    else:
        model, opt, loader, sched = acc.prepare(model, opt, loader, sched)

    sample_sets = [(s, stratified_sample(s, exs, cfg.eval_sample, cfg.seed), m) for s, exs, m in sets]
    record = base_record("train", cfg.method, cfg, lm)
    record["trainable_parameters"] = summary
    record.update(record_extra)
    record["train_examples"] = [{"line": ex["line"], "label": spec.labels[ex["label"]]} for ex in shots]
    curve, losses, tokens_seen, step = [], [], 0, 0
    fm = FlopModel.of(lm.model)

    def evaluate_now(which, full: bool) -> dict:
        model.eval()
        qs = {s.name: prompter.query_ids(exs, with_context=as_icl) for s, exs, _ in which}
        m, meas = score_sets(lm, spec, which, prefix, qs, verb, cfg, head=acc.unwrap_model(head) if head else None,
                             progress=cfg.progress and full, prefix_tokens=prefix_tokens,
                             model=inference_copy(acc.unwrap_model(model), compute))
        model.train()
        return {"metrics": m, "measure": meas}

    def point(epoch: int) -> dict:
        """A point of the curve: mean training loss since the previous point, then an evaluation."""
        mean_loss = sum(losses) / len(losses)
        losses.clear()
        return {"epoch": epoch, "step": step, "loss": mean_loss, **evaluate_now(sample_sets, False)}

    bar = _bar(cfg.progress and acc.is_main_process, total_steps)
    model.train()
    t0 = time.perf_counter()
    with Meter(lm.device) as m_train:
        for epoch in range(1, cfg.epochs + 1):
            for batch in loader:
                with acc.accumulate(model):
                    with autocast():
                        loss = method.loss(model, batch)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        if cfg.max_grad_norm:
                            acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    opt.step()
                    sched.step()
                    opt.zero_grad()
                tokens_seen += int(batch["attention_mask"].sum()) * acc.num_processes
                losses.append(loss.item())
                if acc.sync_gradients:
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch, tok_s=f"{tokens_seen / (time.perf_counter() - t0):.0f}")
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        curve.append(point(epoch))
            if not cfg.eval_every:
                curve.append(point(epoch))
    bar.close()
    eval_seconds = sum(sum(v["seconds"] for k, v in c["measure"].items() if isinstance(v, dict)) for c in curve)
    final = evaluate_now(sets, True)

    train_seconds = m_train.seconds - eval_seconds
    # training FLOPs ~ 3x forward (forward + backward) over the tokens seen
    fl = 3 * fm.forward(tokens_seen, sum(causal_pairs(prefix_tokens, len(x)) for x in train_ids) * cfg.epochs, 0)
    record["curve"] = curve
    record["metrics"] = final["metrics"]
    record["measure"] = {
        **final["measure"],
        "train": {
            "seconds": train_seconds,
            "steps": step,
            "tokens": tokens_seen,
            "tokens_per_s": tokens_seen / train_seconds,
            "peak_memory_mb": m_train.peak_mb,
            "mfu": fl / (final["measure"]["matmul_peak_tflops"] * 1e12 * train_seconds),
            "per_epoch_eval_seconds": eval_seconds,
        },
    }
    if acc.is_main_process and cfg.out:
        out = Path(cfg.out)
        if cfg.save:
            adapter = save_adapter(acc.unwrap_model(model), acc.unwrap_model(head) if head else None, cfg, lm, out / record["name"], prefix_tokens)
            record["adapter"] = {"path": str(adapter), "bytes": sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file())}
        record["path"] = str(write_record(record, out))
    acc.wait_for_everyone()
    return record, acc.unwrap_model(model), (acc.unwrap_model(head) if head else None)


def save_adapter(model, head, cfg: TrainConfig, lm, target: Path, prefix_tokens: int = 0) -> Path:
    """Write what was trained to ``target`` atomically (temp folder + rename).

    lora/ia3: a peft adapter folder (``PeftModel.from_pretrained`` loads it); bitfit: the biases as
    safetensors; full: the whole model + tokenizer; head: ``head.safetensors``. ``engrain.json``
    says how to rebuild the model for ``engrain eval --adapter``.
    """
    from safetensors.torch import save_file

    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg.params in ("lora", "ia3", "prefix"):
        model.save_pretrained(tmp)
    elif cfg.params == "bitfit":
        biases = {n: p.detach().float().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(biases, str(tmp / "bitfit.safetensors"))
    else:
        model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
    if head is not None:
        save_file({"weight": head.weight.detach().float().contiguous()}, str(tmp / "head.safetensors"))
    meta = {"engrain_adapter": 1, "method": cfg.method, "params": cfg.params, "base_model": cfg.model,
            "task": cfg.task, "format": cfg.format, "template": cfg.template,
            # a prefix adapter holds the demonstrations' KV (BOS included): queries follow it as in ICL
            "prefix_tokens": prefix_tokens}
    (tmp / "engrain.json").write_text(json.dumps(meta, indent=2))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)

