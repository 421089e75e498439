"""`perforate bench --report`: docs/benchmarks.md and its figures, from the suites' ledgers.

Each study with a ledger (`benchmarks/results/<study>/runs.jsonl`) is reported by
`compare.build_report`, the statistics and verdicts of `perforate compare`. The regimes'
questions that span arms or studies (PB against every control of transfer, against the
other ladder of compression) are paired by seed (`stats`) and judged by `verdict.decide`
with Holm over each family. A `Finding` holds one dendrite arm's verdicts; the page's
sentences, tables and headline ("PB paid in X of Y") are built from findings, never from
text.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import stats
from .compare import build_report
from .ledger import Ledger
from .study import Study
from .suites import CANDIDATES, LABELS, SUITES, Suite
from .verdict import ALPHA, COST_LIMIT, Comparison, decide, pays

COMMAND = "perforate bench --report"
REGIMES = {
    "scratch": "From scratch, with the whole training set",
    "scarce": "From scratch, with 1%, 3% or 10% of the training set",
    "transfer": "Growing into a trained model (few labels, trunk frozen)",
    "compression": "Compression: a small model from a wide one",
    "candidates": "Other candidates (restricted fan-in, closed-form start, output error)",
}


@dataclass
class Studied:
    """A study, its ledger's records and its compare report."""

    suite: Suite
    study: Study
    records: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def name(self) -> str:
        return self.study.name

    def arm(self, name: str) -> dict[str, Any] | None:
        return next((a for a in self.report["arms"] if a["name"] == name), None)

    def comparison(self, arm: str, question: str) -> dict[str, Any] | None:
        pool = self.report["comparisons"]
        return next((c for c in pool if c["arm"] == arm and c["question"] == question), None)

    @property
    def unit(self) -> str:
        """The arm times are measured in: the plain run (transfer: the head alone)."""
        names = {a["name"] for a in self.report["arms"]}
        return next((n for n in ("plain", "head") if n in names), self.report["reference"])

    def cost(self, arm: str) -> float:
        """Wall time in units of the plain run: the median over seeds of the ratio."""
        unit = self.by_seed(self.unit, "seconds")
        ratios = [t / unit[s] for s, t in self.by_seed(arm, "seconds").items() if unit.get(s)]
        return statistics.median(ratios) if ratios else math.nan

    def by_seed(self, arm: str, key: str = "test") -> dict[int, float]:
        return {int(r["seed"]): float(r[key]) for r in self.records if r["arm"] == arm}

    def ladder(self) -> dict[int, list[tuple[float, float]]]:
        """Per seed, the (parameters, test) points of the plain width ladder."""
        out: dict[int, list[tuple[float, float]]] = {}
        for r in self.records:
            if _on_ladder(r["arm"]):
                out.setdefault(int(r["seed"]), []).append((float(r["params"]), float(r["test"])))
        return out

    def kept(self, arm: str) -> tuple[int, int]:
        runs = [r for r in self.records if r["arm"] == arm]
        return sum(1 for r in runs if r["dendrites"] > 0), len(runs)


def load(results: Path) -> list[Studied]:
    """Every study of every suite that has a ledger under `results`, in suite order."""
    out = []
    for suite in SUITES.values():
        for step in suite.steps(results):
            path = results / step.study.name / "runs.jsonl"
            if not path.is_file():
                continue
            records = Ledger(path, {"fingerprint": step.study.fingerprint()}).records()
            names = {r["arm"] for r in records}
            if step.study.reference not in names:
                continue
            arms = [a for a in step.study.arms() if a.name in names]
            seeds = sorted({int(r["seed"]) for r in records})
            report = build_report(step.study, arms, records, seeds)
            out.append(Studied(suite, step.study, records, report))
    return out


# --- findings: one dendrite arm's verdicts ---------------------------------------------------


@dataclass(frozen=True)
class Finding:
    regime: str
    study: str
    arm: str
    label: str  # e.g. "PB at width 8", "10 labels per class: `pb_sparse`"
    state: str  # verdict.pays: "yes" | "no" | "unclear"
    basis: tuple[dict[str, Any], ...]  # the comparisons the state rests on
    info: tuple[dict[str, Any], ...] = ()  # shown beside them, deciding nothing
    kept: tuple[int, int] = (0, 0)
    cost: float = math.nan

    @property
    def goal(self) -> bool:
        """Pays, at most COST_LIMIT times the plain run's time."""
        return self.state == "yes" and self.cost <= COST_LIMIT


