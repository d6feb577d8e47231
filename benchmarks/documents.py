"""What moving documents into the weights saves per query, and what the document methods cost to train.

1. Per-query cost, smollm2-135m, a multiple-choice question (4 choices) answered
   - closed book, by the adapted model (a LoRA adapter merged into the weights costs what the base
     model costs: what is timed is the base model without the document),
   - open book, with a document of 256 / 1k / 4k tokens in the prompt, two ways:
       fresh: each question brings its own document (its KV is computed for that question),
       shared: many questions about one document (its KV computed once, reused: engrain's cache);
   latency per question (median of --repeats), peak memory (RSS on CPU), the document's KV-cache
   bytes, and the ratios against closed book, all in one process.
2. Training throughput of cpt and cft (tokens/s, MFU) on the facts documents, next to PBFT's on RTE
   (the same loop), and document distillation's generation throughput and the share of its time
   spent generating the transfer set vs training.

Writes benchmarks/results/documents.json.

    python benchmarks/documents.py [--repeats 3] [--skip-training]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from engrain.documents import Question
from engrain.measure import Meter, host, versions
from engrain.models import load_model
from engrain.documents.qa import choice_scores

HERE = Path(__file__).resolve().parent
SIZES = (256, 1024, 4096)


def document_of(tokenizer, n_tokens: int, data_dir) -> str:
    """Real text of about ``n_tokens`` tokens: MNLI premises, in file order (the held-out text)."""
    from engrain.documents.forgetting import heldout_tokens

    return tokenizer.decode(heldout_tokens(tokenizer, data_dir, n_tokens))


def kv_bytes(model, n_tokens: int, dtype: torch.dtype) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * n_tokens * torch.finfo(dtype).bits // 8


def per_query(lm, questions: list[Question], docs: dict[str, str] | None, repeats: int, fresh: bool) -> tuple[float, float]:
    """(median ms per question, peak MB): all questions in one call (shared document: its KV once), or
    one call per question (fresh: the document's KV computed for each)."""
    times, peak = [], 0.0
    with torch.autocast(lm.device.type, dtype=lm.dtype, enabled=lm.dtype != torch.float32):
        for _ in range(repeats):
            with Meter(lm.device) as m:
                if fresh:
                    for q in questions:
                        choice_scores(lm.model, lm.tokenizer, [q], docs)
                else:
                    choice_scores(lm.model, lm.tokenizer, questions, docs)
            times.append(m.seconds / len(questions) * 1000)
            peak = max(peak, m.peak_mb)
    return statistics.median(times), peak


def query_costs(args) -> dict:
    lm = load_model("smollm2-135m", args.precision)
    question = "Question: Which of these is mentioned in the document?\nAnswer:"
    questions = [Question(f"q{i}", question, ("a harbour", "a lantern", "a river", "a cathedral"), 0, ("doc",)) for i in range(args.questions)]
    closed_ms, closed_peak = per_query(lm, questions, None, args.repeats, fresh=False)
    out = {"closed_book": {"ms_per_question": closed_ms, "peak_memory_mb": closed_peak}, "open_book": {}}
    print(f"closed book: {closed_ms:.1f} ms/question, peak {closed_peak:.0f} MB")
    for n in SIZES:
        doc = document_of(lm.tokenizer, n, args.data_dir)
        docs = {"doc": doc}
        shared_ms, shared_peak = per_query(lm, questions, docs, args.repeats, fresh=False)
        fresh_ms, fresh_peak = per_query(lm, questions[: max(2, args.questions // 4)], docs, args.repeats, fresh=True)
        kv = kv_bytes(lm.model, n, lm.dtype)
        out["open_book"][n] = {"ms_per_question_fresh": fresh_ms, "ms_per_question_shared": shared_ms, "peak_memory_mb_fresh": fresh_peak,
                               "peak_memory_mb_shared": shared_peak, "kv_cache_bytes": kv,
                               "fresh_vs_closed": fresh_ms / closed_ms, "shared_vs_closed": shared_ms / closed_ms}
        print(f"open book, {n:>4}-token document: fresh {fresh_ms:7.1f} ms/question ({fresh_ms / closed_ms:5.1f}x closed book), "
              f"shared {shared_ms:6.1f} ms ({shared_ms / closed_ms:4.1f}x), KV cache {kv / 2**20:5.1f} MiB, "
              f"peak {fresh_peak:.0f} / {shared_peak:.0f} MB")
    return out


def training_costs(args) -> dict:
    from engrain.config import TrainConfig
    from engrain.train import train

    common = dict(model="smollm2-135m", precision=args.precision, out="", progress=False, save=False, data_dir=args.data_dir)
    runs = {
        "cpt": TrainConfig(task="facts", method="cpt", epochs=2, eval_sample=1, **common),
        "cft": TrainConfig(task="facts", method="cft", epochs=2, eval_sample=1, **common),
        "distill": TrainConfig(task="facts", method="distill", epochs=1, eval_sample=1, **common),
        "pbft (RTE, k=32)": TrainConfig(task="rte", method="pbft", shots=32, epochs=4, eval_sample=1, limit=1, ood=False, **common),
    }
    out = {}
    for name, cfg in runs.items():
        rec = train(cfg)
        t = rec["measure"]["train"]
        out[name] = {"tokens_per_s": t["tokens_per_s"], "mfu": t["mfu"], "seconds": t["seconds"], "tokens": t["tokens"],
                     "peak_memory_mb": t["peak_memory_mb"]}
        line = f"{name:>16}: {t['tokens_per_s']:6.0f} tokens/s, MFU {t['mfu']:.1%}, peak {t['peak_memory_mb']:.0f} MB"
        if "teacher" in rec and "generated_tokens" in rec["teacher"]:
            g = rec["teacher"]
            share = g["seconds"] / (g["seconds"] + t["seconds"])
            out[name]["generation"] = {**g, "share_of_time": share}
            line += (f" | generating: {g['generated_tokens']} tokens at {g['generated_tokens_per_s']:.0f} tokens/s in {g['seconds']:.0f} s, "
                     f"{share:.0%} of distillation's time (1 epoch)")
        print(line)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args()
    result = {"host": host(), "versions": versions(), "per_query": query_costs(args)}
    if not args.skip_training:
        result["training"] = training_costs(args)
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / "documents.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
