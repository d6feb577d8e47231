"""The same PBFT job two ways, for LoRA and for full fine-tuning, in one session:

  engrain: `engrain.train` (bf16 autocast with fp32 master weights where the CPU has AMX,
           left-padded batches padded to their longest member, last-position logits only);
  trainer: a plain Hugging Face `Trainer` (+ peft for LoRA) set up as a user would by default:
           fp32, every sequence padded to a fixed max length (as llmft does), causal-LM loss on
           the answer token (labels -100 elsewhere), logits for every position.

Same model (smollm2-135m), data (RTE, 32 shots, seed 0), batch size, learning rate and number of
optimizer steps, on the same device (--device: auto picks CUDA where there is one; the Trainer
stays fp32 there too). Each run is a fresh subprocess so its peak memory is its own (process RSS on
CPU, the allocator's max allocated on CUDA). Prints wall time of the training loop, real (non-pad)
tokens/s and peak memory, and the ratios; writes benchmarks/results/train_pbft.json.

    python benchmarks/train_pbft.py [--steps 12] [--max-length 256] [--device auto]
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
LR = {"lora": 2e-4, "full": 1e-5}  # engrain's presets; the others' through engrain.config.PRESETS


def run_engrain(params: str, args) -> dict:
    from engrain.config import TrainConfig
    from engrain.train import train_model

    epochs = args.steps * args.batch_size // args.shots
    cfg = TrainConfig(model=args.model, task="rte", shots=args.shots, seed=0, method="pbft", params=params, epochs=epochs,
                      lr=LR.get(params), warmup_ratio=0.0, train_batch_size=args.batch_size, data_dir=DATA, out=None,
                      progress=False, limit=1, ood=False, eval_sample=1, eval_every=10**9, device=args.device,
                      precision=args.precision)
    rec, _, _ = train_model(cfg)
    t = rec["measure"]["train"]
    return {"seconds": t["seconds"], "steps": t["steps"], "tokens": t["tokens"], "peak_rss_mb": t["peak_memory_mb"]}


def run_trainer(params: str, args) -> dict:
    from transformers import Trainer, TrainingArguments

    from engrain.data import Prompter, sample_few_shot
    from engrain.measure import Meter
    from engrain.models import load_model
    from engrain.tasks import get_task, load_split

    lm = load_model(args.model, "fp32", args.device, fp32_head=False)  # any --model: alias, GGUF, folder or hub id
    model, tok, device = lm.model, lm.tokenizer, lm.device
    if params == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    spec = get_task("rte")
    shots = sample_few_shot(spec, load_split(spec, "train", DATA), args.shots, 0)
    p = Prompter(spec, spec.prompt_format(), tok)
    rows, n_tokens = [], 0
    for ex in shots:
        ids = tok(p.demo_text(ex))["input_ids"][: args.max_length]  # prompt + verbaliser
        n_tokens += len(ids) - 1
        labels = [-100] * (len(ids) - 1) + [ids[-1]]
        pad = args.max_length - len(ids)
        rows.append({"input_ids": ids + [tok.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
                     "labels": labels + [-100] * pad})
    targs = TrainingArguments(output_dir=str(Path(args.tmp) / f"trainer-{params}"), per_device_train_batch_size=args.batch_size,
                              max_steps=args.steps, learning_rate=LR[params], lr_scheduler_type="constant", warmup_steps=0,
                              report_to=[], save_strategy="no", logging_strategy="no", use_cpu=device.type == "cpu", seed=0,
                              dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=rows)
    with Meter(device) as m:
        trainer.train()
    epochs = args.steps * args.batch_size / len(rows)
    return {"seconds": m.seconds, "steps": args.steps, "tokens": int(n_tokens * epochs), "peak_rss_mb": m.peak_mb}


def run_apart(script: str, one: str) -> dict:
    """``script --one ONE`` with this command's arguments, in a fresh process so its peak memory is its
    own: the JSON it prints, with tokens/s added."""
    proc = subprocess.run([sys.executable, script, "--one", one] + sys.argv[1:], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{one} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["tokens_per_s"] = r["tokens"] / r["seconds"]
    return r


def job_arguments(doc: str) -> argparse.ArgumentParser:
    """The PBFT job's options (model, device, shots, batch size, steps) and the internal --one."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps (a multiple of shots / batch size)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print its JSON
    return ap


def job_header(args, device) -> dict:
    """What a result file records about the machine and the PBFT job, and an empty ``runs``."""
    from engrain.measure import host, memory_kind, versions

    return {"machine": host(), "versions": versions(), "model": args.model, "device": str(device), "memory": memory_kind(device),
            "task": "rte", "shots": args.shots, "batch_size": args.batch_size, "steps": args.steps, "runs": {}}


def ratios(new: dict, base: dict) -> tuple[float, float]:
    """(throughput, peak memory) of run ``new`` relative to run ``base``."""
    return new["tokens_per_s"] / base["tokens_per_s"], new["peak_rss_mb"] / base["peak_rss_mb"]


def write_results(res: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


def main() -> None:
    ap = job_arguments(__doc__)
    ap.add_argument("--max-length", type=int, default=256, help="the Trainer baseline's fixed padding length")
    ap.add_argument("--precision", default="auto", help="engrain's (auto: bf16 where the hardware has it); the Trainer stays fp32")
    ap.add_argument("--params", default="lora,full")
    ap.add_argument("--tmp", default="/tmp/engrain-bench")
    ap.add_argument("--out", default=str(HERE / "results" / "train_pbft.json"))
    args = ap.parse_args()
    if args.one:
        way, params = args.one.split(":")
        print(json.dumps((run_engrain if way == "engrain" else run_trainer)(params, args)))
        return

    from engrain.models import resolve_device

    res = job_header(args, resolve_device(args.device))
    res["trainer_max_length"] = args.max_length
    for params in args.params.split(","):
        for way in ("engrain", "trainer"):
            res["runs"][f"{way}-{params}"] = r = run_apart(__file__, f"{way}:{params}")
            print(f"  {way:8s} {params:5s} {r['seconds']:7.1f} s  {r['tokens_per_s']:8.0f} tokens/s  peak {r['peak_rss_mb']:6.0f} MB ({res['memory']})", flush=True)
        e, t = res["runs"][f"engrain-{params}"], res["runs"][f"trainer-{params}"]
        res[f"{params}_throughput_ratio"], res[f"{params}_memory_ratio"] = ratios(e, t)
        print(f"  {params}: engrain/trainer throughput {res[f'{params}_throughput_ratio']:.1f}x, memory {res[f'{params}_memory_ratio']:.2f}x")
    write_results(res, args.out)


if __name__ == "__main__":
    main()
