"""What a default `perforate compare` study costs, in plain-run units.

For each built-in task, the default study (plain, restart, pb and the width ladder, 3
seeds) is run three ways in fresh folders: forked (the first neuron phase shared, the
default), not forked (`[compare] fork = false`), and forked with `--jobs 2`. Printed: wall
seconds of each, training seconds, and both in units of the task's mean plain run.

    python benchmarks/compare_cost.py [--quick] [--out DIR]

--quick: digits only, 1 seed, plain/restart/pb (what CI runs). Results quoted in
docs/performance.md ("Cost of a study") come from the full run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from perforate.experiments.compare import compare
from perforate.experiments.study import Study

TASKS = {
    "digits": {
        "model": {
            "factory": "perforate.experiments.models:mlp",
            "kwargs": {"inputs": 64, "hidden": 8, "classes": 10},
            "width": "hidden",
        },
        "data": {"name": "digits"},
        "train": {"lr": 0.01, "candidate_lr": 0.05},
    },
    "mnist1d": {
        "model": {
            "factory": "perforate.experiments.models:mlp",
            "kwargs": {"inputs": 40, "hidden": 32, "classes": 10},
            "width": "hidden",
        },
        "data": {"name": "mnist1d"},
        "train": {"lr": 0.003, "candidate_lr": 0.015},
    },
}


def measure(name: str, spec: dict, seeds: int, arms: list[str] | None, root: Path) -> dict:
    rows = {}
    for label, fork, jobs in (
        ("forked", True, 1),
        ("not forked", False, 1),
        ("forked, --jobs 2", True, 2),
    ):
        compare_section = {"fork": fork, **({"arms": arms} if arms else {})}
        study = Study(**spec, compare=compare_section, name=name)
        began = time.perf_counter()
        report = compare(
            study,
            out=root / f"{name}-{fork}-{jobs}",
            seeds=seeds,
            jobs=jobs,
            log_line=None,
            progress=False,
        )
        wall = time.perf_counter() - began
        t = report["timing"]
        plain = next(a for a in t["arms"] if a["name"] == "plain")["seconds_mean"]
        rows[label] = {
            "wall_seconds": round(wall, 2),
            "training_seconds": round(t["study_seconds"], 2),
            "plain_run_seconds": round(plain, 3),
            "wall_in_plain_runs": round(wall / plain, 1),
            "training_in_plain_runs": round(t["study_seconds"] / plain, 1),
            "runs": sum(len(a["runs"]) for a in report["arms"]),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, 1 seed, 3 arms (CI)")
    parser.add_argument("--out", default=None, help="keep the study folders here")
    args = parser.parse_args(argv)
    tasks = ["digits"] if args.quick else list(TASKS)
    seeds = 1 if args.quick else 3
    arms = ["plain", "restart", "pb"] if args.quick else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        results = {t: measure(t, TASKS[t], seeds, arms, root) for t in tasks}
    print(json.dumps(results, indent=1))
    print(
        "\n| task | way | runs | wall s | training s | plain run s | wall, plain runs "
        "| training, plain runs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task, rows in results.items():
        for way, r in rows.items():
            print(
                f"| {task} | {way} | {r['runs']} | {r['wall_seconds']} | "
                f"{r['training_seconds']} | {r['plain_run_seconds']} | "
                f"{r['wall_in_plain_runs']} | {r['training_in_plain_runs']} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
