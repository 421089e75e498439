"""Turn `benchmarks/results/*.jsonl` into `docs/benchmarks.md` and one figure per suite.

Every statement in the generated page is computed from the recorded runs: whether a
method beats the restart control (paired by seed, 95% interval excluding 0), where it
sits against the plain width ladder at equal parameters (the ladder interpolated in log
parameters), and its wall time relative to the plain run of the same width.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from .bench import CANDIDATE_METHODS, METHODS, SUITES
from .compression_report import compression_section, plot_compression
from .cost_report import write_cost_report
from .report import group_by, ladder_at, mean_sd, paired_difference, plot_accuracy, save_figure
from .transfer_report import plot_transfer, transfer_section

TRANSFER_SUITES = ("transfer", "transfer_quick")
COMPRESSION_SUITES = ("compression", "compression_quick")

COMMAND = "perforate bench --report"


def load_runs(results_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(results_dir).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[path.stem] = rows
    return out


def _params(r):
    return r["base_params"] + r["dendrite_params"]


def suite_section(name: str, rows: list[dict[str, Any]], figure: str):
    """The suite's Markdown, the verdicts that meet the goal, its summary paragraph, and
    per dendrite method and width (method, width, d, half, gap, ratio, seeds): the paired
    difference to the restart control, the gap to the ladder in points, the time ratio."""
    groups = group_by(rows, "method", "width")
    plain = {w: rs for (m, w), rs in groups.items() if m == "plain"}
    ladder = [
        (statistics.fmean(_params(r) for r in rs), statistics.fmean(r["test"] for r in rs))
        for rs in plain.values()
    ]
    plain_secs = {w: {r["seed"]: r["seconds"] for r in rs} for w, rs in plain.items()}
    first = rows[0]
    lines = [f"## {name}: {first['dataset']}, {first['model']}", ""]
    lines.append(f"![{name}](figures/bench_{name}.png)  ")
    lines.append(f"*Figure: `{COMMAND}` from `benchmarks/results/{name}.jsonl`.*")
    lines.append("")
    lines.append(
        "| method | width | seeds | dend./neuron | params | val % | test % | "
        "test vs restart (paired, 95% CI) | vs ladder at equal params | time vs plain "
        "| epochs |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    summary_rows: list[tuple] = []
    order = sorted(
        groups, key=lambda k: (k[1], list(METHODS).index(k[0]) if k[0] in METHODS else 99)
    )
    for method, width in order:
        rs = groups[(method, width)]
        val = mean_sd([100 * r["val"] for r in rs])
        test = mean_sd([100 * r["test"] for r in rs])
        params = statistics.fmean(_params(r) for r in rs)
        ctrl = groups.get(("restart", width))
        vs = "-"
        d = half = None
        if ctrl and method not in ("restart", "plain"):
            d, half, n = paired_difference(
                {r["seed"]: r["test"] for r in rs}, {r["seed"]: r["test"] for r in ctrl}
            )
            vs = f"{100 * d:+.2f} ± {100 * half:.2f} (n={n})"
        lad = ladder_at(ladder, params)
        gap = None if lad is None or method == "plain" else test[0] - 100 * lad
        gap_s = "-" if method == "plain" else ("outside ladder" if gap is None else f"{gap:+.2f}")
        ratios = [
            r["seconds"] / plain_secs[width][r["seed"]]
            for r in rs
            if width in plain_secs and r["seed"] in plain_secs[width]
        ]
        ratio = statistics.median(ratios) if ratios else None
        lines.append(
            f"| {method} | {width} | {len(rs)} | "
            f"{statistics.fmean(r['dendrites_per_neuron'] for r in rs):.2f} | {params:,.0f} | "
            f"{val[0]:.2f} ± {val[1]:.2f} | {test[0]:.2f} ± {test[1]:.2f} | {vs} | {gap_s} | "
            f"{'-' if ratio is None else f'{ratio:.1f}x'} | "
            f"{statistics.fmean(r['epochs'] for r in rs):.0f} |"
        )
        if d is not None:
            verdicts.append(_verdict(method, width, d, half, gap, ratio))
            summary_rows.append((method, width, d, half, gap, ratio, n))
    lines.append("")
    lines.append("In plain words:")
    lines.append("")
    lines += [f"- {v}" for v in verdicts] or ["- no dendrite method recorded yet"]
    lines.append("")
    goal = [v for v in verdicts if v.endswith("**meets the goal**.")]
    suite_summary = _summary(name, first, summary_rows, groups)
    return "\n".join(lines), goal, suite_summary, summary_rows


def _summary(name, first, rows, groups) -> str:
    """One paragraph per suite: the answers to the four questions, from the numbers."""
    if not rows:
        return f"- **{name}**: no dendrite method recorded yet."
    beats = [r for r in rows if not math.isnan(r[3]) and r[2] - r[3] > 0]
    loses = [r for r in rows if not math.isnan(r[3]) and r[2] + r[3] < 0]
    best = max(rows, key=lambda r: r[2])
    on_ladder = [r for r in rows if r[4] is not None and r[4] >= 0]
    closest = max((r for r in rows if r[4] is not None), key=lambda r: r[4], default=None)
    pb_vs_gd = []
    for (m, w), rs in groups.items():
        if m == "pb" and ("gd", w) in groups:
            d, h, _ = paired_difference(
                {r["seed"]: r["test"] for r in rs},
                {r["seed"]: r["test"] for r in groups[("gd", w)]},
            )
            pb_vs_gd.append(f"{100 * d:+.2f} ± {100 * h:.2f} points at width {w}")
    times = sorted(r[5] for r in rows if r[5] is not None)
    text = (
        f"- **{name}** ({first['dataset']}, {first['model']}): "
        f"{len(beats)} of {len(rows)} dendrite runs beat the restart control outside "
        f"noise ({', '.join(f'`{m}` w{w}' for m, w, *_ in beats) or 'none'}), "
        f"{len(loses)} lose to it; the largest mean gain is `{best[0]}` at width "
        f"{best[1]}, {100 * best[2]:+.2f} ± {100 * best[3]:.2f} points. "
    )
    if pb_vs_gd:
        text += f"PB minus GD dendrites (paired): {'; '.join(pb_vs_gd)}. "
    if on_ladder:
        text += (
            "On or above the width ladder: "
            + ", ".join(f"`{m}` w{w} ({g:+.2f})" for m, w, _, _, g, *_ in on_ladder)
            + ". "
        )
    elif closest is not None:
        text += (
            f"All below the width ladder; closest `{closest[0]}` at width {closest[1]} "
            f"({closest[4]:+.2f} points). "
        )
    if times:
        text += f"Wall time {times[0]:.1f}x to {times[-1]:.1f}x the plain run."
    return text


def _verdict(method, width, d, half, gap, ratio) -> str:
    if math.isnan(half):
        beat = f"{100 * d:+.2f} points against the restart control (one seed: no interval)"
        beats = False
    elif d - half > 0:
        beat = f"**beats** the restart control by {100 * d:.2f} ± {100 * half:.2f} points"
        beats = True
    elif d + half < 0:
        beat = f"**loses** to the restart control by {-100 * d:.2f} ± {100 * half:.2f} points"
        beats = False
    else:
        beat = (
            f"is indistinguishable from the restart control ({100 * d:+.2f} ± "
            f"{100 * half:.2f} points)"
        )
        beats = False
    if gap is None:
        lad = "its parameter count is outside the width ladder"
        on_ladder = False
    else:
        on_ladder = gap >= 0
        lad = f"{'on or above' if on_ladder else 'below'} the width ladder by {abs(gap):.2f} points"
    cost = "" if ratio is None else f", at {ratio:.1f}x the plain run's wall time"
    cheap = ratio is not None and ratio <= 3
    tail = " — **meets the goal**." if beats and on_ladder and cheap else "."
    return f"`{method}` at width {width} {beat}; {lad}{cost}{tail}"


def pb_lines(
    rows: list[dict[str, Any]], cells: list[tuple], methods: tuple[str, ...] = ("pb",)
) -> list[str]:
    """Per width of each of `methods`: against the restart control and the width ladder,
    and its cost, from the cells `suite_section` computed, plus how many runs kept
    dendrites; a variant of PB is also compared with PB itself (paired)."""
    groups = group_by(rows, "method", "width")
    out = []
    for method, width, d, half, gap, ratio, n in cells:
        if method not in methods:
            continue
        rs = groups[(method, width)]
        kept = sum(r.get("dendrites", int(r["dendrite_params"] > 0)) > 0 for r in rs)
        pays = d - half > 0 and gap is not None and gap >= 0
        vs_pb = ""
        if method != "pb" and ("pb", width) in groups:
            dp, hp, npb = paired_difference(
                {r["seed"]: r["test"] for r in rs},
                {r["seed"]: r["test"] for r in groups[("pb", width)]},
            )
            vs_pb = f"; {100 * dp:+.2f} ± {100 * hp:.2f} against PB (n={npb})"
        label = "PB" if method == "pb" else f"`{method}`"
        out.append(
            f"{label} at width {width} {'**pays**' if pays else 'does not pay'}: "
            f"{100 * d:+.2f} ± {100 * half:.2f} points against the restart control (n={n}), "
            + ("outside the ladder" if gap is None else f"{gap:+.2f} against the ladder")
            + vs_pb
            + f"; dendrites kept in {kept} of {len(rs)} runs"
            + (f"; {ratio:.1f}x the plain run's time." if ratio is not None else ".")
        )
    return out


def when_to_use(when: dict[str, list[str]]) -> list[str]:
    """The page's top section: per regime, whether PB paid, from the numbers below."""
    titles = {
        "scratch": "From scratch, with the whole training set",
        "scarce": "From scratch, with 1%, 3% or 10% of the training set",
        "transfer": "Growing into a trained model (few labels, trunk frozen)",
        "compression": "Compression: a small model from a wide one",
        "candidates": "Other candidates (restricted fan-in, closed-form start, output error)",
    }
    lines = [
        "## When to use dendrites",
        "",
        "PB 'pays' where it beats every control of its regime outside seed noise (paired 95% "
        "interval above zero): from scratch the restart control and the width ladder at "
        "equal parameters; in transfer the head alone, its restart schedule, fine-tuning, "
        "LoRA and extra neurons at equal parameters; in compression the distilled width "
        "ladder and the distilled restart control. The other candidates (restricted "
        "fan-in, a closed-form start, the network output's error) face their suite's "
        "controls and are also compared with PB. Regimes not measured yet are not listed.",
        "",
    ]
    for key, title in titles.items():
        if when[key]:
            lines += [f"**{title}.**", "", *[f"- {v}" for v in when[key]], ""]
    verdicts = [v for vs in when.values() for v in vs if "PB" in v or "`pb" in v]
    paid = [v for v in verdicts if "**pays**" in v or "**beats every control**" in v]
    lines += [
        f"**In short:** PB paid in {len(paid)} of {len(verdicts)} comparisons above."
        + (
            " Where it did not, the control that matched or beat it is the better tool: "
            "a wider layer (or the restart schedule) from scratch, fine-tuning, LoRA or "
            "extra neurons to adapt a trained model, the plain or distilled ladder for a "
            "small model."
            if len(paid) < len(verdicts)
            else ""
        ),
        "",
    ]
    return lines


