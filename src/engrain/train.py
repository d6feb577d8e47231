"""Fine-tuning on Accelerate: `accelerate launch` runs this same code on several processes.

A run is a short sequence of phases (litgpt/torchtune style): prepare the data, model and prompts;
let the method build its training items (a distillation teacher runs here, before any adapter);
attach the trainable parameters; make the optimiser and loader; fit, with evaluation points that
are timed apart from training; evaluate the full sets; write the record and what was trained.

fp32 master weights for the trainable parameters, bf16 autocast where the hardware has it (frozen
decoder weights then held in bf16: params.hold_frozen_in); AdamW,
linear warmup then linear decay (or constant), clipping, accumulation; batches padded to their own
longest member.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engrain import models
from engrain.config import TrainConfig
from engrain.data import example_key, make_prompter, sample_few_shot, stratified_sample
from engrain.errors import EngrainError
from engrain.evaluation import eval_sets, score_sets
from engrain.forward import encode_context, padding_side
from engrain.measure import FlopModel, Meter, causal_pairs, training_flops
from engrain.methods import Method, build_method, collate
from engrain.files import swap_in
from engrain.run import Run
from engrain.documents.evaluate import base_references, with_baselines
from engrain.documents.qa import score_questions
from engrain.tasks.documents import is_document_task, load_document_task, qa_train_questions
from engrain.chat import needs_template
from engrain.documents.corpus import Conversation
from engrain.params import ParamSpec, apply_params, hold_frozen_in, trainable_summary
from engrain.tasks import get_task, load_split


def train(cfg: TrainConfig) -> dict:
    """Fine-tune, evaluate per epoch and at the end, save what was trained and the record."""
    return train_model(cfg)[0]


def train_model(cfg: TrainConfig):
    """As :func:`train`, also returning the trained model and classification head (or None). After bf16
    training the model's frozen decoder weights are bf16: run it under autocast, or through
    :func:`engrain.models.inference_copy` as evaluation does."""
    cfg.validate()
    run = prepare(cfg)
    start_tracking(run)
    before = forgetting_before(run) if cfg.forgetting else None
    refs = base_references(run, run.questions) if run.qa and run.acc.is_main_process else None  # cached; before any adapter
    method = build_method(cfg.method, run)
    run.check_fits(run.virtual_tokens, [it["input_ids"] for it in method.items])
    loop = make_loop(run, method, attach_params(run))
    curve, measure = fit(run, loop)
    final = evaluation_point(run, loop, run.questions if run.qa else run.sets, full=True)
    record = make_record(run, method, loop, curve, final, measure)
    if run.qa:
        with_baselines(record, run.qa, run.questions, refs, trained=True)
    if before is not None:
        record["forgetting"] = {"before": before, "after": forgetting_point(run, run.acc.unwrap_model(loop.model))}
    track(run, {f"final/{split}/accuracy": m["accuracy"] for split, m in record["metrics"].items()}, loop.step)
    if cfg.log_with:
        run.acc.end_training()
    if run.acc.is_main_process and cfg.out:
        save_outputs(run, loop, record)
    run.acc.wait_for_everyone()
    if run.acc.is_main_process and cfg.save_every and not cfg.keep_checkpoints:
        from engrain import checkpoint

        checkpoint.remove(cfg)
    return record, run.acc.unwrap_model(loop.model), (run.acc.unwrap_model(loop.head) if loop.head else None)


# ---------------------------------------------------------------------------- phases


def prepare(cfg: TrainConfig) -> Run:
    """Data first (cheap, and bad files fail before the model loads), then the model and the prompts;
    refuses, before any compute, what cannot fit the model's window."""
    from accelerate.utils import set_seed

    qa = load_document_task(cfg.task, cfg.corpus, cfg.questions, cfg.data_dir, cfg.text_field) if is_document_task(cfg.task) else None
    spec = None if qa else get_task(cfg.task)
    sets = [] if qa else eval_sets(spec, cfg)
    exclude = {example_key(s, ex) for s, exs, _ in sets for ex in exs}
    if cfg.on_documents:  # documents, not labelled examples: the task's own, unless --train-data names others
        train_spec, shots = spec, []
        corpus = load_train_corpus(cfg.train_data, cfg.text_field) if cfg.train_data else qa.control if cfg.shuffled_facts else qa.corpus
    else:
        train_spec, corpus = get_task(cfg.train_data or cfg.task), None
        shots = sample_few_shot(train_spec, load_split(train_spec, "train", cfg.data_dir), cfg.shots, cfg.seed, cfg.balanced, exclude)
    qa_train = qa_train_questions(cfg.qa_train, qa, cfg.task) if cfg.qa_train else None
    if cfg.chat_template == "none" and (chat := next((q for q in qa_train or [] if isinstance(q, Conversation)), None)):
        raise EngrainError(needs_template(chat.id))

    device = models.resolve_device(cfg.device)
    compute = models.resolve_dtype(cfg.precision, device)
    acc = make_accelerator(cfg, device)
    set_seed(cfg.seed)
    # fp32 master weights, bf16 compute via autocast; --load-in-4bit/8bit: the decoder's linear layers quantised (QLoRA)
    lm = models.load_model(cfg.model, "fp32", str(acc.device), quantize=cfg.quantize, compute=compute)
    lm.dtype = compute  # what the matmuls run in, for MFU and the inference copy
    cfg.batch_size = cfg.batch_size or models.default_batch_size(lm.device)  # scoring batches; recorded as chosen
    prompter = lambda s: make_prompter(s, s.prompt_format(cfg.format, cfg.template), lm.tokenizer, cfg.chat_template) if s else None  # noqa: E731
    run = Run(cfg, spec, train_spec, sets, exclude, shots, acc, lm, compute, prompter(train_spec), prompter(spec), corpus, qa)
    if run.as_icl and cfg.prefix_tokens > len(run.context_ids):
        what = "the corpus" if corpus is not None else f"the {len(shots)} demonstrations"
        raise EngrainError(f"--prefix-tokens {cfg.prefix_tokens} is more than the {len(run.context_ids)} tokens of {what}")
    if run.as_icl and corpus is not None and lm.max_length and len(run.context_ids) > lm.max_length and not cfg.prefix_tokens:
        raise EngrainError(f"--params prefix starts as the whole corpus in context: {len(run.context_ids)} tokens, more than the "
                           f"model's window of {lm.max_length}; give --prefix-tokens N (its first N tokens)")
    run.check_fits(run.virtual_tokens + len(run.bos), [q for qs in run.eval_queries(sets).values() for q in qs])
    run.qa_train = qa_train
    if cfg.augment:  # before anything is trained: the generator (by default) is the base model
        from engrain.documents.augment import for_training

        run.corpus, run.augment = for_training(cfg, corpus, lm)
    return run


