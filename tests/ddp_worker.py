"""Run by test_train.py under `accelerate launch --num_processes 2`: train, then write each rank's
trainable weights' checksum (all ranks must end identical), its final metrics (gathered from the shards every
rank scored) and how many evaluation queries this rank scored itself."""

import hashlib
import json
import sys
from pathlib import Path

import torch

import engrain.evaluation as evaluation
from engrain.config import TrainConfig
from engrain.train import train_model

scored, score = [], evaluation.score


def counting(model, ctx, queries, *a, **k):
    scored.append(len(queries))
    return score(model, ctx, queries, *a, **k)


evaluation.score = counting

model_dir, data_dir, out = sys.argv[1:4]
cfg = TrainConfig(model=model_dir, task="rte", shots=8, epochs=2, limit=8, eval_sample=4, data_dir=data_dir, out=out,
                  progress=False, method="pbft", params="lora", lr=1e-2, warmup_ratio=0.0, precision="fp32",
                  train_batch_size=2, device="cpu")
record, model, _ = train_model(cfg)
h = hashlib.sha256()
for name, p in sorted(model.named_parameters()):
    if p.requires_grad:
        h.update(name.encode())
        h.update(p.detach().float().numpy().tobytes())
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
Path(out, f"rank{rank}.json").write_text(json.dumps({"sha": h.hexdigest(), "world": world, "steps": record["measure"]["train"]["steps"],
                                                    "metrics": record["metrics"], "scored": sum(scored),
                                                    "processes": record["measure"]["rte"].get("processes")}))
