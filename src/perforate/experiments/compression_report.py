"""The compression regime's section of docs/benchmarks.md (`benchmarks/results/compression.jsonl`).

PB "pays" for compression only if, at its own parameter count, it beats the distilled
width ladder (the competitor the paper never faced) and the distilled restart control.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from .report import group_by, ladder_at, mean_sd, paired_difference, plot_accuracy, save_figure

COMMAND = "perforate bench --report"
ORDER = ("plain", "kd", "restart", "restart_kd", "pb", "pb_kd")


def _params(r: dict[str, Any]) -> int:
    return r["base_params"] + r["dendrite_params"]


def _ladder(groups, arm: str) -> list[tuple[float, float]]:
    return [
        (statistics.fmean(_params(r) for r in rs), statistics.fmean(r["test"] for r in rs))
        for (m, _), rs in groups.items()
        if m == arm
    ]


def _paired(groups, a: tuple[str, int], b: tuple[str, int]) -> tuple[float, float, int]:
    return paired_difference(
        {r["seed"]: r["test"] for r in groups.get(a, [])},
        {r["seed"]: r["test"] for r in groups.get(b, [])},
    )


def compression_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    groups = group_by(rows, "method", "width")
    out = []
    for (arm, width), rs in sorted(groups.items()):
        if arm not in ("pb", "pb_kd"):
            continue
        distilled = arm == "pb_kd"
        control = "restart_kd" if distilled else "restart"
        d, h, n = _paired(groups, (arm, width), (control, width))
        params = statistics.fmean(_params(r) for r in rs)
        test = statistics.fmean(r["test"] for r in rs)
        gaps = {}
        for ladder in ("plain", "kd"):
            at = ladder_at(_ladder(groups, ladder), params)
            gaps[ladder] = None if at is None else test - at
        beats_control = not math.isnan(h) and d - h > 0
        above = all(g is not None and g >= 0 for g in gaps.values())
        gap_text = ", ".join(
            f"{'outside' if g is None else f'{100 * g:+.2f} against'} the {k} ladder"
            for k, g in gaps.items()
        )
        out.append(
            f"`{arm}` (width {width}, {params:,.0f} parameters) "
            f"{'**pays**' if beats_control and above else 'does not pay'}: "
            f"{100 * d:+.2f} ± {100 * h:.2f} points against `{control}` (n={n}); {gap_text}."
        )
    for width in sorted({w for m, w in groups if m == "kd"}):
        if ("plain", width) in groups:
            d, h, n = _paired(groups, ("kd", width), ("plain", width))
            out.append(
                f"Distillation alone at width {width}: {100 * d:+.2f} ± {100 * h:.2f} points "
                f"against plain training (n={n})."
            )
    return out


def compression_section(rows: list[dict[str, Any]], figure: Path | None = None) -> tuple[str, list]:
    groups = group_by(rows, "method", "width")
    lines = [
        "## compression: PB against distillation (fashion_mnist, MLP 784-H-10)",
        "",
        "A wide teacher (MLP 784-256-10) per seed; students trained on the labels or "
        "distilled from it (T = 4, alpha = 0.5; the teacher trained at learning rate 1e-3, "
        "chosen on validation); PB grown from width 8 on either loss. "
        "PB is compared with each ladder interpolated at its own parameter count.",
        "",
    ]
    if figure is not None:
        lines += [f"![compression](figures/{figure.name})  ", f"*Figure: `{COMMAND}`.*", ""]
    teacher = {r["seed"]: r["teacher_test"] for r in rows if "teacher_test" in r}
    if teacher:
        m, s = mean_sd([100 * v for v in teacher.values()])
        lines += [f"Teachers: test {m:.2f} ± {s:.2f}% ({len(teacher)} seeds).", ""]
    lines += [
        "| arm | width | seeds | params | dend./neuron | val % | test % | time (s, median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, width in sorted(
        groups, key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, k[1])
    ):
        rs = groups[(arm, width)]
        val, test = mean_sd([100 * r["val"] for r in rs]), mean_sd([100 * r["test"] for r in rs])
        lines.append(
            f"| {arm} | {width} | {len(rs)} | {statistics.fmean(_params(r) for r in rs):,.0f} | "
            f"{statistics.fmean(r['dendrites_per_neuron'] for r in rs):.2f} | "
            f"{val[0]:.2f} ± {val[1]:.2f} | {test[0]:.2f} ± {test[1]:.2f} | "
            f"{statistics.median(r['seconds'] for r in rs):.1f} |"
        )
    verdicts = compression_verdicts(rows)
    lines += ["", "In plain words:", "", *[f"- {v}" for v in verdicts], ""]
    return "\n".join(lines), verdicts


def plot_compression(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against parameters: both ladders as lines, the width-8 arms as points."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone

    groups = group_by(rows, "method", "width")
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    for i, arm in enumerate(ORDER):
        keys = sorted(k for k in groups if k[0] == arm)
        if not keys:
            continue
        plot_accuracy(
            ax,
            [statistics.fmean(_params(r) for r in groups[k]) for k in keys],
            [groups[k] for k in keys],
            marker="o",
            ls="-" if arm in ("plain", "kd") else "none",
            color=f"C{i}",
            label=arm,
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters used by the forward pass")
    ax.set_ylabel("test accuracy % (mean ± sd over seeds)")
    ax.set_title("compression: Fashion-MNIST, students of an MLP 784-256-10", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path)
