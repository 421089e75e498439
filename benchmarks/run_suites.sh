#!/usr/bin/env bash
# Run benchmark suites, resumably (finished runs are skipped), one thread per process.
# Two processes on 2 cores (two 2-thread torch processes on 2 cores run ~30x slower):
#   benchmarks/run_suites.sh 0/2 & benchmarks/run_suites.sh 1/2
# SUITES="a b" picks suites (default: every suite `perforate bench --list` names).
# QUICK=1 checks that every chosen suite exists and runs the quick suite into
# RESULTS (default: a scratch folder), in seconds: what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
shard="${1:-0/1}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE  # studies run one torch thread per run
perforate="${PERFORATE:-.venv/bin/perforate}"
known="$("$perforate" bench --list | awk '{print $1}')"
suites="${SUITES:-$known}"
for suite in $suites; do
  if ! grep -qx "$suite" <<<"$known"; then
    echo "run_suites.sh: unknown suite $suite; perforate bench --list names them" >&2
    exit 2
  fi
done
if [[ "${QUICK:-0}" == 1 ]]; then
  results="${RESULTS:-$(mktemp -d)}"
  "$perforate" bench --suite quick --seeds 1 --shard "$shard" --results "$results"
  exit 0
fi
for suite in $suites; do
  "$perforate" bench --suite "$suite" --shard "$shard"
done
