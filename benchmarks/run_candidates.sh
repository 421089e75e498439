#!/usr/bin/env bash
# Regime 4 of docs/benchmarks.md's "When to use dendrites": the candidate variants
# (pb_sparse, pb_closed_form, pb_output_error) on the from-scratch MLP suites and the
# scarce-data suites, and small-fan-in dendrites (pb_sparse) in the transfer suite.
# Every other method of these suites is already recorded, so only the variants run.
# Resumable (recorded runs are skipped). Two processes on 2 cores:
#   benchmarks/run_candidates.sh 0/2 & benchmarks/run_candidates.sh 1/2
set -euo pipefail
cd "$(dirname "$0")/.."
shard="${1:-0/1}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PERFORATE_BENCH_THREADS=1
for suite in ${SUITES:-digits_mlp mnist1d_mlp fashion_mlp_1pct mnist1d_mlp_1pct fashion_mlp_3pct mnist1d_mlp_3pct fashion_mlp_10pct mnist1d_mlp_10pct transfer fashion_mlp}; do
  .venv/bin/perforate bench --suite "$suite" --shard "$shard"
done
