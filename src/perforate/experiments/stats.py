"""Paired statistics over per-seed scores: pure functions, no I/O, no thresholds.

Each comparison pairs two arms by seed (same initial weights and data order), so the
seed-to-seed noise they share cancels in the differences. From the n differences: their
mean, a Student-t interval (scipy's t quantiles), the paired t-test's p, an exact
sign-flip permutation p (every one of the 2^n sign patterns; a seeded sample of 100,000
beyond n = 16), and wins. `holm` adjusts a family of p-values. Pairs with a NaN on either
side are dropped and counted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

EXACT_UP_TO = 16


@dataclass(frozen=True)
class Paired:
    """The paired difference `a - b` (in 'better' units: positive means a is better)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    p: float  # paired t-test, two-sided
    p_perm: float  # sign-flip permutation, two-sided
    wins: int
    losses: int
    dropped: int  # pairs with a NaN
    level: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def differences(
    a: Mapping[int, float], b: Mapping[int, float], direction: str = "maximize"
) -> tuple[list[float], int]:
    """Per shared seed, `a - b` signed so that positive is better; and how many seeds had
    a NaN on either side."""
    sign = 1.0 if direction == "maximize" else -1.0
    out, dropped = [], 0
    for seed in sorted(set(a) & set(b)):
        d = sign * (a[seed] - b[seed])
        if math.isnan(d):
            dropped += 1
        else:
            out.append(d)
    return out, dropped


def t_interval(d: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of the mean of `d`; NaN bounds for fewer than 2 values."""
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(np.mean(d))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(d, ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def t_test_p(d: Sequence[float]) -> float:
    """Two-sided p of the paired t-test (mean 0); 1 when all differences are 0."""
    n = len(d)
    if n < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    mean = float(np.mean(d))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * sps.t.sf(abs(t), n - 1))


def sign_flip_p(d: Sequence[float], samples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of |mean| under random signs: exact for n <= 16 (the smallest possible
    value is 2 / 2^n: 0.25 for 3 seeds, 0.0625 for 5)."""
    n = len(d)
    if n == 0:
        return math.nan
    x = np.asarray(d, dtype=float)
    observed = abs(x.mean()) - 1e-12 * max(1.0, float(np.abs(x).max()))
    if n <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(samples, n))
    means = np.abs(signs @ x) / n
    return float(np.mean(means >= observed))


def paired(
    a: Mapping[int, float], b: Mapping[int, float], direction: str, level: float = 0.95
) -> Paired:
    d, dropped = differences(a, b, direction)
    mean, sd, low, high = t_interval(d, level)
    return Paired(
        n=len(d),
        mean=mean,
        sd=sd,
        low=low,
        high=high,
        p=t_test_p(d),
        p_perm=sign_flip_p(d),
        wins=sum(1 for v in d if v > 0),
        losses=sum(1 for v in d if v < 0),
        dropped=dropped,
        level=level,
    )


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (NaN stays NaN and does not count in the family)."""
    idx = [i for i, p in enumerate(ps) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Score at `x` parameters on a ladder of (parameters, score) points, linear in
    log(parameters); NaN outside the ladder's range (no extrapolation)."""
    pts = sorted((p, s) for p, s in points if p > 0 and not math.isnan(s))
    if len(pts) < 2 or x <= 0 or not pts[0][0] <= x <= pts[-1][0]:
        if len(pts) == 1 and x == pts[0][0]:
            return pts[0][1]
        return math.nan
    lx = math.log(x)
    for (p0, s0), (p1, s1) in itertools.pairwise(pts):
        if p0 <= x <= p1:
            if p1 == p0:
                return (s0 + s1) / 2
            w = (lx - math.log(p0)) / (math.log(p1) - math.log(p0))
            return s0 + w * (s1 - s0)
    return math.nan  # pragma: no cover - the range check above covers every x


def at_time(curve: Sequence[Sequence[float]], seconds: float, direction: str) -> float:
    """What a run would have given if stopped after `seconds`: the test score at its best
    validation epoch so far (curve rows: cumulative seconds, validation, test)."""
    best_val, best_test = math.nan, math.nan
    better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
    for t, val, test in curve:
        if t > seconds and not math.isnan(best_val):
            break
        if math.isnan(best_val) or better(val, best_val):
            best_val, best_test = val, test
    return best_test


def detectable(n: int, sd: float, level: float = 0.95) -> float:
    """Half-width of the interval n seeds give when the differences' sd is `sd`."""
    if n < 2:
        return math.inf
    return float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
