"""`perforate report RUN_DIR`: the tables and the figure of a run folder's `results.json`
(what `perforate train` writes), drawn again. (`perforate demo` is a compare study: its
report is `compare.md` in its folder.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .datasets import DatasetError
from .report import cycle_table, plot_runs, run_title, summary_table

CONTROL_PREFIX = "restart control"


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