def family(
    pairs: Sequence[tuple[str, str, stats.Paired]], question: str, rope: float
) -> list[dict[str, Any]]:
    """Verdicts for (arm, reference, paired difference) comparisons judged together:
    Holm across the family, then `verdict.decide` (as `verdict.judge_family` does for
    one reference)."""
    adjusted = stats.holm([p.p for _, _, p in pairs])
    out = []
    for (arm, ref, p), p_adj in zip(pairs, adjusted, strict=True):
        verdict, reason = decide(p, p_adj, rope)
        out.append(Comparison(arm, ref, question, p, p_adj, verdict, reason).to_dict())
    return out


def _name(arm: str) -> str:
    return "PB" if arm == "pb" else f"`{arm}`"


def _finding(s: Studied, regime: str, arm: str, label: str, state: str, basis, info=()):
    cost = math.nan if regime == "transfer" else s.cost(arm)  # transfer: no plain run
    return Finding(regime, s.name, arm, label, state, tuple(basis), tuple(info), s.kept(arm), cost)


def scratch_findings(s: Studied) -> list[Finding]:
    """PB and the candidate variants against the reference and the width ladder (the
    rule of `perforate compare`'s verdict), the candidates also against PB."""
    grown = [a["name"] for a in s.report["arms"] if a["grows"]]
    cands = [a for a in grown if a in CANDIDATES]
    direction, rope = s.report["direction"], s.report["rope"]
    pb = s.by_seed("pb")
    vs_pb = family(
        [(a, "pb", stats.paired(s.by_seed(a), pb, direction)) for a in cands if pb], "test", rope
    )
    out = []
    for arm in [a for a in grown if a == "pb" or a in cands]:
        test, ladder = s.comparison(arm, "test"), s.comparison(arm, "equal_params")
        basis = tuple(c for c in (test, ladder) if c is not None)
        state = pays([test["verdict"]] if test else [], [ladder["verdict"]] if ladder else [])
        regime = "candidates" if arm in cands else s.suite.regime
        label = f"{_name(arm)} at width {s.arm(arm)['width']}"
        out.append(
            _finding(s, regime, arm, label, state, basis, [c for c in vs_pb if c["arm"] == arm])
        )
    return out


TRANSFER_CONTROLS = ("head", "restart", "finetune", "lora", "wider")


def transfer_findings(s: Studied) -> list[Finding]:
    """PB (and small-fan-in PB) pays only if it beats every control; small-fan-in PB also
    faces LoRA at its own, smaller budget."""
    shots = s.study.data["kwargs"]["shots"]
    out = []
    for arm, extra in (("pb", ()), ("pb_sparse", ("lora_small",))):
        mine = s.by_seed(arm)
        if not mine:
            continue
        controls = [c for c in (*TRANSFER_CONTROLS, *extra) if s.by_seed(c)]
        basis = family(
            [(arm, c, stats.paired(mine, s.by_seed(c), s.report["direction"])) for c in controls],
            "test",
            s.report["rope"],
        )
        label = f"{shots} labels per class: {_name(arm)}"
        out.append(_finding(s, "transfer", arm, label, pays([c["verdict"] for c in basis]), basis))
    return out


def _on_ladder(arm: str) -> bool:
    return arm == "plain" or arm.startswith("ladder@")


def cross_ladder(arm_of: Studied, arm: str, ladder_of: Studied) -> stats.Paired:
    """`arm` of one study against another study's width ladder at equal parameters."""
    points = ladder_of.ladder()
    params = arm_of.by_seed(arm, "params")
    at = {s: stats.interpolate(points[s], p) for s, p in params.items() if s in points}
    return stats.paired(arm_of.by_seed(arm), at, arm_of.report["direction"])