def plot_suite(name: str, rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone

    groups = group_by(rows, "method", "width")
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    plain = sorted((w, rs) for (m, w), rs in groups.items() if m == "plain")
    if plain:
        xs = [statistics.fmean(_params(r) for r in rs) for _, rs in plain]
        ms = plot_accuracy(
            ax, xs, [rs for _, rs in plain], color="black", marker="o", label="plain width ladder"
        )
        for x, (m, _), (w, _) in zip(xs, ms, plain, strict=True):
            ax.annotate(f"{w}", (x, m), fontsize=7, textcoords="offset points", xytext=(4, -10))
    markers = "sD^vP*X"
    methods = [m for m in METHODS if m != "plain"]
    for i, method in enumerate(methods):
        pts = sorted((w, rs) for (m, w), rs in groups.items() if m == method)
        for j, (_w, rs) in enumerate(pts):
            plot_accuracy(
                ax,
                [statistics.fmean(_params(r) for r in rs)],
                [rs],
                marker=markers[i % len(markers)],
                ls="none",
                color=f"C{i}",
                label=method if j == 0 else None,
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters used by the forward pass")
    ax.set_ylabel("test accuracy % at best validation (mean ± sd)")
    first = rows[0]
    ax.set_title(f"{name}: {first['dataset']}, {first['model']}", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_report(
    results_dir: Path = Path("benchmarks/results"), docs_dir: Path = Path("docs")
) -> Path:
    runs = load_runs(results_dir)
    sections, goal, summaries = [], [], []
    when: dict[str, list[str]] = {
        "scratch": [],
        "scarce": [],
        "transfer": [],
        "compression": [],
        "candidates": [],
    }
    for name, rows in runs.items():
        if name not in SUITES and name != "quick":
            continue
        fig = docs_dir / "figures" / f"bench_{name}.png"
        plot_suite(name, rows, fig)
        text, met, summary, cells = suite_section(name, rows, str(fig))
        sections.append(text)
        summaries.append(summary)
        goal += [f"{name}: {m}" for m in met]
        regime = "scarce" if name in SUITES and SUITES[name].data_per_seed else "scratch"
        when[regime] += [f"**{name}**: {line}" for line in pb_lines(rows, cells)]
        when["candidates"] += [
            f"**{name}**: {line}" for line in pb_lines(rows, cells, CANDIDATE_METHODS)
        ]
    regimes = [
        ("transfer", TRANSFER_SUITES, plot_transfer, transfer_section),
        ("compression", COMPRESSION_SUITES, plot_compression, compression_section),
    ]
    for regime, names, plot, section in regimes:
        for name in (n for n in names if n in runs):
            fig = docs_dir / "figures" / f"bench_{name}.png"
            plot(runs[name], fig)
            text, verdicts = section(runs[name], fig)
            sections.append(text)
            when[regime] += [f"**{name}**: {v}" for v in verdicts]
    head = [
        "# Benchmarks: when do dendrites earn their parameters?",
        "",
        f"Generated by `{COMMAND}` from the run records in `benchmarks/results/` "
        "(one JSON line per run, made by `perforate bench --suite NAME`). Do not edit by "
        "hand.",
        "",
        "Every method on a dataset shares data splits, seeds and epoch rules. Scores are "
        "test accuracy at the best validation epoch (the model the controller keeps); "
        "settings were chosen on validation data only (`docs/pb_settings.md`). 'test vs "
        "restart' is the mean paired difference to the restart control of the same width "
        "over common seeds, with a 95% t-interval; 'vs ladder' compares to the plain width "
        "ladder interpolated (in log parameters) at the method's parameter count; 'time vs "
        "plain' is the median per-seed ratio of wall time to the plain run of the same "
        "width (one thread per run).",
        "",
        "Methods:",
        "",
        *[f"- `{m}`: {d.description}" for m, d in METHODS.items()],
        "",
        "## The goal",
        "",
        "A PB variant that beats the restart control outside seed noise, lies on or above "
        "the width ladder at equal parameters, and costs at most 3x the plain run's time.",
        "",
        ("Met by: " + "; ".join(goal))
        if goal
        else "**Not met by any recorded variant.** The sections below show how far each came.",
        "",
        *when_to_use(when),
        "## Summary, per dataset",
        "",
        *summaries,
        "",
    ]
    page = "\n".join(head + sections) + "\n"
    out = docs_dir / "benchmarks.md"
    out.write_text(page)
    write_cost_report({n: r for n, r in runs.items() if n in SUITES or n == "quick"}, docs_dir)
    return out
