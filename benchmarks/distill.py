"""Context distillation, LoRA student, four ways in one session (each run in its own process):

  engrain:  `engrain.train` with method distill: the teacher's context KV computed once, the
            teacher's verbaliser distribution for the whole transfer set computed once before
            training (batched, last position only), then student steps only;
  sdft:     TRL's self-distillation trainer (`trl.experimental.sdft.SDFTTrainer`; `pip install
            -e '.[bench]'`): the k demonstrations as the teacher's `privileged_context`, one sampled
            answer token per query, teacher = the base weights (adapter disabled), its top-100
            logit distillation; run every step, as SDFT is on-policy. Skipped if TRL is missing;
  naive:    a plain loop that runs the teacher (the same model with the LoRA adapter disabled, so no
            second copy) on demonstrations + query for every batch of every step, then the student;
  pbft:     engrain pbft + LoRA for the same number of steps and batch size (the target: distill's
            total time <= 1.5x pbft's).

Same model (smollm2-135m), precision (bf16 autocast, fp32 weights), k=16 demonstrations (seed 0),
transfer set, batch size (training and teacher), steps, learning rate and device (--device: auto
picks CUDA where there is one). Prints wall time (teacher + student), student tokens/s and peak
memory (process RSS on CPU, the allocator's max allocated on CUDA), and the ratios; writes
benchmarks/results/distill.json.

    python benchmarks/distill.py [--shots 16] [--transfer 64] [--steps 16] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = os.environ.get("ENGRAIN_DATA", str(HERE.parents[1] / "shared" / "data"))


def config(method: str, args):
    from engrain.config import TrainConfig

    epochs = args.steps * args.batch_size // (args.transfer if method == "distill" else args.shots)
    return TrainConfig(model=args.model, task="rte", shots=args.shots, seed=0, method=method, params="lora", epochs=epochs,
                       lr=2e-4, warmup_ratio=0.0, train_batch_size=args.batch_size, batch_size=args.batch_size, transfer_size=args.transfer, data_dir=DATA,
                       out=None, progress=False, limit=1, ood=False, eval_sample=1, eval_every=10**9, device=args.device)


def run_engrain(method: str, args) -> dict:
    from engrain.train import train_model

    rec, _, _ = train_model(config(method, args))
    t, teacher = rec["measure"]["train"], rec.get("teacher", {"seconds": 0.0, "peak_memory_mb": 0.0})
    return {"teacher_seconds": teacher["seconds"], "student_seconds": t["seconds"], "seconds": teacher["seconds"] + t["seconds"],
            "steps": t["steps"], "student_tokens": t["tokens"], "peak_rss_mb": max(t["peak_memory_mb"], teacher["peak_memory_mb"])}


def run_naive(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from engrain.forward import padding_side
    from engrain.measure import Meter
    from engrain.methods import collate, forward_last
    from engrain.methods.distill import kl_divergence

    cfg = config("distill", args)
    lm, p, demos, inputs = _setup(args)
    verb, ctx, pad = p.verbalizer_ids(), p.context_ids(demos), lm.tokenizer.pad_token_id
    side = padding_side(lm.model)
    teacher_ids = [ctx + q for q in p.query_ids(inputs, True)]
    student_ids = [p.context_ids([]) + q for q in p.query_ids(inputs, False)]
    model = get_peft_model(lm.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr)
    g = torch.Generator().manual_seed(0)
    tokens, step, dev = 0, 0, lm.device
    with Meter(dev) as m:
        while step < args.steps:
            for idx in torch.randperm(len(inputs), generator=g).split(args.batch_size):
                if step == args.steps:
                    break
                t_batch = {k: v.to(dev) for k, v in collate([{"input_ids": teacher_ids[i]} for i in idx], pad, side).items()}
                s_batch = {k: v.to(dev) for k, v in collate([{"input_ids": student_ids[i]} for i in idx], pad, side).items()}
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    with torch.no_grad(), model.disable_adapter():  # the teacher: base weights, full context, every step
                        t = forward_last(model, t_batch)[0][:, verb].float()
                    s = forward_last(model, s_batch)[0][:, verb].float()
                loss = kl_divergence(t.log_softmax(-1), s.log_softmax(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
                tokens += int(s_batch["attention_mask"].sum())
                step += 1
    return {"seconds": m.seconds, "steps": step, "student_tokens": tokens, "peak_rss_mb": m.peak_mb}


def run_sdft(args) -> dict:
    """TRL's SDFT trainer (trl.experimental.sdft), set up as its docs show, on the same data: the student
    prompt is the query, the privileged context the k demonstrations (teacher prompt = context, blank
    line, query, as engrain's ICL prompt); one sampled answer token per query (max_completion_length=1,
    num_generations=1); teacher = base weights (LoRA adapter disabled), as engrain's; bf16."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from engrain.measure import Meter

    lm, p, demos, inputs = _setup(args)
    hf_logging.set_verbosity_error()
    data = Dataset.from_list([{"prompt": p.query_text(ex, False), "privileged_context": p.context_text(demos)} for ex in inputs])
    tokenizer = lm.tokenizer
    tokenizer.padding_side = "left"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SDFTConfig(output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=2e-4,
                         lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, num_generations=1,
                         max_completion_length=1, max_prompt_length=2048, teacher_prompt_template="{privileged_context}\n\n{prompt}",
                         teacher_model_kind="base", bf16=True, gradient_checkpointing=False, use_cpu=lm.device.type == "cpu", report_to="none", save_strategy="no",
                         logging_steps=10**6, disable_tqdm=True, seed=0, dataloader_num_workers=0)
        trainer = SDFTTrainer(model=lm.model, args=cfg, train_dataset=data, processing_class=tokenizer,
                              peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        with Meter(lm.device) as m:
            out = trainer.train()
    # Student tokens (prompt + the one sampled answer token): the transfer set's mean times the examples
    # the steps saw, since the trainer does not report which ones it drew.
    tokens = sum(len(ids) + 1 for ids in tokenizer([r["prompt"] for r in data])["input_ids"]) * args.steps * args.batch_size // len(data)
    return {"seconds": m.seconds, "steps": out.global_step, "student_tokens": tokens, "peak_rss_mb": m.peak_mb}


def _setup(args):
    """The model (fp32 weights), prompter, k demonstrations and transfer inputs of engrain's distill run."""
    from engrain.data import Prompter, example_key, sample_few_shot
    from engrain.evaluation import eval_sets
    from engrain.models import load_model
    from engrain.tasks import get_task, load_split
    from engrain.methods.distill import transfer_set

    cfg = config("distill", args)
    spec = get_task("rte")
    exclude = {example_key(s, ex) for s, exs, _ in eval_sets(spec, cfg) for ex in exs}
    demos = sample_few_shot(spec, load_split(spec, "train", DATA), cfg.shots, 0, True, exclude)
    inputs = transfer_set(cfg, spec, demos, exclude)
    lm = load_model(args.model, "fp32", args.device)
    return lm, Prompter(spec, spec.prompt_format(), lm.tokenizer), demos, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--transfer", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="a multiple of transfer / batch size")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "distill.json"))
    args = ap.parse_args()
    if args.one:
        run = {"naive": run_naive, "sdft": run_sdft}.get(args.one)
        print(json.dumps(run(args) if run else run_engrain(args.one, args)))
        return

    from engrain.measure import host, memory_kind, versions
    from engrain.models import resolve_device

    device = resolve_device(args.device)
    res = {"machine": host(), "versions": versions(), "model": args.model, "device": str(device), "memory": memory_kind(device),
           "task": "rte", "shots": args.shots,
           "transfer": args.transfer, "batch_size": args.batch_size, "steps": args.steps, "runs": {}}
    import importlib.util

    ways = ["distill", "sdft", "naive", "pbft"]
    if importlib.util.find_spec("trl") is None:
        print("  (TRL not installed: `pip install -e '.[bench]'` to compare with its SDFT trainer)")
        ways.remove("sdft")
    for way in ways:
        proc = subprocess.run([sys.executable, __file__, "--one", way] + sys.argv[1:], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{way} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["student_tokens_per_s"] = r["student_tokens"] / r["seconds"]
        res["runs"][way] = r
        extra = f" (teacher {r['teacher_seconds']:.1f} s + student {r['student_seconds']:.1f} s)" if "teacher_seconds" in r else ""
        print(f"  {way:8s} {r['seconds']:7.1f} s{extra}  {r['student_tokens_per_s']:6.0f} tokens/s  peak {r['peak_rss_mb']:6.0f} MB ({res['memory']})", flush=True)
    d, n, p = res["runs"]["distill"], res["runs"]["naive"], res["runs"]["pbft"]
    res["speedup_over_naive"] = n["seconds"] / d["seconds"]
    res["memory_vs_naive"] = d["peak_rss_mb"] / n["peak_rss_mb"]
    res["distill_over_pbft_time"] = d["seconds"] / p["seconds"]
    print(f"  engrain distill vs naive loop: {res['speedup_over_naive']:.1f}x faster, memory {res['memory_vs_naive']:.2f}x; "
          f"distill / pbft-lora time for {args.steps} steps: {res['distill_over_pbft_time']:.2f}x")
    if "sdft" in res["runs"]:
        t = res["runs"]["sdft"]
        res["speedup_over_sdft"], res["memory_vs_sdft"] = t["seconds"] / d["seconds"], d["peak_rss_mb"] / t["peak_rss_mb"]
        print(f"  engrain distill vs TRL SDFT: {res['speedup_over_sdft']:.1f}x faster, memory {res['memory_vs_sdft']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
