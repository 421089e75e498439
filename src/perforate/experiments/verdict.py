"""Verdicts: the only place where thresholds live.

A comparison's verdict, from its paired interval, its Holm-adjusted p and the study's rope
(the smallest difference the user cares about), in 'better' units (positive: the arm is
better than what it is compared with):

- better: the whole interval lies above +rope, and the Holm-adjusted p < ALPHA;
- worse: the whole interval lies below -rope, and the Holm-adjusted p < ALPHA;
- equivalent: the whole interval lies inside [-rope, +rope] (needs rope > 0);
- inconclusive: anything else (more seeds narrow the interval).

Whether a dendrite arm pays is `pays` over the verdicts of what it must beat and what it
must match (the study's verdict, and the benchmark regimes, use it). The study's verdict
is built from these structured values only, never from text. COST_LIMIT is the most wall
time, in plain runs, at which the benchmarks' goal counts a paying arm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .stats import Paired

ALPHA = 0.05
LEVEL = 0.95
VERDICTS = ("better", "worse", "equivalent", "inconclusive")
COST_LIMIT = 3.0


def pays(beat: Sequence[str], match: Sequence[str] = ()) -> str:
    """ "yes" when every verdict in `beat` is better and none in `match` is worse or
    inconclusive; "no" when one in `beat` is worse or equivalent, or one in `match` is
    worse; "unclear" otherwise (an interval still crosses the rope, or nothing to beat)."""
    if any(v == "worse" for v in match) or any(v in ("worse", "equivalent") for v in beat):
        return "no"
    if beat and all(v == "better" for v in beat) and "inconclusive" not in match:
        return "yes"
    return "unclear"


def decide(p: Paired, p_adjusted: float, rope: float) -> tuple[str, str]:
    """(verdict, reason) for one comparison (see the module docstring)."""
    if p.n < 2 or math.isnan(p.low):
        return "inconclusive", f"{p.n} paired seed(s) with scores: an interval needs 2"
    if p.low > rope and p_adjusted < ALPHA:
        return "better", f"interval above +{rope:g}, adjusted p {p_adjusted:.3g}"
    if p.high < -rope and p_adjusted < ALPHA:
        return "worse", f"interval below -{rope:g}, adjusted p {p_adjusted:.3g}"
    if rope > 0 and -rope <= p.low and p.high <= rope:
        return "equivalent", f"interval inside ±{rope:g}"
    if rope == 0 and p.low <= 0 <= p.high:
        return "inconclusive", "interval holds 0 (rope 0: equivalence cannot be shown)"
    return "inconclusive", "interval crosses the rope"


@dataclass(frozen=True)
class Comparison:
    """One arm against one reference on one question, with its verdict."""

    arm: str
    reference: str
    question: str  # "test" | "equal_params" | "equal_time"
    paired: Paired
    p_adjusted: float
    verdict: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "paired"}
        return {**out, **self.paired.to_dict()}


def judge_family(
    arm_names: Sequence[str],
    reference: str,
    question: str,
    results: Sequence[Paired],
    rope: float,
) -> list[Comparison]:
    """Verdicts for a family of comparisons sharing one question (Holm across it)."""
    from .stats import holm

    adjusted = holm([r.p for r in results])
    out = []
    for name, r, p_adj in zip(arm_names, results, adjusted, strict=True):
        verdict, reason = decide(r, p_adj, rope)
        out.append(Comparison(name, reference, question, r, p_adj, verdict, reason))
    return out


@dataclass(frozen=True)
class StudyVerdict:
    dendrites_pay: str  # "yes" | "no" | "unclear" | "not tested" (report: "no verdict")
    winner: str
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def study_verdict(
    comparisons: Sequence[Comparison],
    grows: dict[str, bool],
    winner: str,
    winner_text: str,
    reference: str,
    more_seeds: str = "more seeds (--seeds auto) narrow it",
) -> StudyVerdict:
    """Whether dendrites pay on this task, and which tool is the better one.

    Dendrites pay when some dendrite arm is better than the reference and not worse
    than the width ladder at equal parameters. They do not pay when every dendrite arm
    is worse or equivalent, or better only where the ladder does better still."""
    by = {(c.arm, c.question): c for c in comparisons}
    dendrite_arms = [a for a, g in grows.items() if g and a != reference]
    if not dendrite_arms:
        return StudyVerdict("not tested", winner, f"{winner_text}; no dendrite arm was run.")
    paying, unclear = [], []
    for arm in dendrite_arms:
        test = by.get((arm, "test"))
        ladder = by.get((arm, "equal_params"))
        state = pays(
            [test.verdict] if test is not None else [],
            [ladder.verdict] if ladder is not None else [],
        )
        {"yes": paying, "unclear": unclear}.get(state, []).append(arm)
    has_ladder = any(c.question == "equal_params" for c in comparisons)
    if paying:
        state = "yes"
        tail = f"dendrites pay here ({', '.join(paying)} beat {reference}"
        tail += (
            " and are not below the width ladder at equal parameters)."
            if has_ladder
            else "; no width ladder was run to compare at equal parameters)."
        )
    elif unclear:
        state = "unclear"
        tail = (
            f"whether dendrites pay is not yet clear ({', '.join(unclear)}: the interval "
            f"still crosses the rope); {more_seeds}."
        )
    else:
        state = "no"
        tail = f"dendrites do not pay here: no dendrite arm beat {reference} by more than the rope"
        beaten = [
            c.arm
            for c in comparisons
            if c.question == "equal_params" and c.arm in dendrite_arms and c.verdict == "worse"
        ]
        tail += (
            f", or a wider plain model did better at equal parameters ({', '.join(beaten)})."
            if beaten
            else "."
        )
    return StudyVerdict(state, winner, f"{winner_text}; {tail}")


def with_checks(verdict: dict[str, Any], checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The study verdict as the report's checks allow: runs that kept their first epoch
    (a "direction" failure) make it no verdict; other failed checks are named in its
    sentence, apart from what the sentence says already (dendrites kept)."""
    out = dict(verdict)
    suspect = [c for c in checks if c["check"] == "direction" and not c["ok"]]
    said = ("direction", "dendrites installed")
    failed = [c for c in checks if not c["ok"] and c["check"] not in said]
    if suspect:  # the runs kept their first epoch: a wrong direction, not dendrites
        out["dendrites_pay"] = "no verdict"
        out["sentence"] = (
            f"No verdict: {'; '.join(c['arm'] + ': ' + c['detail'] for c in suspect)}. "
            f"(As computed: {out['sentence']})"
        )
    if failed:
        out["sentence"] += (
            f" Failed checks ({len(failed)}): "
            + "; ".join(f"{c['arm']}: {c['check']} ({c['detail']})" for c in failed[:3])
            + ("; ..." if len(failed) > 3 else "")
            + ". Read them before the verdict."
        )
    return out
