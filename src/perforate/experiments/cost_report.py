"""Where a run's time goes, and which method gives the best model for a given time.

From the benchmark records (`benchmarks/results/*.jsonl`, one per run with per-evaluation
wall seconds) this writes `docs/run_cost.md` and two figures per suite:

- the time breakdown: first neuron phase (the plain run), later neuron phases and
  dendrite phases of the cycles that were kept, cycles that were thrown away (a retry or
  a last cycle that did not beat the best), and the validation passes;
- accuracy against time: per method, the median over seeds of the test accuracy at the
  best validation score so far, against cumulative wall seconds ("given T seconds, which
  method gives the best model?").
"""

from __future__ import annotations

import bisect
import statistics
from pathlib import Path
from typing import Any

from perforate import DendriteConfig
from perforate.switching import Improvement

from .report import group_by, mean_sd, paired_difference, save_figure

COMMAND = "perforate bench --report"
PARTS = ("first neuron phase", "kept: neuron", "kept: dendrite", "discarded cycles", "evaluation")
CURVE_METHODS = ("plain", "restart", "pb", "pb_patient", "gd", "pb_epochs")
# Whether a cycle beat the accepted score, as the controller decides it (with the default
# margin: no suite changes improvement_rel or improvement_abs).
ACCEPTS = Improvement.from_config(DendriteConfig())


def segments(phases: list[list[Any]]) -> list[tuple[str, list[int]]]:
    """Split a run's evaluations into phases: [(letter, [row indices])] in order.

    A phase ends at a row whose event is not 'continue'; the letter is 'n' or 'd'."""
    out: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for i, (letter, _score, event) in enumerate(phases):
        current.append(i)
        if event != "continue":
            out.append((letter, current))
            current = []
    if current:
        out.append((phases[current[0]][0], current))
    return out


def breakdown(row: dict[str, Any]) -> dict[str, float] | None:
    """Seconds per part of `PARTS` for one recorded run (None for records without
    per-evaluation times)."""
    secs, evals, phases = row.get("epoch_seconds"), row.get("eval_seconds"), row["phases"]
    if not secs or len(secs) != len(phases):
        return None
    parts = dict.fromkeys(PARTS, 0.0)
    parts["evaluation"] = sum(evals)
    train = [s - e for s, e in zip(secs, evals, strict=True)]
    segs = segments(phases)
    accepted = None
    pending_dendrite = 0.0
    for k, (letter, idx) in enumerate(segs):
        seconds = sum(train[i] for i in idx)
        if letter == "d":
            pending_dendrite += seconds
            continue
        best = max(phases[i][1] for i in idx)
        if k == 0:
            parts["first neuron phase"] += seconds
            accepted = best
        elif ACCEPTS.better(best, accepted):
            parts["kept: neuron"] += seconds
            parts["kept: dendrite"] += pending_dendrite
            accepted = best
        else:
            parts["discarded cycles"] += seconds + pending_dendrite
        pending_dendrite = 0.0
    parts["discarded cycles"] += pending_dendrite  # a dendrite phase the run ended in
    return parts