def make_accelerator(cfg: TrainConfig, device: torch.device):
    """A fresh Accelerator on ``device``. Accelerate's state is process-wide: a second run in one process
    (the Python API, the tests) would otherwise keep the first run's device, or refuse another, so it is
    reset, as transformers' TrainingArguments does. In a single process the device is named exactly
    (`--device cuda:1`); under `accelerate launch` each process keeps the launcher's GPU."""
    from unittest import mock

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    with mock.patch.dict(os.environ, {"ACCELERATE_TORCH_DEVICE": str(device)} if single else {}):  # read when the state is made
        return Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=device.type == "cpu", log_with=cfg.log_with,
                           project_dir=str(Path(cfg.out or "runs") / "trackers" / cfg.tracker_project) if cfg.log_with else None)


def start_tracking(run: Run) -> None:
    """With --log-with: one tracker run named as the record, its hyperparameters the config."""
    if not run.cfg.log_with:
        return
    import dataclasses

    from engrain.results import run_name

    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(run.cfg).items()}
    name = run_name("train", run.cfg.method, run.cfg)
    if run.cfg.log_with == "tensorboard":  # one folder per run under OUT/trackers/PROJECT
        run.acc.init_trackers(name, config=hparams)
    else:  # one W&B project / MLflow experiment, the run named as its record (entity, tracking URI: their usual env vars)
        run.acc.init_trackers(run.cfg.tracker_project, config=hparams,
                              init_kwargs={"wandb": {"name": name}, "mlflow": {"run_name": name}})


def track(run: Run, values: dict, step: int) -> None:
    if run.cfg.log_with:
        run.acc.log(values, step=step)


def load_train_corpus(source: str, text_field: str = "text") -> list:
    """A corpus path, or ``facts[:SEED]`` / ``facts-v1[:SEED]``: the documents of the generated benchmark."""
    from engrain.documents import load_corpus

    return load_document_task(source).documents if source.split(":")[0] in ("facts", "facts-v1") else load_corpus(source, text_field)