def compression_findings(kd: Studied, labels: Studied) -> tuple[list[Finding], list[dict]]:
    """PB grown on either loss pays only if it beats its restart control and is not
    below either width ladder (labels, distilled) at equal parameters. Also: distillation
    alone, per width (the distilled ladder against the label-trained one)."""
    rope = kd.report["rope"]
    cross = family(
        [
            ("pb", "ladder (labels)", cross_ladder(kd, "pb", labels)),
            ("pb", "ladder (distilled)", cross_ladder(labels, "pb", kd)),
        ],
        "equal_params",
        rope,
    )
    out = []
    for s, other, title in ((labels, cross[1], "labels"), (kd, cross[0], "the distillation loss")):
        test, ladder = s.comparison("pb", "test"), s.comparison("pb", "equal_params")
        if test is None:
            continue
        basis = tuple(c for c in (test, ladder, other) if c is not None)
        params = s.arm("pb")["params_mean"]
        label = f"PB on {title} (width {s.arm('pb')['width']}, {params:,.0f} parameters)"
        state = pays([test["verdict"]], [c["verdict"] for c in basis[1:]])
        out.append(_finding(s, "compression", "pb", label, state, basis))
    widths = {a["width"]: a["name"] for a in labels.report["arms"] if _on_ladder(a["name"])}
    ladder = [a for a in kd.report["arms"] if _on_ladder(a["name"]) and a["width"] in widths]
    direction = kd.report["direction"]
    pairs = [
        (a["name"], widths[a["width"]], stats.paired(
            kd.by_seed(a["name"]), labels.by_seed(widths[a["width"]]), direction))
        for a in ladder
    ]  # fmt: skip
    notes = family(pairs, "distillation", rope)
    for c, a in zip(notes, ladder, strict=True):
        c["width"] = a["width"]
    return out, notes


def findings(studied: list[Studied]) -> tuple[list[Finding], list[dict]]:
    by = {s.name: s for s in studied}
    out: list[Finding] = []
    notes: list[dict] = []
    for s in studied:
        if s.suite.regime in ("scratch", "scarce") and s.report["reference"] == "restart":
            out += scratch_findings(s)
        elif s.suite.regime == "transfer" and not s.name.endswith("_source"):
            out += transfer_findings(s)
        elif s.name.endswith("_kd") and LABELS.get(s.suite.name) in by:
            found, alone = compression_findings(s, by[LABELS[s.suite.name]])
            out += found
            notes += alone
    return out, notes


# --- the page --------------------------------------------------------------------------------


