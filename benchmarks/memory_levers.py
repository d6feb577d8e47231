"""Training memory with gradient checkpointing, padding-free packing and 4-/8-bit base weights (issue 30's memory levers).

CFT of a model on the facts corpus (its 72 documents, batch 8), one epoch, full fine-tuning by default,
each configuration in a fresh process so that its peak memory is its own (process RSS on a CPU, CUDA's
max_memory_allocated on a GPU): none, --gradient-checkpointing, --pack, both; with --params lora also
--load-in-4bit (QLoRA) and --load-in-8bit. Prints the training seconds, tokens/s and peak memory per
configuration and each one's ratio to none; writes benchmarks/results/memory_levers[_PARAMS].json.
Checkpointing and packing leave the loss as it was (tests/test_levers.py); 4-/8-bit weights change it a little.

    python benchmarks/memory_levers.py [--model gemma3-270m] [--batch 8] [--precision auto] [--device auto]
    python benchmarks/memory_levers.py --params lora --levers none,4bit,8bit,4bit+both
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEVERS = {"none": [], "checkpointing": ["--gradient-checkpointing"], "pack": ["--pack"],
          "both": ["--gradient-checkpointing", "--pack"], "4bit": ["--load-in-4bit"], "8bit": ["--load-in-8bit"],
          "4bit+both": ["--load-in-4bit", "--gradient-checkpointing", "--pack"]}
LR = {"full": "1e-5", "lora": "1e-4"}


def run(model: str, extra: list[str], args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "engrain.cli", "train", "--model", model, "--task", "facts", "--method", "cft", "--params", args.params,
               "--epochs", "1", "--lr", LR[args.params], "--train-batch-size", str(args.batch), "--limit", "8", "--eval-sample", "4",
               "--precision", args.precision, "--device", args.device, "--no-save", "--no-progress", "--out", out, *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        record = json.loads(next(Path(out).glob("train-*.json")).read_text())
    t = record["measure"]["train"]
    return {"seconds": t["seconds"], "steps": t["steps"], "tokens_per_s": t["tokens_per_s"], "peak_memory_mb": t["peak_memory_mb"],
            "losses": [p["loss"] for p in record["curve"]], "device": record["model"].get("device_name")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--params", default="full", choices=sorted(LR))
    ap.add_argument("--levers", default="none,checkpointing,pack,both")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/memory_levers.json (full), memory_levers_lora.json")
    args = ap.parse_args()
    args.out = args.out or str(HERE / "results" / ("memory_levers.json" if args.params == "full" else f"memory_levers_{args.params}.json"))
    rows = {name: run(args.model, LEVERS[name], args) for name in args.levers.split(",")}
    base = rows.get("none")
    print(f"{args.model}, CFT ({args.params}) on the facts corpus, batch {args.batch}, one epoch ({next(iter(rows.values()))['device']})")
    print(f"{'lever':14s} {'train s':>8s} {'tok/s':>7s} {'peak MB':>8s} {'x time':>7s} {'x memory':>9s}  loss")
    for name, r in rows.items():
        ratio = (f"{r['seconds'] / base['seconds']:7.2f} {r['peak_memory_mb'] / base['peak_memory_mb']:9.2f}" if base else "")
        print(f"{name:14s} {r['seconds']:8.1f} {r['tokens_per_s']:7.0f} {r['peak_memory_mb']:8.0f} {ratio}  {r['losses'][0]:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "params": args.params, "batch": args.batch, "precision": args.precision,
                                          "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
