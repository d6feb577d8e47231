"""Frozen weights held in bf16 vs fp32, for bf16 training of adapters (LoRA, IA3, BitFit).

engrain trains in bf16 autocast with fp32 master weights for what trains. Autocast casts every frozen
fp32 weight to bf16 at each forward, and keeps that copy for the backward; `engrain.params.hold_frozen_in`
casts the frozen decoder weights once instead (the loss and gradients are bit for bit the same: see
tests/test_train.py). This runs the same PBFT job as benchmarks/train_pbft.py (smollm2-135m, RTE,
32 shots, batch 8, 12 steps, bf16) both ways, each in a fresh subprocess so its peak memory is its own,
and prints time, tokens/s, peak memory and the ratios; writes benchmarks/results/frozen_weights.json.

    python benchmarks/frozen_weights.py [--params lora,ia3,bitfit] [--steps 12] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_pbft import job_arguments, job_header, ratios, run_apart, run_engrain, write_results  # noqa: E402  (the same engrain run as the Trainer comparison)


def main() -> None:
    ap = job_arguments(__doc__)
    ap.add_argument("--params", default="lora,ia3,bitfit")
    ap.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)  # what run_engrain reads; the point is bf16
    ap.add_argument("--out", default=str(HERE / "results" / "frozen_weights.json"))
    args = ap.parse_args()
    if args.one:
        frozen, params = args.one.split(":")
        if frozen == "fp32":
            import engrain.train

            engrain.train.hold_frozen_in = lambda model, dtype: 0  # as before: autocast casts them at every forward
        print(json.dumps(run_engrain(params, args)))
        return

    from engrain.models import resolve_device

    res = job_header(args, resolve_device(args.device))
    res["precision"] = args.precision
    for params in args.params.split(","):
        for frozen in ("bf16", "fp32"):
            res["runs"][f"{params}-frozen-{frozen}"] = r = run_apart(__file__, f"{frozen}:{params}")
            print(f"  {params:6s} frozen {frozen}  {r['seconds']:7.1f} s  {r['tokens_per_s']:6.0f} tokens/s  "
                  f"peak {r['peak_rss_mb']:6.0f} MB ({res['memory']})", flush=True)
        held, before = res["runs"][f"{params}-frozen-bf16"], res["runs"][f"{params}-frozen-fp32"]
        res[f"{params}_throughput_ratio"], res[f"{params}_memory_ratio"] = ratios(held, before)
        print(f"  {params}: frozen in bf16 / in fp32: throughput {res[f'{params}_throughput_ratio']:.2f}x, "
              f"memory {res[f'{params}_memory_ratio']:.2f}x")
    write_results(res, args.out)


if __name__ == "__main__":
    main()
