"""Which scaled-dot-product-attention kernel a training step should use: flash (PyTorch's default on
CPU) vs math.

Runs the PBFT job of benchmarks/train_pbft.py (smollm2-135m, RTE, 32 shots, batch 8, 12 steps, bf16
where the hardware has it) with every training forward held to one kernel, each run in a fresh
subprocess so that its peak memory is its own, the kernels alternated ``--repeats`` times; prints the
median time, tokens/s and peak memory per kernel and the ratios; writes
benchmarks/results/attention_kernel.json.

    python benchmarks/attention_kernel.py [--params lora] [--kernels flash,math] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_pbft import job_arguments, job_header, ratios, run_apart, run_engrain, write_results  # noqa: E402  (the same engrain run as the Trainer comparison)


def hold_kernel(name: str) -> None:
    """Every training forward in this process uses SDPA kernel ``name`` (flash, math, efficient or
    cudnn), or engrain's own choice (``engrain``)."""
    if name == "engrain":
        return
    import engrain.train
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
    engrain.train.training_attention = lambda device: sdpa_kernel([backend])


def main() -> None:
    ap = job_arguments(__doc__)
    ap.add_argument("--params", default="lora")
    ap.add_argument("--kernels", default="flash,math")
    ap.add_argument("--repeats", type=int, default=3, help="runs per kernel, alternated; medians are reported")
    ap.add_argument("--precision", default="auto", help="auto: bf16 where the hardware has it")
    ap.add_argument("--out", default=str(HERE / "results" / "attention_kernel.json"))
    args = ap.parse_args()
    if args.one:
        kernel, params = args.one.split(":")
        hold_kernel(kernel)
        print(json.dumps(run_engrain(params, args)))
        return

    from engrain.models import resolve_device

    kernels = args.kernels.split(",")
    res = job_header(args, resolve_device(args.device))
    res.update(precision=args.precision, repeats=args.repeats, median={})
    for params in args.params.split(","):
        for kernel in kernels:
            res["runs"][f"{params}-{kernel}"] = []
        for _ in range(args.repeats):
            for kernel in kernels:
                r = run_apart(__file__, f"{kernel}:{params}")
                res["runs"][f"{params}-{kernel}"].append(r)
                print(f"  {params:6s} {kernel:9s} {r['seconds']:7.1f} s  {r['tokens_per_s']:6.0f} tokens/s  "
                      f"peak {r['peak_rss_mb']:6.0f} MB ({res['memory']})", flush=True)
        for kernel in kernels:
            runs = res["runs"][f"{params}-{kernel}"]
            res["median"][f"{params}-{kernel}"] = {key: statistics.median(r[key] for r in runs)
                                                   for key in ("seconds", "tokens_per_s", "peak_rss_mb")}
        base = res["median"][f"{params}-{kernels[0]}"]
        for kernel in kernels[1:]:
            speed, memory = ratios(res["median"][f"{params}-{kernel}"], base)
            res[f"{params}_{kernel}_vs_{kernels[0]}_throughput"], res[f"{params}_{kernel}_vs_{kernels[0]}_memory"] = speed, memory
            print(f"  {params}: {kernel} / {kernels[0]} (medians of {args.repeats}): throughput {speed:.2f}x, memory {memory:.2f}x")
    write_results(res, args.out)


if __name__ == "__main__":
    main()
