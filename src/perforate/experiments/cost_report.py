"""docs/run_cost.md: where a run's time goes, and which arm gives the best model for a time.

From the ledgers' run records (per evaluation: cumulative wall seconds, validation and
test scores, phase and event, the controller's best score), per study:

- the time breakdown: the first neuron phase (the plain run), the neuron and dendrite
  phases of the cycles the controller kept, and the cycles it threw away (a retry, or a
  last cycle that did not beat the best). A cycle was kept when the controller's best
  score moved at its end (`best`, recorded per evaluation);
- accuracy against time: per arm, the median over seeds of the test score at the best
  validation score so far, against cumulative wall seconds.
"""

from __future__ import annotations

import bisect
import math
import statistics
from pathlib import Path
from typing import Any

from . import stats
from .bench_report import Studied, cell, family, pts, vs
from .verdict import COST_LIMIT

PARTS = ("first neuron phase", "kept: neuron", "kept: dendrite", "discarded cycles")
CURVE_ARMS = ("plain", "restart", "pb", "pb_cycle_patience", "gd", "pb_patient")
OLD_SCHEDULE = "pb_patient"  # switch_mode='patience': the default before 0.3


def segments(phases: list[list[Any]]) -> list[tuple[str, list[int]]]:
    """A run's evaluations split into phases, [(letter, [indices])]: a phase ends at an
    evaluation whose event is not 'continue'."""
    out: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for i, (letter, event) in enumerate(phases):
        current.append(i)
        if event != "continue":
            out.append((letter, current))
            current = []
    if current:
        out.append((phases[current[0]][0], current))
    return out


def seconds_per_epoch(record: dict[str, Any]) -> list[float]:
    times = [row[0] for row in record["curve"]]
    return [t - s for s, t in zip([0.0, *times], times, strict=False)]


def breakdown(record: dict[str, Any]) -> dict[str, float]:
    """Seconds per part of `PARTS` for one run."""
    secs, phases = seconds_per_epoch(record), record["phases"]
    best = record.get("best")
    parts = dict.fromkeys(PARTS, 0.0)
    pending, held = 0.0, None
    for k, (letter, idx) in enumerate(segments(phases)):
        seconds = sum(secs[i] for i in idx)
        if letter == "d":
            pending += seconds
            continue
        end = idx[-1]
        if k == 0:
            parts["first neuron phase"] += seconds
        elif (best[end] != held) if best else phases[end][1] != "retry":
            parts["kept: neuron"] += seconds
            parts["kept: dendrite"] += pending
        else:
            parts["discarded cycles"] += seconds + pending
        held, pending = (best[end] if best else None), 0.0
    parts["discarded cycles"] += pending  # a dendrite phase the run ended in
    return parts


def best_so_far(record: dict[str, Any], direction: str = "maximize") -> tuple[list, list]:
    """(cumulative seconds, test score at the best validation score so far)."""
    times, scores, best_val, best_test = [], [], None, math.nan
    sign = 1 if direction == "maximize" else -1
    for t, val, test in record["curve"]:
        if best_val is None or sign * val > sign * best_val:
            best_val, best_test = val, test
        times.append(t)
        scores.append(best_test)
    return times, scores


def median_curve(curves: list[tuple[list, list]], grid: list[float]) -> list[float | None]:
    """Median over runs at each grid time (None until every run has its first point; a
    finished run keeps its final score)."""
    out = []
    for t in grid:
        values = []
        for times, scores in curves:
            i = bisect.bisect_right(times, t) - 1
            values.append(scores[i] if i >= 0 else None)
        out.append(None if any(v is None for v in values) else statistics.median(values))
    return out


def _share(parts: list[dict[str, float]], part: str) -> str:
    if not parts:
        return "-"
    return f"{100 * statistics.median(p[part] / max(sum(p.values()), 1e-12) for p in parts):.0f}%"


