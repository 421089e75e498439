"""`perforate demo`: PB beside its honest baselines on real, embedded data.

scikit-learn's 8x8 digits (bundled, offline), an MLP 64-H-10. For every seed: the plain
width ladder, the restart control (PB's cycle schedule and fresh optimizers, no
dendrites), Perforated Backpropagation, and GD dendrites (the reference library's open
build). Settings are the library defaults; nothing was tuned on test data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from perforate import DendriteConfig
from perforate.files import atomic_write

from . import datasets
from .datasets import DatasetError
from .loop import fit_classifier
from .models import mlp
from .report import cycle_table, plot_runs, run_title, summary_table

CONTROL_PREFIX = "restart control"


def demo_methods(hidden: int) -> list[tuple[str, int, DendriteConfig]]:
    plain = DendriteConfig(method="restart", max_cycles=0)
    ladder = [(f"plain H={h}", h, plain) for h in (4, hidden, 2 * hidden, 4 * hidden)]
    return [
        *ladder,
        (f"{CONTROL_PREFIX} H={hidden}", hidden, DendriteConfig(method="restart")),
        (f"PB H={hidden}", hidden, DendriteConfig()),
        (f"GD dendrites H={hidden}", hidden, DendriteConfig.reference_gd()),
    ]


def run_demo(
    out_dir: str | Path = "runs/demo",
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    hidden: int = 8,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    out = Path(out_dir)
    torch.set_num_threads(1)  # tiny models: threads cost more than they give
    data = datasets.digits(seed=0)
    methods = demo_methods(hidden)
    runs: list[dict[str, Any]] = []
    total = len(methods) * len(seeds)
    log(
        f"perforate demo: digits ({len(data.y_train)} train / {len(data.y_val)} val / "
        f"{len(data.y_test)} test), MLP 64-H-10, {len(seeds)} seeds, {total} runs"
    )
    start = time.perf_counter()
    for seed in seeds:
        for label, width, config in methods:
            torch.manual_seed(seed)
            model = mlp(64, width, 10)
            result = fit_classifier(
                model, data, config, seed=seed, lr=1e-2, candidate_lr=5e-2, label=label
            )
            record = {"width": width, "dataset": "digits", **result.to_dict()}
            runs.append(record)
            log(
                f"[{len(runs):>2}/{total}] {label:<22} seed {seed}: val {100 * result.val:5.1f}%"
                f"  test {100 * result.test:5.1f}%  params {result.params:>5}  "
                f"{result.epochs:>3} epochs  {result.seconds:4.1f} s"
            )
    atomic_write(out / "results.json", json.dumps(runs).encode())
    log(f"\nall runs: {time.perf_counter() - start:.0f} s\n")
    report(out, log=log)
    return runs


def report(run_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Print the tables and redraw the figure from a saved `results.json`."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise DatasetError(f"no results at {path}: run `perforate demo` or `perforate train` first")
    try:
        runs = json.loads(path.read_text())
        if not isinstance(runs, list) or not all(
            isinstance(r, dict) and {"label", "seed", "history"} <= set(r) for r in runs
        ):
            raise ValueError("not a list of run records")
    except ValueError as exc:
        raise DatasetError(f"{path} is not a results file: {exc}") from exc
    if not runs:  # an empty figure and empty tables would look like a report
        raise DatasetError(
            f"{path} holds no runs (an empty list): run `perforate demo` or `perforate train` "
            "into this directory first"
        )
    control = next((r["label"] for r in runs if r["label"].startswith(CONTROL_PREFIX)), None)
    log(
        "Test accuracy at the best validation epoch (mean ± sd over seeds); 'vs control' is "
        "the paired difference to the restart control with its 95% interval:\n"
    )
    log(summary_table(runs, control=control))
    pb = [r for r in runs if r["label"].startswith("PB")]
    if pb:
        first = min(pb, key=lambda r: r["seed"])
        log(f"\nPB cycles, seed {first['seed']} (cycle 0 is the plain neuron phase):")
        log(cycle_table(first))
    labels = [k for k in (control, *(r["label"] for r in pb[:1])) if k]
    if not labels:  # a run directory of `perforate train`: draw what it holds
        labels = sorted({r["label"] for r in runs})
    path = plot_runs(runs, run_dir / "demo.png", run_title(run_dir, runs), curve_labels=labels)
    log(f"\nresults: {run_dir / 'results.json'}\nfigure:  {path}")
    return path