def pts(x: float, signed: bool = True) -> str:
    """An accuracy difference in points."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:{'+' if signed else ''}.2f}"


def vs(c: dict[str, Any]) -> str:
    """A comparison in words: the difference, its interval, the verdict."""
    ref = f"`{c['reference']}`"
    if c["question"] == "distillation":
        ref = "the same width trained on labels"
    if c["question"] == "equal_params":
        tag = c["reference"].removeprefix("ladder")
        ref = f"the width ladder{tag} at equal parameters"
    return (
        f"{pts(c['mean'])} [{pts(c['low'])}, {pts(c['high'])}] points against {ref} "
        f"(**{c['verdict']}**, n={c['n']})"
    )


def cell(c: dict[str, Any] | None) -> str:
    """A comparison in a table cell: difference [interval] verdict."""
    if c is None:
        return "-"
    return f"{pts(c['mean'])} [{pts(c['low'])}, {pts(c['high'])}] {c['verdict']}"


STATES = {"yes": "**pays**", "no": "does not pay", "unclear": "is **unclear**"}


def sentence(f: Finding) -> str:
    kept, runs = f.kept
    info = "".join(f"; {vs(c)}" for c in f.info)
    cost = "" if math.isnan(f.cost) else f"; {f.cost:.1f}x the plain run's time"
    return (
        f"**{f.study}**: {f.label} {STATES[f.state]}: {'; '.join(vs(c) for c in f.basis)}"
        f"{info}; dendrites kept in {kept} of {runs} runs{cost}."
    )


def when_to_use(
    found: list[Finding], notes: list[dict], figures: dict[str, list[str]] | None = None
) -> list[str]:
    lines = [
        "## When to use dendrites",
        "",
        "A dendrite arm **pays** where it is *better* than every control it must beat and "
        "*not worse* than every control it must match (verdicts below): from scratch it "
        "must beat the restart control and match the width ladder at equal parameters; in "
        "transfer it must beat the head alone, its restart schedule, fine-tuning, LoRA and "
        "extra neurons at about its parameters; in compression it must beat its restart "
        "control and match both width ladders (trained on labels, distilled). The other "
        "candidates face their suite's controls and are also compared with PB. It is "
        "*unclear* where an interval still crosses the rope. Regimes not measured are "
        "not listed.",
        "",
    ]
    for key, title in REGIMES.items():
        mine = [f for f in found if f.regime == key]
        extra = [c for c in notes if key == "compression"]
        if mine:
            lines += [f"**{title}.**", "", *[f"- {sentence(f)}" for f in mine]]
            lines += [f"- Distillation alone at width {c['width']}: {vs(c)}." for c in extra]
            lines.append("")
            for name in (figures or {}).get(key, []):
                lines += [f"![{key}](figures/{name})", ""]
    paid = sum(f.state == "yes" for f in found)
    unclear = sum(f.state == "unclear" for f in found)
    tail = (
        " Where it did not, the control that matched or beat it is the better tool: a "
        "wider layer (or the restart schedule) from scratch, fine-tuning, LoRA or extra "
        "neurons to adapt a trained model, the plain or distilled ladder for a small model."
    )
    lines += [
        f"**In short:** PB paid in {paid} of {len(found)} comparisons above"
        f"{f' ({unclear} unclear)' if unclear else ''}.{tail if paid < len(found) else ''}",
        "",
    ]
    return lines


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def table(s: Studied) -> list[str]:
    """The study's arms: scores, parameters, verdicts against the reference and the
    ladder, time relative to the plain run (`Studied.unit`)."""
    ref = s.report["reference"]
    cols = [
        "arm",
        "width",
        "seeds",
        "dend./neuron",
        "params",
        "val %",
        "test %",
        f"vs {ref} (test, paired)",
        "vs ladder (equal params)",
        f"time vs {s.unit}",
        "epochs",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for a in s.report["arms"]:
        runs = [r for r in s.records if r["arm"] == a["name"]]
        cells = [cell(s.comparison(a["name"], q)) for q in ("test", "equal_params")]
        lines.append(
            f"| {a['name']} | {a['width']} | {len(runs)} | "
            f"{_mean([r['dendrites_per_neuron'] for r in runs]):.2f} | {a['params_mean']:,.0f} | "
            f"{pts(a['val_mean'], False)} ± {pts(a['val_sd'], False)} | "
            f"{pts(a['test_mean'], False)} ± {pts(a['test_sd'], False)} | {cells[0]} | "
            f"{cells[1]} | {s.cost(a['name']):.1f}x | {a['epochs_mean']:.0f} |"
        )
    return lines


def section(s: Studied, figure: str | None) -> list[str]:
    lines = [f"## {s.name}: {s.suite.about}", ""]
    if figure:
        lines += [
            f"![{s.name}](figures/{figure})  ",
            f"*Figure: `{COMMAND}` from `benchmarks/results/{s.name}/runs.jsonl`.*",
            "",
        ]
    for key, what in (("source_test", "Source models"), ("teacher_test", "Teachers")):
        values = {r["seed"]: r[key] for r in s.records if key in r}
        if values:
            m, sd = statistics.fmean(values.values()), _sd(list(values.values()))
            lines += [
                f"{what}: test {pts(m, False)} ± {pts(sd, False)}% ({len(values)} seeds).",
                "",
            ]
    return [
        *lines,
        *table(s),
        "",
        f"`perforate compare`'s verdict on this study alone (against "
        f"`{s.report['reference']}`): {s.report['verdict']['sentence']}",
        "",
    ]


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def arm_list(studied: list[Studied]) -> list[str]:
    seen: dict[tuple[str, str], None] = {}
    for s in studied:
        for a in s.report["arms"]:
            if not a["name"].startswith("ladder@"):
                seen[(a["name"], a["help"])] = None
    return [f"- `{name}`: {help}" for name, help in seen]


def write_report(studied: list[Studied], results: Path, docs: Path) -> Path:
    """docs/benchmarks.md and its figures; each study's compare.json and compare.md
    beside its ledger."""
    from perforate.files import atomic_write

    from . import render

    results, docs = Path(results), Path(docs)
    found, notes = findings(studied)
    sections = []
    for s in studied:
        figure = f"bench_{s.name}.png"
        render.figure(s.report, _folder(docs / "figures") / figure)
        sections += section(s, figure)
        atomic_write(results / s.name / "compare.md", render.markdown(s.report).encode())
        atomic_write(results / s.name / "compare.json", json.dumps(s.report, indent=1).encode())
    figures = plot_regimes(studied, docs / "figures")
    goal = [f"{f.study}: {f.label}" for f in found if f.goal]
    head = [
        "# Benchmarks: when do dendrites earn their parameters?",
        "",
        f"Generated by `{COMMAND}` from the ledgers `benchmarks/results/<study>/runs.jsonl` "
        "(made by `perforate bench --suite NAME`; the records of the runners before issue "
        "23 were converted by `tools/convert_results.py`). Do not edit by hand.",
        "",
        "Every arm of a study shares its data splits, seeds and epoch rules; settings were "
        "chosen on validation data only (`docs/pb_settings.md`). Scores are test accuracy "
        "at the best validation epoch. Differences are paired by seed, in points, with "
        "their 95% t-interval; a verdict is *better* or *worse* when the whole interval "
        f"lies beyond the rope (±{pts(studied[0].report['rope'], False) if studied else '0.50'}"
        f" points) and the Holm-adjusted p is below {ALPHA}, *equivalent* when it lies "
        "inside the rope, *inconclusive* otherwise (`perforate compare`'s rules, "
        "`verdict.py`). 'vs ladder' compares with the plain width ladder interpolated in "
        "log parameters, seed by seed; 'time vs plain' is the median over seeds of the wall "
        "time over the plain run's of the same seed (one thread per run; transfer: over "
        "the head alone's).",
        "",
        "Arms:",
        "",
        *arm_list(studied),
        "",
        "## The goal",
        "",
        f"A PB variant that pays (below) at most {COST_LIMIT:g}x the plain run's time.",
        "",
        ("Met by: " + "; ".join(goal)) if goal else "**Not met by any recorded variant.**",
        "",
        *when_to_use(found, notes, figures),
    ]
    page = docs / "benchmarks.md"
    atomic_write(page, ("\n".join(head + sections) + "\n").encode())
    return page


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def plot_regimes(studied: list[Studied], folder: Path) -> dict[str, list[str]]:
    """Transfer: test accuracy against labels per class, a line per arm; compression:
    both width ladders with PB and the restart control on either loss. Returns the
    figures' file names per regime."""
    from matplotlib.figure import Figure

    drawn: dict[str, list[str]] = {}
    for suite in {s.suite.name: s.suite for s in studied}.values():
        mine = [s for s in studied if s.suite is suite]
        if suite.regime == "transfer":
            grown = [s for s in mine if not s.name.endswith("_source")]
            if not grown:
                continue
            fig = Figure(figsize=(7.5, 4.6))
            ax = fig.subplots()
            for i, arm in enumerate(a["name"] for a in grown[0].report["arms"]):
                xs = [s.study.data["kwargs"]["shots"] for s in grown if s.arm(arm)]
                rows = [s.arm(arm) for s in grown if s.arm(arm)]
                ax.errorbar(
                    xs,
                    [100 * r["test_mean"] for r in rows],
                    yerr=[100 * (0 if math.isnan(r["test_sd"]) else r["test_sd"]) for r in rows],
                    marker="o",
                    capsize=3,
                    color=f"C{i}",
                    label=arm,
                )
            ax.set_xscale("log")
            ax.set_xlabel("labelled training examples per class (target task)")
        elif suite.regime == "compression" and LABELS.get(suite.name) in {s.name for s in studied}:
            labels = next(s for s in studied if s.name == LABELS[suite.name])
            fig = Figure(figsize=(7.5, 4.6))
            ax = fig.subplots()
            for i, (s, tag) in enumerate(
                ((labels, "labels"), *((k, "distilled") for k in mine if k.name.endswith("_kd")))
            ):
                rows = sorted(
                    (a for a in s.report["arms"] if not a["grows"]), key=lambda a: a["params_mean"]
                )
                ladder = [
                    a for a in rows if a["name"] == "plain" or a["name"].startswith("ladder@")
                ]
                ax.plot(
                    [a["params_mean"] for a in ladder],
                    [100 * a["test_mean"] for a in ladder],
                    "-o",
                    color=f"C{i}",
                    label=f"width ladder ({tag})",
                )
                for a in (s.arm("restart"), s.arm("pb")):
                    if a:
                        ax.plot(
                            a["params_mean"],
                            100 * a["test_mean"],
                            "s" if a["grows"] else "^",
                            color=f"C{i}",
                            label=f"{a['name']} ({tag})",
                        )
            ax.set_xscale("log")
            ax.set_xlabel("parameters used by the forward pass")
        else:
            continue
        ax.set_ylabel("test accuracy % (mean over seeds; bars: sd)")
        ax.set_title(f"{suite.name}: {suite.about}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(_folder(folder) / f"bench_{suite.name}.png", dpi=100)
        drawn.setdefault(suite.regime, []).append(f"bench_{suite.name}.png")
    return drawn
