"""The transfer regime's section of docs/benchmarks.md, from `benchmarks/results/transfer.jsonl`.

Per number of labels per class: every arm's accuracy, its parameters, and PB's paired
difference to it (95% t-interval over seeds). PB "pays" at a number of labels only if it
beats every other arm outside seed noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .report import group_by, mean_sd, paired_difference, plot_accuracy, save_figure
from .transfer import ARMS

COMMAND = "perforate bench --report"


# The arms without dendrites that a dendrite arm must beat: for PB those at its budget;
# for small-fan-in PB also LoRA at its own (much smaller) budget.
CONTROLS = ("head", "head_restart", "finetune", "lora", "wider")
DENDRITE_ARMS = {
    "pb": ("PB", CONTROLS),
    "pb_sparse": ("PB with fan-in 8", (*CONTROLS, "lora_small")),
}


def pb_against(
    rows: list[dict[str, Any]], shots: int, arm: str = "pb", others: tuple[str, ...] | None = None
) -> dict[str, tuple[float, float, int]]:
    """`arm` minus each other arm (or each of `others`) at `shots`: (mean, half-width,
    seeds), in accuracy units."""
    groups = group_by(rows, "method", "shots")
    mine = {r["seed"]: r["test"] for r in groups.get((arm, shots), [])}
    out = {}
    for (other, k), rs in sorted(groups.items()):
        wanted = other != arm if others is None else other in others
        if k == shots and wanted and mine:
            out[other] = paired_difference(mine, {r["seed"]: r["test"] for r in rs})
    return out


def verdict(shots: int, diffs: dict[str, tuple[float, float, int]], label: str = "PB") -> str:
    beats = [a for a, (d, h, _) in diffs.items() if d - h > 0]
    loses = [a for a, (d, h, _) in diffs.items() if d + h < 0]
    level = [a for a in diffs if a not in beats and a not in loses]
    if diffs and len(beats) == len(diffs):
        head = f"{shots} labels per class: {label} **beats every control** outside seed noise"
    else:
        head = f"{shots} labels per class: {label} does not beat every control"
    parts = []
    for name, arms in (("beats", beats), ("level with", level), ("**loses** to", loses)):
        if arms:
            detail = ", ".join(
                f"`{a}` ({100 * diffs[a][0]:+.2f} ± {100 * diffs[a][1]:.2f})" for a in arms
            )
            parts.append(f"{name} {detail}")
    return head + ("; " + "; ".join(parts) if parts else "") + "."


def transfer_section(rows: list[dict[str, Any]], figure: Path | None = None) -> tuple[str, list]:
    """Markdown for the regime, and its verdict lines."""
    groups = group_by(rows, "method", "shots")
    first = rows[0]
    lines = [
        f"## transfer: growing into a trained model ({first['dataset']}, {first['model']})",
        "",
        "Per seed a source MLP is trained on classes 0-4 (plain, early stopping); each arm "
        "adapts it to classes 5-9 from few labels with a fresh head. `lora` (the `peft` "
        "library) and `wider` are sized to what one dendrite per neuron adds; `pb` and "
        "`gd` add it only where a cycle is kept. 'PB minus arm' is the paired difference "
        "over seeds with its 95% interval; 'time' is the median ratio to `head`.",
        "",
    ]
    if figure is not None:
        lines += [f"![transfer](figures/{figure.name})  ", f"*Figure: `{COMMAND}`.*", ""]
    source = [r["source_test"] for r in rows if "source_test" in r]
    if source:
        m, s = mean_sd([100 * v for v in {r["seed"]: r["source_test"] for r in rows}.values()])
        lines += [f"Source models (classes 0-4): test {m:.2f} ± {s:.2f}%.", ""]
    lines.append(
        "| labels/class | arm | seeds | params | trainable | dend./neuron | val % | test % | "
        "PB minus arm (paired, 95% CI) | time vs head |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    arms_order = list(ARMS)
    for shots in sorted({k for _, k in groups}):
        diffs = pb_against(rows, shots)
        head = {r["seed"]: r["seconds"] for r in groups.get(("head", shots), [])}
        present = [a for a in arms_order if (a, shots) in groups]
        present += sorted({a for a, k in groups if k == shots} - set(present))
        for arm in present:
            rs = groups[(arm, shots)]
            val, test = (
                mean_sd([100 * r["val"] for r in rs]),
                mean_sd([100 * r["test"] for r in rs]),
            )
            params = statistics.fmean(r["base_params"] + r["dendrite_params"] for r in rs)
            trainable = statistics.fmean(r.get("trainable_params", 0) for r in rs)
            ratios = [r["seconds"] / head[r["seed"]] for r in rs if r["seed"] in head]
            d = diffs.get(arm)
            vs = "-" if d is None else f"{100 * d[0]:+.2f} ± {100 * d[1]:.2f} (n={d[2]})"
            time = f"{statistics.median(ratios):.1f}x" if ratios else "-"
            lines.append(
                f"| {shots} | {arm} | {len(rs)} | {params:,.0f} | {trainable:,.0f} | "
                f"{statistics.fmean(r['dendrites_per_neuron'] for r in rs):.2f} | "
                f"{val[0]:.2f} ± {val[1]:.2f} | {test[0]:.2f} ± {test[1]:.2f} | {vs} | {time} |"
            )
        best = max(present, key=lambda a: statistics.fmean(r["test"] for r in groups[(a, shots)]))
        mean_best = 100 * statistics.fmean(r["test"] for r in groups[(best, shots)])
        for arm, (label, controls) in DENDRITE_ARMS.items():
            against = pb_against(rows, shots, arm, controls)
            if against:
                verdicts.append(
                    verdict(shots, against, label) + f" Best arm: `{best}` ({mean_best:.2f}%)."
                )
    lines += ["", "In plain words:", ""]
    lines += [f"- {v}" for v in verdicts] or ["- no PB runs recorded yet"]
    lines.append("")
    return "\n".join(lines), verdicts


def plot_transfer(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy (mean ± sd over seeds) against labels per class, one line per arm."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend is left alone

    groups = group_by(rows, "method", "shots")
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    for i, arm in enumerate(sorted({a for a, _ in groups})):
        shots = sorted(k for a, k in groups if a == arm)
        groups_at = [groups[(arm, k)] for k in shots]
        plot_accuracy(ax, shots, groups_at, marker="o", color=f"C{i}", label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class (target task)")
    ax.set_ylabel("test accuracy % (mean ± sd over seeds)")
    ax.set_title("transfer: Fashion-MNIST classes 0-4 -> 5-9", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path)