def attach_params(run: Run) -> torch.nn.Module:
    """Make the chosen parameters trainable; a prefix starts from the context's KV cache. In bf16 the
    frozen decoder weights are then held in bf16 (:func:`engrain.params.hold_frozen_in`)."""
    from accelerate.utils import DistributedType

    cfg = run.cfg
    targets = tuple(t.strip() for t in cfg.target_modules.split(",")) if cfg.target_modules else None
    spec = ParamSpec(cfg.params, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets, cfg.prefix_tokens)
    cache, n_ctx = None, 0
    if run.as_icl:
        n, n_ctx = run.virtual_tokens, len(run.context_ids)
        if n == n_ctx or "context_cache" in run.__dict__:  # the whole context, or its KV is there already
            cache = run.context_cache
        else:  # only the first n positions' KV (causal: the same as in the whole context's), never the whole corpus
            with run.autocast():
                cache = encode_context(run.lm.model, run.context_ids[:n])
    if cfg.quantize:  # peft's QLoRA preparation: everything frozen, the unquantised layers in fp32
        from peft import prepare_model_for_kbit_training

        run.lm.model = prepare_model_for_kbit_training(run.lm.model, use_gradient_checkpointing=False)  # checkpointing: below
    run.lm.model = apply_params(run.lm.model, spec, cache, n_ctx)  # evaluation runs the adapted model
    if cfg.gradient_checkpointing:  # transformers' own; non-reentrant, so frozen inputs need no requires_grad
        base = run.lm.model.get_base_model() if hasattr(run.lm.model, "get_base_model") else run.lm.model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # FSDP flattens each unit's parameters into one tensor of one dtype; DeepSpeed keeps its own copies
    if run.compute != torch.float32 and run.acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        hold_frozen_in(run.lm.model, run.compute)
    return run.lm.model


@dataclass
class Loop:
    """The training loop's state: the (accelerate-prepared) model, head, optimiser, schedule and loader."""

    method: Method
    model: torch.nn.Module
    head: torch.nn.Module | None
    opt: torch.optim.Optimizer
    sched: object
    loader: object
    trainable: list
    total_steps: int
    flops: FlopModel
    summary: dict
    losses: list = field(default_factory=list)  # per batch since the last curve point, read from the device
    pending: list = field(default_factory=list)  # (step, loss on the device, lr) not read yet: read at --log-every steps,
    # checkpoints, curve points and the end
    tokens_seen: int = 0
    step: int = 0
    qa_loader: object | None = None  # --qa-first: the questions alone, trained on before the method's epochs
    generators: list = field(default_factory=list)  # the loaders' shuffling generators (main, then --qa-first's)
    resumed: dict | None = None  # from a checkpoint (--resume): the step and the seconds metered before
    scaler: object | None = None  # fp16: torch's GradScaler (the loss scaled up, steps with inf gradients skipped)

    def read_losses(self, run: Run) -> list[float]:
        """The losses still on the device, read in one transfer and appended to ``losses``; each optimizer step's
        (its micro-batches' mean) is logged to the trackers at that step, as if read when it was taken. Returns them."""
        if not self.pending:
            return []
        new = torch.stack([loss for _, loss, _ in self.pending]).float().tolist()
        steps: dict[int, list] = {}
        for (step, _, lr), loss in zip(self.pending, new):
            steps.setdefault(step, [lr]).append(loss)
        for step, (lr, *losses) in steps.items():
            track(run, {"train/loss": sum(losses) / len(losses), "train/lr": lr}, step)
        self.losses += new
        self.pending.clear()
        return new


