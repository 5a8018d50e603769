#!/usr/bin/env bash
# Every method at demo scale on SmolLM2-135M / DialogSum (64 train dialogues, 16 test dialogues), one
# after another, records in results/demo/. The untouched model's score is the zero_shot row.
#   bash experiments/demo_methods.sh [method ...]      (make demo-methods)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(zero_shot full_ft ft_topk lora prefix mezo greentrainer bilevel_zofo hizfo)
for m in "${methods[@]}"; do
  echo "=== $m"
  WANDB_MODE=${WANDB_MODE:-offline} "$PY" -m hizfo.train experiment=demo method="$m" eval.before_training=false
done
"$PY" experiments/summarize_demo.py results/demo
