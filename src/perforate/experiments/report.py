"""Tables and the figure of `perforate train`'s run folders (`perforate report`): lists
of run records with their history."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .stats import paired


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def group(runs: Sequence[dict[str, Any]], key: str = "label") -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r[key], []).append(r)
    return out


def summary_table(runs: Sequence[dict[str, Any]], control: str | None = None) -> str:
    """One row per label: mean ± sd of validation and test accuracy (percent), params, cost."""
    groups = group(runs)
    ctrl = {r["seed"]: r["test"] for r in groups.get(control, [])} if control else {}
    head = (
        f"{'method':<22}{'seeds':>6}{'dend/neuron':>12}{'params':>9}{'val %':>14}"
        f"{'test %':>14}{'vs control':>18}{'epochs':>8}{'sec':>7}"
    )
    lines = [head, "-" * len(head)]
    for label, rs in groups.items():
        val = mean_sd([100 * r["val"] for r in rs])
        test = mean_sd([100 * r["test"] for r in rs])
        params = statistics.fmean(r["base_params"] + r["dendrite_params"] for r in rs)
        dpn = statistics.fmean(r["dendrites_per_neuron"] for r in rs)
        if ctrl and label != control:
            p = paired({r["seed"]: r["test"] for r in rs}, ctrl, "maximize")
            vs = f"{100 * p.mean:+.2f} ± {100 * (p.high - p.mean):.2f}"
        else:
            vs = "-"
        lines.append(
            f"{label:<22}{len(rs):>6}{dpn:>12.2f}{params:>9.0f}"
            f"{val[0]:>8.2f} ± {val[1]:4.2f}{test[0]:>8.2f} ± {test[1]:4.2f}{vs:>18}"
            f"{statistics.fmean(r['epochs'] for r in rs):>8.0f}"
            f"{statistics.fmean(r['seconds'] for r in rs):>7.1f}"
        )
    return "\n".join(lines)


def cycle_table(run: dict[str, Any]) -> str:
    """Per cycle of one run: dendrites, parameters, best validation and its test score."""
    from .loop import RunRecord

    result = RunRecord.from_dict(run)
    lines = [f"{'cycle':>5}{'dendrites':>11}{'params':>9}{'val %':>9}{'test %':>9}{'epoch':>7}"]
    for c in result.cycles():
        lines.append(
            f"{c['cycle']:>5}{c['dendrites']:>11}{c['params']:>9}"
            f"{100 * c['val']:>9.2f}{100 * c['test']:>9.2f}{c['epoch']:>7}"
        )
    return "\n".join(lines)


def plot_accuracy(
    ax: Any, xs: Sequence[float], groups: Sequence[Sequence[dict[str, Any]]], **style: Any
) -> list[tuple[float, float]]:
    """One error-bar series: test accuracy % (mean ± sd over each group's runs) at `xs`;
    returns the (mean, sd) pairs. The one way every report figure draws accuracy."""
    stats = [mean_sd([100 * r["test"] for r in rs]) for rs in groups]
    ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, **style)
    return stats


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Lay out and write a figure, making its folder."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_runs(
    runs: Sequence[dict[str, Any]],
    path: str | Path,
    title: str,
    curve_labels: Sequence[str],
    ladder_prefix: str = "plain",
) -> Path:
    """Two panels: validation score over epochs with phase switches marked, and test
    accuracy against parameters with the plain width ladder as a line."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone

    groups = group(runs)
    fig = Figure(figsize=(13, 4.8))
    ax1, ax2 = fig.subplots(1, 2)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(curve_labels):
        rs = groups.get(label)
        if not rs:
            continue
        run = min(rs, key=lambda r: r["seed"])
        hist = run["history"]
        epochs = [h["epoch"] for h in hist]
        ax1.plot(
            epochs,
            [100 * h["score"] for h in hist],
            color=colours[i % len(colours)],
            label=f"{label} (seed {run['seed']})",
            lw=1.2,
        )
        for h in hist:
            if h["phase"] == "dendrite":
                ax1.axvspan(
                    h["epoch"] - 1, h["epoch"], color=colours[i % len(colours)], alpha=0.12, lw=0
                )
            if h["event"] not in ("continue",):
                ax1.axvline(h["epoch"], color=colours[i % len(colours)], ls=":", lw=0.8)
    tail = [100 * h["score"] for r in runs if r["label"] in curve_labels for h in r["history"][5:]]
    if tail:  # the first epochs' climb would flatten everything after it
        low, high = min(tail), max(tail)
        ax1.set_ylim(low - 0.1 * (high - low + 1), high + 0.1 * (high - low + 1))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation accuracy %")
    ax1.set_title("validation score; dotted: phase switches, shaded: dendrite phases")
    ax1.legend(fontsize=8)
    ladder = sorted(
        (k for k in groups if k.startswith(ladder_prefix)),
        key=lambda k: statistics.fmean(r["base_params"] for r in groups[k]),
    )
    if ladder:
        xs = [
            statistics.fmean(r["base_params"] + r["dendrite_params"] for r in groups[k])
            for k in ladder
        ]
        ms = plot_accuracy(
            ax2,
            xs,
            [groups[k] for k in ladder],
            color="black",
            marker="o",
            label="plain width ladder",
        )
        for x, m, k in zip(xs, ms, ladder, strict=True):
            ax2.annotate(
                k.replace(ladder_prefix, "").strip(" ()"),
                (x, m[0]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
            )
    others = [k for k in groups if k not in ladder]
    for i, k in enumerate(others):
        rs = groups[k]
        x = statistics.fmean(r["base_params"] + r["dendrite_params"] for r in rs)
        plot_accuracy(
            ax2, [x], [rs], marker="s", ls="none", color=colours[(i + 3) % len(colours)], label=k
        )
    ax2.set_xscale("log")
    ax2.set_xlabel("parameters used by the forward pass")
    ax2.set_ylabel("test accuracy % (mean ± sd over seeds)")
    ax2.set_title("accuracy against parameters")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def run_title(run_dir: str | Path, runs: Sequence[dict[str, Any]]) -> str:
    """A figure title from what the runs are: the run directory, data sets and seeds."""
    data = sorted({str(r["dataset"]) for r in runs if r.get("dataset")})
    seeds = len({r.get("seed") for r in runs})
    return (
        f"{Path(run_dir).name}: {', '.join(data) or 'unknown data'}, {len(runs)} runs, "
        f"{seeds} seed{'s' if seeds != 1 else ''}"
    )