def make_loop(run: Run, method: Method, model: torch.nn.Module) -> Loop:
    from transformers import get_scheduler

    cfg, acc, head = run.cfg, run.acc, method.head
    trainable = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    summary = trainable_summary(model, head)
    pad_id, side = run.lm.tokenizer.pad_token_id, padding_side(model)
    generators = []

    def loader_of(items, seed):
        generators.append(torch.Generator().manual_seed(seed))
        return torch.utils.data.DataLoader(items, batch_size=cfg.train_batch_size, shuffle=True, generator=generators[-1],
                                           collate_fn=lambda b: collate(b, pad_id, side, cfg.pack))

    loader = loader_of(method.items, cfg.seed)
    total_steps = -(-len(loader) // cfg.grad_accum) * cfg.epochs
    qa_loader = None
    if cfg.qa_first:  # pre-instruction tuning's first stage: the answered questions alone, a plain next-token loss
        from engrain.methods.base import indexed
        from engrain.methods.cpt import qa_items

        qa_loader = loader_of(indexed(qa_items(run)), cfg.seed + 1)
        total_steps += -(-len(qa_loader) // cfg.grad_accum) * cfg.qa_first
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler("linear" if cfg.schedule == "linear" else "constant_with_warmup", opt,
                          num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)
    flops = FlopModel.of(model)
    if head is not None:
        model, head, opt, loader, sched = acc.prepare(model, head, opt, loader, sched)
        method.head = head
    else:
        model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    if qa_loader is not None:
        qa_loader = acc.prepare(qa_loader)
    scaler = None
    if run.compute == torch.float16:  # fp16's narrow range: scale the loss so small gradients do not flush to zero
        scaler = torch.amp.GradScaler(acc.device.type)
        acc.register_for_checkpointing(scaler)  # its scale and growth tracker resume with the checkpoint
    return Loop(method, model, head, opt, sched, loader, trainable, total_steps, flops, summary, qa_loader=qa_loader,
                generators=generators, scaler=scaler)


def fit(run: Run, loop: Loop) -> tuple[list[dict], Meter]:
    """Train for cfg.epochs (after --qa-first epochs of the questions alone, numbered first and marked
    ``stage: questions`` in the curve); a point of the curve (mean loss, then an evaluation on the per-epoch
    sample) every epoch or every cfg.eval_every steps. The meter is paused during evaluation points,
    so training's seconds and peak memory are training's alone."""
    from engrain.methods.base import token_nll

    from engrain import checkpoint

    cfg, acc = run.cfg, run.acc
    sample = per_epoch_questions(run.questions, cfg) if run.qa else per_epoch_sets(run.sets, cfg)
    curve: list[dict] = []
    stages = [(loop.qa_loader, token_nll, {"stage": "questions"})] * cfg.qa_first + [(loop.loader, loop.method.loss, {})] * cfg.epochs
    state = checkpoint.load(run, loop) if cfg.resume else None
    first, done = (state["epoch"], state["batches"]) if state else (1, 0)
    if state:  # where the checkpoint was: the step, the curve so far, and the shuffling as the epoch began
        loop.step, loop.tokens_seen, loop.losses, curve = state["step"], state["tokens_seen"], state["losses"], state["curve"]
        loop.resumed = {"from_step": state["step"], "seconds_before": state["seconds"], "eval_seconds_before": state["eval_seconds"]}
    bar = _bar(cfg.progress and acc.is_main_process, loop.total_steps)
    bar.update(loop.step)
    loop.model.train()
    with Meter(run.lm.device) as meter:
        for epoch, (loader, loss_fn, mark) in enumerate(stages, 1):
            if epoch < first:
                continue
            if hasattr(loop.method, "set_epoch") and not mark:
                loop.method.set_epoch(epoch - cfg.qa_first)
            if state and epoch == first:
                for g, saved in zip(loop.generators, state["generator_states"]):
                    g.set_state(saved)
            began = [g.get_state() for g in loop.generators]  # what a checkpoint in this epoch restores
            skip = done if epoch == first else 0
            for i, batch in enumerate(acc.skip_first_batches(loader, skip) if skip else loader, skip + 1):
                train_step(run, loop, batch, loss_fn)
                if acc.sync_gradients:
                    bar.update(1)
                    if loop.step % cfg.log_every == 0 and (recent := loop.read_losses(run)):
                        bar.set_postfix(loss=f"{recent[-1]:.3f}", epoch=epoch, tok_s=f"{loop.tokens_seen / max(meter.elapsed, 1e-9):.0f}")
                    if cfg.eval_every and loop.step % cfg.eval_every == 0:
                        with meter.paused():
                            curve.append({**curve_point(run, loop, sample, epoch), **mark})
                    if cfg.save_every and loop.step % cfg.save_every == 0:
                        before = loop.resumed or {"seconds_before": 0.0, "eval_seconds_before": 0.0}
                        with meter.paused():
                            loop.read_losses(run)
                            checkpoint.save(run, loop, {"epoch": epoch, "batches": i, "step": loop.step, "tokens_seen": loop.tokens_seen,
                                                        "losses": loop.losses, "curve": curve, "generator_states": began,
                                                        "seconds": before["seconds_before"] + meter.elapsed,
                                                        "eval_seconds": before["eval_seconds_before"] + meter.paused_seconds})
            if not cfg.eval_every:
                with meter.paused():
                    curve.append({**curve_point(run, loop, sample, epoch), **mark})
    loop.read_losses(run)  # after the last --eval-every point
    bar.close()
    return curve, meter


def train_step(run: Run, loop: Loop, batch: dict, loss_fn=None) -> None:
    acc = run.acc
    scaler = loop.scaler
    with acc.accumulate(loop.model):
        with run.autocast():
            loss = (loss_fn or loop.method.loss)(loop.model, batch)
        acc.backward(scaler.scale(loss) if scaler else loss)
        if acc.sync_gradients and scaler:  # the true gradients before clipping; the step is skipped if any is inf / nan
            scaler.unscale_(loop.opt)
        if acc.sync_gradients and run.cfg.max_grad_norm:
            acc.clip_grad_norm_(loop.trainable, run.cfg.max_grad_norm)
        if acc.sync_gradients and scaler:
            scaler.step(loop.opt)
            scaler.update()
        else:
            loop.opt.step()  # a no-op between accumulation boundaries (Accelerate's optimizer)
        loop.sched.step()
        loop.opt.zero_grad()
    loop.tokens_seen += batch["n_tokens"] * acc.num_processes  # counted on the host (methods.base.with_counts)
    # read at --log-every steps: no device sync per step; a micro-batch's loss belongs to the step it ends in
    loop.pending.append((loop.step + 1, loss.detach(), loop.sched.get_last_lr()[0]))
    if acc.sync_gradients:
        loop.step += 1


def per_epoch_sets(sets, cfg: TrainConfig):
    """The per-epoch evaluation sample: drawn with the fixed sample seed, the same for every training seed."""
    return [(s, stratified_sample(s, exs, cfg.eval_sample, cfg.sample_seed), m) for s, exs, m in sets]


def per_epoch_questions(questions: list, cfg: TrainConfig) -> list:
    """A document task's per-epoch sample: eval_sample questions drawn with the sample seed, in file order."""
    if cfg.eval_sample is None or cfg.eval_sample >= len(questions):
        return list(questions)
    return [questions[i] for i in sorted(random.Random(cfg.sample_seed).sample(range(len(questions)), cfg.eval_sample))]


def curve_point(run: Run, loop: Loop, sets, epoch: int) -> dict:
    """Mean training loss since the previous point, then an evaluation on the per-epoch sample."""
    loop.read_losses(run)
    mean_loss = sum(loop.losses) / len(loop.losses)
    loop.losses.clear()
    point = {"epoch": epoch, "step": loop.step, "loss": mean_loss, **evaluation_point(run, loop, sets, full=False)}
    track(run, {f"eval/{split}/accuracy": m["accuracy"] for split, m in point["metrics"].items()}, loop.step)
    return point


def evaluation_point(run: Run, loop: Loop, sets, full: bool) -> dict:
    """Score ``sets`` (a document task: its questions, closed book) with an inference copy of the model in the
    compute dtype, as `engrain eval --adapter` does."""
    unwrap = run.acc.unwrap_model
    loop.model.eval()
    scoring = models.inference_copy(unwrap(loop.model), run.compute)
    if run.qa is not None:
        metrics, measure = score_questions(run.lm, sets, None, run.cfg.batch_size, model=scoring, prompt=run.qa_prompt)
        metrics, measure = {run.qa.name: metrics}, {run.qa.name: measure, "matmul_peak_tflops": measure["matmul_peak_tflops"]}
    else:
        metrics, measure = score_sets(run.lm, run.spec, sets, run.bos, run.eval_queries(sets), run.eval_prompter.verbalizer_ids(),
                                      run.cfg, head=unwrap(loop.head) if loop.head else None, progress=run.cfg.progress and full,
                                      prefix_tokens=run.virtual_tokens, model=scoring)
    del scoring
    loop.model.train()
    return {"metrics": metrics, "measure": measure}


def forgetting_before(run: Run) -> dict:
    """The base model's forgetting probes: the same for every run of a model, precision and batch size, so cached
    ($ENGRAIN_CACHE/forgetting); the record says when it was (``cached``)."""
    from engrain.cache import cached, model_fingerprint
    from engrain.documents import forgetting
    from engrain.tasks.loaders import default_data_dir

    fresh = []
    key = [forgetting.VERSION, model_fingerprint(run.lm.source), str(run.compute), run.lm.device.type, run.cfg.batch_size,
           str(run.cfg.data_dir or default_data_dir())]
    out = cached("forgetting", key, lambda: fresh.append(1) or forgetting_point(run, run.lm.model))
    return {**out, "cached": not fresh}


def forgetting_point(run: Run, model: torch.nn.Module) -> dict:
    """RTE 16-shot ICL and held-out perplexity (engrain.documents.forgetting) with an inference copy of ``model``."""
    from engrain.documents import forgetting

    was_training = model.training
    model.eval()
    scoring = models.inference_copy(model, run.compute)
    out = forgetting.measure(scoring, run.lm, run.cfg.data_dir, run.cfg.batch_size)
    model.train(was_training)
    return out


def make_record(run: Run, method: Method, loop: Loop, curve: list, final: dict, meter: Meter) -> dict:
    from engrain.results import base_record

    cfg = run.cfg
    record = base_record("train", cfg.method, cfg, run.lm)
    record["trainable_parameters"] = loop.summary
    record.update(method.record)
    if run.augment:
        record["augment"] = run.augment
    record["train_examples"] = [{"line": ex["line"], "label": run.train_spec.labels[ex["label"]]} for ex in run.shots]  # [] for documents
    pairs = sum(causal_pairs(run.virtual_tokens, len(it["input_ids"])) for it in method.items) * cfg.epochs
    if loop.qa_loader is not None:
        pairs += sum(causal_pairs(run.virtual_tokens, len(it["input_ids"])) for it in loop.qa_loader.dataset) * cfg.qa_first
    flops = training_flops(loop.flops, loop.tokens_seen, pairs)
    record["curve"] = curve
    record["metrics"] = final["metrics"]
    before = loop.resumed or {"seconds_before": 0.0, "eval_seconds_before": 0.0}
    seconds = before["seconds_before"] + meter.seconds  # a resumed run: with the seconds metered before the checkpoint
    record["measure"] = {
        **final["measure"],
        "train": {
            "seconds": seconds,
            "steps": loop.step,
            "tokens": loop.tokens_seen,
            "tokens_per_s": loop.tokens_seen / seconds,
            **meter.memory(),
            "flops": flops,
            "mfu": flops / (final["measure"]["matmul_peak_tflops"] * 1e12 * seconds),
            "per_epoch_eval_seconds": before["eval_seconds_before"] + meter.paused_seconds,
            **({"resumed_from_step": loop.resumed["from_step"]} if loop.resumed else {}),
            **({"loss_scale": loop.scaler.get_scale()} if loop.scaler else {}),  # fp16: the scale it ended with
        },
    }
    if run.augment:  # what making the corpus cost (when it was made, not read from the cache), against training
        made = run.augment["seconds"]
        record["measure"]["augment"] = {"seconds": made, "cache_hit": run.augment["cache_hit"],
                                        "share_of_training": made / (made + meter.seconds)}
    return record


def save_outputs(run: Run, loop: Loop, record: dict) -> None:
    from engrain.results import write_record

    out, unwrap = Path(run.cfg.out), run.acc.unwrap_model
    if run.cfg.save:
        adapter = save_adapter(unwrap(loop.model), unwrap(loop.head) if loop.head else None, run.cfg, run.lm,
                               out / record["name"], run.virtual_tokens)
        record["adapter"] = {"path": str(adapter), "bytes": sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file())}
    record["path"] = str(write_record(record, out))


def save_adapter(model, head, cfg: TrainConfig, lm, target: Path, prefix_tokens: int = 0) -> Path:
    """Write what was trained to ``target``: built in a temporary folder, then swapped in by renames, so
    an interruption leaves the previous adapter (if any) or the new one, never neither.

    lora/ia3/prefix: a peft adapter folder (``PeftModel.from_pretrained`` loads it); bitfit: the biases
    as safetensors; full: the whole model + tokenizer; head: ``head.safetensors``. ``engrain.json``
    says how to rebuild the model for ``engrain eval --adapter``.
    """
    from safetensors.torch import save_file

    tmp, old = (target.with_name(f".{target.name}.{tag}{os.getpid()}") for tag in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
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
                "task": cfg.task, "train_data": cfg.train_data or cfg.task, "format": cfg.format, "template": cfg.template,
                "chat_template": cfg.chat_template, "quantize": cfg.quantize,  # the base it trained on (and is scored on)
                "quantize_compute": str(lm.dtype).removeprefix("torch.") if cfg.quantize else None,
                # a prefix adapter holds the demonstrations' KV (BOS included): queries follow it as in ICL
                "prefix_tokens": prefix_tokens}
        (tmp / "engrain.json").write_text(json.dumps(meta, indent=2))
        swap_in(tmp, target, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