def best_so_far(row: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(cumulative seconds, test accuracy at the best validation score so far)."""
    secs, tests, phases = row.get("epoch_seconds"), row.get("test_by_epoch"), row["phases"]
    if not secs or not tests or len(tests) != len(phases):
        return None
    times, accs, t, best_val, best_test = [], [], 0.0, -1.0, 0.0
    for s, test, (_, val, _) in zip(secs, tests, phases, strict=True):
        t += s
        if val > best_val:
            best_val, best_test = val, test
        times.append(t)
        accs.append(best_test)
    return times, accs


def _at(curve: tuple[list[float], list[float]], t: float) -> float | None:
    times, accs = curve
    i = bisect.bisect_right(times, t) - 1
    return accs[i] if i >= 0 else None


def median_curve(curves: list[tuple[list[float], list[float]]], grid: list[float]) -> list:
    """Median over runs at each grid time (None until every run has its first point;
    a finished run keeps its final accuracy)."""
    out = []
    for t in grid:
        values = [_at(c, t) for c in curves]
        out.append(None if any(v is None for v in values) else statistics.median(values))
    return out


def cost_section(name: str, rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The page's section for one suite, and its one-line verdict."""
    groups = group_by(rows, "method", "width")
    widths = sorted({w for (m, w) in groups if m == "pb"})
    first = rows[0]
    lines = [f"## {name}: {first['dataset']}, {first['model']}", ""]
    lines.append(f"![{name} time](figures/cost_{name}.png)  ")
    lines.append(f"*Figure: `{COMMAND}` from `benchmarks/results/{name}.jsonl`.*")
    lines.append("")
    lines.append(
        "| method | width | seeds | time vs plain (median, range) | epochs | "
        + " | ".join(PARTS)
        + " | test % | test vs pb_epochs (paired, 95% CI) |"
    )
    lines.append("|---|---|---|---|---|" + "---|" * len(PARTS) + "---|---|")
    verdicts = []
    for width in widths:
        plain = {r["seed"]: r["seconds"] for r in groups.get(("plain", width), [])}
        old = {r["seed"]: r["test"] for r in groups.get(("pb_epochs", width), [])}
        for method in CURVE_METHODS + tuple(
            sorted({m for (m, w) in groups if w == width} - set(CURVE_METHODS))
        ):
            rs = groups.get((method, width))
            if not rs:
                continue
            ratios = sorted(r["seconds"] / plain[r["seed"]] for r in rs if r["seed"] in plain)
            ratio = statistics.median(ratios) if ratios else None
            shares = [b for b in (breakdown(r) for r in rs) if b is not None]
            part_cells = []
            for part in PARTS:
                if not shares:
                    part_cells.append("-")
                    continue
                frac = statistics.median(b[part] / max(sum(b.values()), 1e-12) for b in shares)
                part_cells.append(f"{100 * frac:.0f}%")
            test = mean_sd([100 * r["test"] for r in rs])
            vs = "-"
            if old and method != "pb_epochs" and method != "plain":
                d, half, n = paired_difference({r["seed"]: r["test"] for r in rs}, old)
                vs = f"{100 * d:+.2f} ± {100 * half:.2f} (n={n})"
                if method == "pb":
                    below = d + half < 0
                    verdicts.append(
                        f"**{name}** w{width}: PB {ratio:.1f}x the plain run "
                        f"({'within' if ratio <= 3 else 'over'} 3x; the old schedule "
                        f"{_median_ratio(groups, 'pb_epochs', width, plain)}), test "
                        f"{100 * d:+.2f} ± {100 * half:.2f} points against the old schedule "
                        f"({'below' if below else 'not below'} it beyond seed noise)."
                    )
            span = f"{ratio:.1f}x ({ratios[0]:.1f}-{ratios[-1]:.1f})" if ratios else "-"
            lines.append(
                f"| {method} | {width} | {len(rs)} | {span} | "
                f"{statistics.fmean(r['epochs'] for r in rs):.0f} | {' | '.join(part_cells)} | "
                f"{test[0]:.2f} ± {test[1]:.2f} | {vs} |"
            )
    lines.append("")
    return "\n".join(lines), verdicts


def _median_ratio(groups, method, width, plain) -> str:
    rs = groups.get((method, width), [])
    ratios = [r["seconds"] / plain[r["seed"]] for r in rs if r["seed"] in plain]
    return f"{statistics.median(ratios):.1f}x" if ratios else "not recorded"


def plot_cost(name: str, rows: list[dict[str, Any]], path: Path) -> None:
    """Left: accuracy against time per method; right: the time breakdown per method."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone

    groups = group_by(rows, "method", "width")
    width = min(w for (m, w) in groups if m == "pb")
    fig = Figure(figsize=(11, 4.2))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    methods = [m for m in CURVE_METHODS if (m, width) in groups]
    for i, method in enumerate(methods):
        curves = [c for c in (best_so_far(r) for r in groups[(method, width)]) if c]
        if not curves:
            continue
        end = max(c[0][-1] for c in curves)
        start = min(c[0][0] for c in curves)
        grid = [start * (end / start) ** (k / 199) for k in range(200)]
        med = median_curve(curves, grid)
        pts = [(t, 100 * v) for t, v in zip(grid, med, strict=True) if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=f"C{i}", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds (one thread)")
    ax.set_ylabel("test % at best validation so far (median of seeds)")
    ax.set_title(f"{name}, width {width}: accuracy against time", fontsize=9)
    ax.legend(fontsize=7)
    bottoms = [0.0] * len(methods)
    for j, part in enumerate(PARTS):
        heights = []
        for method in methods:
            shares = [b for b in (breakdown(r) for r in groups[(method, width)]) if b]
            heights.append(statistics.median(b[part] for b in shares) if shares else 0.0)
        bx.bar(methods, heights, bottom=bottoms, color=f"C{j}", label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    bx.set_ylabel("median seconds")
    bx.set_title("where the time goes", fontsize=9)
    bx.tick_params(axis="x", labelsize=7, rotation=30)
    bx.legend(fontsize=6)
    save_figure(fig, path)


def write_cost_report(runs: dict[str, list[dict[str, Any]]], docs_dir: Path) -> Path:
    sections, verdicts = [], []
    for name, rows in runs.items():
        if not any(r["method"] == "pb" for r in rows):
            continue
        plot_cost(name, rows, docs_dir / "figures" / f"cost_{name}.png")
        text, verdict = cost_section(name, rows)
        sections.append(text)
        verdicts += verdict
    head = [
        "# What a run costs",
        "",
        f"Generated by `{COMMAND}` from the run records in `benchmarks/results/`. Do not "
        "edit by hand.",
        "",
        "Each run's wall time (one thread; test-set scoring for the tables excluded) split "
        "into: the first neuron phase (a plain run with early stopping), the neuron and "
        "dendrite phases of cycles that were kept, the cycles thrown away (a retry, or a "
        "last cycle that did not beat the best), and the validation passes. 'time vs "
        "plain' is the median over seeds of the run's time over the plain run of the same "
        "width and seed. `pb` is the default schedule (`switch_mode='budget'`); "
        "`pb_epochs` the schedule that was the default before 0.3 (`switch_mode="
        "'patience'`: patience-10 neuron phases, dendrite phases of whole epochs). "
        "Figures: accuracy against time (left) and where the time goes (right).",
        "",
        "## Verdicts",
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    out = docs_dir / "run_cost.md"
    out.write_text("\n".join(head + sections) + "\n")
    return out
