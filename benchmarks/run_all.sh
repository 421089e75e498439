#!/usr/bin/env bash
# Run every suite, resumably. Two processes on 2 cores: `run_all.sh 0/2 & run_all.sh 1/2`.
# Each process uses one thread (two 2-thread torch processes on 2 cores run ~30x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
shard="${1:-0/1}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PERFORATE_BENCH_THREADS=1
for suite in ${SUITES:-digits_mlp mnist1d_mlp mnist1d_cnn fashion_mlp fashion_cnn}; do
  .venv/bin/perforate bench --suite "$suite" --shard "$shard"
done
