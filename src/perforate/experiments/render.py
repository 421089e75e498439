"""A study's report as files: compare.json (structured), compare.md (readable alone) and
compare.png (score against parameters, the ladder as a line; score against wall time).
Everything here is drawn from the report dict; nothing is decided here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from perforate.files import atomic_write


def write_outputs(root: Path, report: dict[str, Any]) -> None:
    atomic_write(root / "compare.json", json.dumps(report, indent=1).encode())
    atomic_write(root / "compare.md", markdown(report).encode())
    figure(report, root / "compare.png")


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _pm(mean: float, sd: float) -> str:
    if isinstance(sd, float) and not math.isnan(sd) and abs(sd) < 1e-9:
        sd = 0.0  # equal scores: float noise, not a spread
    return f"{_f(mean)} ± {_f(sd, 2)}"


def markdown(report: dict[str, Any]) -> str:
    study = report["study"]
    timing = {t["name"]: t for t in report["timing"]["arms"]}
    lines = [
        f"# Study `{study['name']}`: does it pay?",
        "",
        f"**Verdict.** {report['verdict']['sentence']}",
        "",
        f"Winner's model: `{report['verdict']['winner_model']}` in this folder (seed "
        f"{report['verdict']['winner_seed']}, the best validation score of its arm; "
        "`perforate.load(model, path)` into the factory's model at the arm's width).",
        "",
        report["question"],
        "",
        f"Metric `{report['metric']}` ({report['direction']}), rope {report['rope']:g}, "
        f"reference `{report['reference']}`, seeds {report['seeds']}, intervals "
        f"{100 * report['level']:.4g}%.",
        "",
        "## Arms",
        "",
        "| arm | val (mean ± sd) | test (mean ± sd) | params | dendrites kept | epochs "
        "| seconds | cost (x plain) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["arms"]:
        t = timing[r["name"]]
        lines.append(
            f"| {r['name']} | {_pm(r['val_mean'], r['val_sd'])} | "
            f"{_pm(r['test_mean'], r['test_sd'])} | {r['params_mean']:,.0f} | "
            f"{r['dendrites_kept']}/{len(r['runs'])} | {r['epochs_mean']:.1f} | "
            f"{t['seconds_mean']:.1f} | {_f(t['cost'], 3)} |"
        )
    titles = {
        "test": f"Against the reference `{report['reference']}` (test, paired by seed)",
        "equal_params": "Against the width ladder at equal parameters (test)",
        "equal_time": (
            f"At equal wall time: the reference `{report['reference']}` stopped at each "
            "arm's time (test)"
        ),
    }
    pool = report["comparisons"] + report["timing"]["comparisons"]
    for question, title in titles.items():
        rows = [c for c in pool if c["question"] == question]
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "Difference in 'better' units (positive: the arm is better), mean and "
            f"{100 * report['level']:.4g}% interval; p of the paired t-test (Holm-adjusted) "
            "and of the exact sign-flip test; wins of n.",
            "",
            "| arm | vs | mean | interval | p (Holm) | p sign-flip | wins | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in rows:
            lines.append(
                f"| {c['arm']} | {c['reference']} | {_f(c['mean'], 3)} | "
                f"[{_f(c['low'], 3)}, {_f(c['high'], 3)}] | {_f(c['p_adjusted'], 2)} | "
                f"{_f(c['p_perm'], 2)} | {c['wins']}/{c['n']} | **{c['verdict']}** |"
            )
    lines += ["", "## Checks", "", "| check | arm | ok | detail |", "|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(
            f"| {c['check']} | {c['arm']} | {'yes' if c['ok'] else '**no**'} | {c['detail']} |"
        )
    tm = report["timing"]
    lines += [
        "",
        "## Cost",
        "",
        f"The study took {tm['study_seconds']:.0f} s of training "
        f"({_f(tm['study_plain_units'], 3)} plain runs); without shared first phases it "
        f"would have taken {tm['study_seconds_unforked']:.0f} s "
        f"({_f(tm['study_plain_units_unforked'], 3)} plain runs).",
    ]
    if report.get("sequential"):
        s = report["sequential"]
        lines += ["", f"Sequential seeds: looks at {s['looks']}; {s['rule']}; {s['stopped']}."]
    lines += [
        "",
        "Statistics in plain words: each seed trains every arm from the same initial weights "
        "and data order, so differences are taken seed by seed. 'better' means the whole "
        "interval clears the rope and the Holm-adjusted p is below 0.05; 'equivalent' means "
        "the whole interval sits inside the rope; anything else is 'inconclusive'. With "
        "3 seeds the sign-flip p cannot go below 0.25; it is shown as a check, not used.",
        "",
        "Figure: compare.png (drawn by `perforate compare` from compare.json).",
        "",
    ]
    return "\n".join(lines)


def figure(report: dict[str, Any], path: Path) -> Path | None:
    """Test score against parameters (ladder as a line) and against wall seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ModuleNotFoundError:  # pragma: no cover - matplotlib is in the plot extra
        return None
    fig = Figure(figsize=(10, 4))
    ax_p, ax_t = fig.subplots(1, 2)
    timing = {t["name"]: t for t in report["timing"]["arms"]}
    ladder = sorted(
        (r["params_mean"], r["test_mean"], r["test_sd"])
        for r in report["arms"]
        if r["name"] == "plain" or r["name"].startswith("ladder@")
    )
    if len(ladder) >= 2:
        ax_p.plot(
            [p for p, _, _ in ladder],
            [m for _, m, _ in ladder],
            "-o",
            color="0.5",
            label="width ladder (plain)",
        )
    for r in report["arms"]:
        if r["name"].startswith("ladder@"):
            continue
        sd = 0 if math.isnan(r["test_sd"]) else r["test_sd"]
        ax_p.errorbar(
            r["params_mean"], r["test_mean"], yerr=sd, fmt="o", capsize=3, label=r["name"]
        )
        ax_t.errorbar(
            timing[r["name"]]["seconds_mean"],
            r["test_mean"],
            yerr=sd,
            fmt="o",
            capsize=3,
            label=r["name"],
        )
    ax_p.set_xscale("log")
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax_p.xaxis.set_major_formatter(ScalarFormatter())  # 100, 1000: no overlapping 3x10^2
    ax_p.xaxis.set_minor_locator(LogLocator(subs=()))
    ax_p.set_xlabel("parameters")
    ax_t.set_xlabel("wall seconds per run")
    for ax in (ax_p, ax_t):
        ax.set_ylabel(f"test {report['metric']} (mean ± sd)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{report['study']['name']}: {len(report['arms'])} arms, {len(report['seeds'])} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
