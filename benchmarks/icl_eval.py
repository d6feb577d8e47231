"""16-shot ICL on RTE validation with smollm2-135m, three ways, in one process on the same data:

  (a) engrain: demonstrations' KV cache computed once, queries only, last-position logits,
      length-sorted batches, each packed into one row (a block mask keeps each query to the
      demonstrations and itself) when its query tokens are at most twice the demonstrations', so
      the cache is read once per batch;
  (b) the llmft way: demonstrations recomputed for every query, every sequence right-padded to a
      fixed maximum length, logits for every position;
  (c) plain per-batch concatenation (demonstrations + query) with dynamic padding, last-position logits;
  (d) engrain before packing: the cache broadcast to a batch of rows padded to their longest member
      (the forward pass's concatenation copies the demonstrations' keys and values once per row).

Prints examples/s of each, the ratios a/b, a/c and a/d, engrain's MFU, and writes
benchmarks/results/icl_eval.json. (b) is slow, so it runs on the first --limit-slow queries; rates
are per example, so the ratios compare like with like.

    python benchmarks/icl_eval.py [--data-dir ../shared/data] [--limit-slow 48]
    python benchmarks/icl_eval.py --shots 64 --limit 96 --limit-slow 8 --max-length 6144 --out benchmarks/results/icl_eval_k64.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from engrain.data import Prompter, sample_few_shot
from engrain.evaluation import score, score_uncached
from engrain.forward import encode_context
from engrain.measure import FlopModel, Meter, causal_pairs, host, matmul_peak, memory_kind, versions
from engrain.models import load_model
from engrain.tasks import get_task, load_split

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def score_llmft_style(model, ctx, queries, verb, batch_size, pad_id, max_length):
    """Every prompt = demonstrations + query, right-padded to max_length, full logits (as llmft's eval)."""
    out = torch.empty(len(queries), len(verb))
    for start in range(0, len(queries), batch_size):
        seqs = [list(ctx) + list(q) for q in queries[start : start + batch_size]]
        ids = torch.full((len(seqs), max_length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V): every position
        last = mask.sum(1) - 1
        out[start : start + len(seqs)] = logits[torch.arange(len(seqs), device=ids.device), last][:, verb].float().cpu()
    return out


def timed(fn, device, repeats):
    """Median seconds over ``repeats`` runs, the last result, and the largest peak memory (RSS on CPU,
    the allocator's max allocated on CUDA)."""
    times, peak, result = [], 0.0, None
    for _ in range(repeats):
        with Meter(device) as m:
            result = fn()
        times.append(m.seconds)
        peak = max(peak, m.peak_mb)
    return statistics.median(times), result, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ENGRAIN_DATA", str(HERE.parents[1] / "shared" / "data")))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048, help="llmft's fixed padding length for (b)")
    ap.add_argument("--limit", type=int, default=None, help="queries for (a), (c) and (d) (default: all 277)")
    ap.add_argument("--limit-slow", type=int, default=48, help="queries for (b)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of (a); median reported")
    ap.add_argument("--out", default=str(HERE / "results" / "icl_eval.json"))
    args = ap.parse_args()

    lm = load_model(args.model, device=args.device)
    spec = get_task("rte")
    demos = sample_few_shot(spec, load_split(spec, "train", args.data_dir), args.shots, 0)
    val = load_split(spec, "validation", args.data_dir)
    p = Prompter(spec, spec.prompt_format(), lm.tokenizer)
    ctx, q, verb = p.context_ids(demos), p.query_ids(val[: args.limit], True), p.verbalizer_ids()
    pad, bs, dev = lm.tokenizer.pad_token_id, args.batch_size, lm.device
    if len(ctx) + max(map(len, q)) > args.max_length:
        raise SystemExit(f"--max-length {args.max_length} is shorter than the longest prompt")
    print(f"{lm.name} {lm.dtype} on {dev} | RTE validation {len(q)} queries | {args.shots}-shot context {len(ctx)} tokens | batch {bs}")
    score(lm.model, ctx, q[:bs], verb, bs, pad)  # warm-up

    def engrain_path():  # the context cache is part of the cost
        return score(lm.model, ctx, q, verb, bs, pad, cache=encode_context(lm.model, ctx))

    t_a, (va, _), mem_a = timed(engrain_path, dev, args.repeats)
    t_d, (vd, _), mem_d = timed(lambda: score(lm.model, ctx, q, verb, bs, pad, cache=encode_context(lm.model, ctx), pack=False), dev,
                                args.repeats)
    t_c, (vc, _), mem_c = timed(lambda: score_uncached(lm.model, ctx, q, verb, bs, pad), dev, 1)
    slow = q[: args.limit_slow]
    t_b, vb, mem_b = timed(lambda: score_llmft_style(lm.model, ctx, slow, verb, bs, pad, args.max_length), dev, 1)

    rate = {"a_engrain": len(q) / t_a, "b_llmft": len(slow) / t_b, "c_concat_dynamic": len(q) / t_c, "d_cache_padded_batch": len(q) / t_d}
    n_tok = sum(map(len, q))
    flops = FlopModel.of(lm.model).forward(n_tok + len(ctx), sum(causal_pairs(len(ctx), len(x)) for x in q) + causal_pairs(0, len(ctx)), len(q))
    peak = matmul_peak(dev, lm.dtype)
    agree_b = (va[: len(slow)].argmax(-1) == vb.argmax(-1)).float().mean().item()
    agree_c = (va.argmax(-1) == vc.argmax(-1)).float().mean().item()
    agree_d = (va.argmax(-1) == vd.argmax(-1)).float().mean().item()
    res = {
        "machine": host(),
        "versions": versions(),
        "model": lm.name,
        "device": str(dev),
        "dtype": str(lm.dtype),
        "shots": args.shots,
        "context_tokens": len(ctx),
        "queries": {"a": len(q), "b": len(slow), "c": len(q), "d": len(q)},
        "batch_size": bs,
        "max_length_b": args.max_length,
        "seconds": {"a_median": t_a, "b": t_b, "c": t_c, "d_median": t_d},
        "examples_per_s": rate,
        "ratio_a_over_b": rate["a_engrain"] / rate["b_llmft"],
        "ratio_a_over_c": rate["a_engrain"] / rate["c_concat_dynamic"],
        "ratio_a_over_d": rate["a_engrain"] / rate["d_cache_padded_batch"],
        "peak_rss_mb": {"a": mem_a, "b": mem_b, "c": mem_c, "d": mem_d},  # the key predates CUDA: see "memory"
        "memory": memory_kind(dev),
        "engrain_mfu": flops / (peak * t_a),
        "matmul_peak_tflops": peak / 1e12,
        "prediction_agreement": {"a_vs_b": agree_b, "a_vs_c": agree_c, "a_vs_d": agree_d},
    }
    for k, v in rate.items():
        print(f"  {k:18s} {v:8.2f} examples/s   peak {res['peak_rss_mb'][k[0]]:7.0f} MB ({res['memory']})")
    print(f"  a/b = {res['ratio_a_over_b']:.1f}x   a/c = {res['ratio_a_over_c']:.1f}x   a/d = {res['ratio_a_over_d']:.2f}x   engrain MFU {res['engrain_mfu']:.1%} "
          f"of {peak / 1e12:.2f} TFLOP/s (measured {str(lm.dtype).replace('torch.', '')} matmul peak)")
    print(f"  predictions agree: a vs b {agree_b:.1%}, a vs c {agree_c:.1%}, a vs d {agree_d:.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