def cost_section(s: Studied) -> tuple[list[str], str | None]:
    """The page's section for one study, and its one-line verdict."""
    old = s.by_seed(OLD_SCHEDULE)
    names = [a["name"] for a in s.report["arms"] if not a["name"].startswith("ladder@")]
    others = [n for n in names if n not in (OLD_SCHEDULE, "plain")]
    direction, rope = s.report["direction"], s.report["rope"]
    against = family(
        [(n, OLD_SCHEDULE, stats.paired(s.by_seed(n), old, direction)) for n in others if old],
        "test",
        rope,
    )
    by = {c["arm"]: c for c in against}
    cols = ["arm", "width", "seeds", "time vs plain", "epochs", *PARTS, "test %"]
    cols.append(f"test vs {OLD_SCHEDULE} (paired)")
    lines = [
        f"## {s.name}: {s.suite.about}",
        "",
        f"![{s.name} time](figures/cost_{s.name}.png)  ",
        f"*Figure: `perforate bench --report` from `benchmarks/results/{s.name}/runs.jsonl`.*",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for name in names:
        row = s.arm(name)
        runs = [r for r in s.records if r["arm"] == name]
        parts = [breakdown(r) for r in runs]
        c = by.get(name)
        lines.append(
            f"| {name} | {row['width']} | {len(runs)} | {s.cost(name):.1f}x | "
            f"{row['epochs_mean']:.0f} | {' | '.join(_share(parts, p) for p in PARTS)} | "
            f"{pts(row['test_mean'], False)} ± {pts(row['test_sd'], False)} | "
            f"{cell(c)} |"
        )
    verdict = None
    if "pb" in by:
        cost = s.cost("pb")
        within = "within" if cost <= COST_LIMIT else "over"
        verdict = (
            f"**{s.name}**: PB {cost:.1f}x the plain run ({within} {COST_LIMIT:g}x; the old "
            f"schedule {s.cost(OLD_SCHEDULE):.1f}x), test {vs(by['pb'])}."
        )
    return [*lines, ""], verdict


def plot_cost(s: Studied, path: Path) -> None:
    """Left: test score against time per arm; right: where the time goes per arm."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone

    fig = Figure(figsize=(11, 4.2))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    arms = [a for a in CURVE_ARMS if any(r["arm"] == a for r in s.records)]
    for i, arm in enumerate(arms):
        curves = [best_so_far(r, s.report["direction"]) for r in s.records if r["arm"] == arm]
        curves = [c for c in curves if c[0] and c[0][0] > 0]
        if not curves:
            continue
        start, end = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
        grid = [start * (end / start) ** (k / 199) for k in range(200)]
        points = [
            (t, 100 * v)
            for t, v in zip(grid, median_curve(curves, grid), strict=True)
            if v is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), color=f"C{i}", label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds (one thread)")
    ax.set_ylabel("test % at best validation so far (median of seeds)")
    ax.set_title(f"{s.name}: accuracy against time", fontsize=9)
    ax.legend(fontsize=7)
    bottoms = [0.0] * len(arms)
    for j, part in enumerate(PARTS):
        heights = []
        for arm in arms:
            shares = [breakdown(r)[part] for r in s.records if r["arm"] == arm]
            heights.append(statistics.median(shares) if shares else 0.0)
        bx.bar(arms, heights, bottom=bottoms, color=f"C{j}", label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    bx.set_ylabel("median seconds")
    bx.set_title("where the time goes", fontsize=9)
    bx.tick_params(axis="x", labelsize=7, rotation=30)
    bx.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def write_cost_report(studied: list[Studied], docs: Path) -> Path:
    from perforate.files import atomic_write

    sections, verdicts = [], []
    for s in studied:
        if s.arm("pb") is None or s.arm("plain") is None:
            continue
        plot_cost(s, docs / "figures" / f"cost_{s.name}.png")
        text, verdict = cost_section(s)
        sections += text
        verdicts += [verdict] if verdict else []
    head = [
        "# What a run costs",
        "",
        "Generated by `perforate bench --report` from the ledgers in `benchmarks/results/`. "
        "Do not edit by hand.",
        "",
        "Each run's wall time (one thread; training, validation and the controller, per "
        "evaluation; the test-set scoring for the tables excluded) split into: the first "
        "neuron phase (a plain run with early stopping), the neuron and dendrite phases of "
        "cycles the controller kept, and the cycles it threw away (a retry, or a last "
        "cycle that did not beat the best). 'time vs plain' is the median over seeds of "
        "the wall time over the plain run's of the same seed. `pb` is the default schedule "
        "(`switch_mode='budget'`); `pb_patient` the schedule that was the default before "
        "0.3 (`switch_mode='patience'`). Figures: accuracy against time (left) and where "
        "the time goes (right).",
        "",
        "## Verdicts",
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    out = docs / "run_cost.md"
    atomic_write(out, ("\n".join(head + sections) + "\n").encode())
    return out
