#!/usr/bin/env bash
# Issue 12's checks on a machine with a GPU, in one go, into OUT (default runs/gpu_check):
#   1. the test suite (device-independent invariants run on CUDA in fp32 and bf16; the rest on CPU);
#   2. `engrain eval` (16-shot ICL) and `engrain train --method distill --params lora` on RTE, seed 0,
#      configured as the shots sweep, so the records compare with docs/results/fewshot_shots (CPU);
#   3. the three benchmarks (ICL scoring, PBFT vs HF Trainer, distillation vs TRL SDFT), on CUDA.
# Needs engrain installed (with `.[bench]` for TRL), the bundled model, and the task data
# ($ENGRAIN_DATA or ../shared/data). PY picks the interpreter (default: python3).
#     bash benchmarks/gpu_check.sh [OUT]
set -u
OUT=${1:-runs/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" || exit 2
"$PY" -m pytest -q -p no:cacheprovider -m "not real" -rfEs 2>&1 | tee "$OUT/pytest.log" | tail -30
R="--task rte --shots 16 --seed 0 --sample 3000 --no-progress --out $OUT/records"
"$PY" -m engrain eval $R 2>&1 | tail -3
"$PY" -m engrain train $R --method distill --params lora --transfer-size 256 --eval-every 32 --alpha 0.5 --eval-sample 100 --no-save 2>&1 | tail -8
"$PY" benchmarks/icl_eval.py --out "$OUT/icl_eval.json" 2>&1 | tail -8
"$PY" benchmarks/train_pbft.py --out "$OUT/train_pbft.json" 2>&1 | tail -8
"$PY" benchmarks/distill.py --out "$OUT/distill.json" 2>&1 | tail -8
"$PY" -m pytest -q -p no:cacheprovider -m real -rfEs 2>&1 | tail -5
