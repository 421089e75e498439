#!/usr/bin/env bash
# The regimes of docs/benchmarks.md's "When to use dendrites" beyond the from-scratch suites:
# transfer to a new task with few labels, compression against distillation, and scarce data
# (1%, 3%, 10% of the training set).
# Resumable (recorded runs are skipped). Two processes on 2 cores:
#   benchmarks/run_regimes.sh 0/2 & benchmarks/run_regimes.sh 1/2
set -euo pipefail
cd "$(dirname "$0")/.."
shard="${1:-0/1}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PERFORATE_BENCH_THREADS=1
for suite in ${SUITES:-transfer compression fashion_mlp_1pct mnist1d_mlp_1pct fashion_mlp_3pct mnist1d_mlp_3pct fashion_mlp_10pct mnist1d_mlp_10pct}; do
  .venv/bin/perforate bench --suite "$suite" --shard "$shard"
done
