"""The statistics and verdicts of `perforate compare`, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from perforate.experiments import stats
from perforate.experiments.ledger import Ledger, LedgerError
from perforate.experiments.verdict import Comparison, decide, judge_family, study_verdict

# t quantile 0.975 with 2 degrees of freedom (tables): 4.302653
T2 = 4.302652729911275


def test_paired_interval_by_hand():
    a = {0: 3.0, 1: 5.0, 2: 7.0}
    b = {0: 2.0, 1: 3.0, 2: 4.0}  # differences 1, 2, 3: mean 2, sd 1
    p = stats.paired(a, b, "maximize")
    assert (p.n, p.mean, p.sd) == (3, 2.0, 1.0)
    assert p.low == pytest.approx(2 - T2 / math.sqrt(3))
    assert p.high == pytest.approx(2 + T2 / math.sqrt(3))
    assert p.p_perm == pytest.approx(2 / 8)  # only all-plus and all-minus reach |mean| 2
    assert (p.wins, p.losses, p.dropped) == (3, 0, 0)
    # t = 2 / (1/sqrt 3) = 3.4641; two-sided p with 2 df = 0.07418 (tables)
    assert p.p == pytest.approx(0.0741799, rel=1e-4)


def test_minimize_flips_the_sign_and_nan_pairs_are_dropped():
    a = {0: 1.0, 1: 2.0, 2: math.nan, 3: 0.5}
    b = {0: 2.0, 1: 4.0, 2: 1.0, 4: 9.0}
    d, dropped = stats.differences(a, b, "minimize")
    assert d == [1.0, 2.0] and dropped == 1  # lower is better: a is better by 1 and 2


def test_sign_flip_exact_and_sampled():
    assert stats.sign_flip_p([1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 32)
    assert stats.sign_flip_p([1.0, -1.0]) == 1.0
    assert stats.sign_flip_p([]) != stats.sign_flip_p([])  # NaN
    many = [1.0] * 20  # beyond the exact range: sampled, about 2 / 2^20
    assert stats.sign_flip_p(many) < 1e-3


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_interpolation_on_log_parameters():
    ladder = [(10.0, 0.5), (100.0, 0.7), (1000.0, 0.8)]
    assert stats.interpolate(ladder, math.sqrt(1000)) == pytest.approx(0.6)
    assert stats.interpolate(ladder, 100.0) == pytest.approx(0.7)
    assert math.isnan(stats.interpolate(ladder, 5.0))  # no extrapolation
    assert math.isnan(stats.interpolate(ladder, 2000.0))


def test_score_at_a_time_budget():
    curve = [[1.0, 0.5, 0.4], [2.0, 0.7, 0.6], [3.0, 0.6, 0.9], [4.0, 0.8, 0.7]]
    assert stats.at_time(curve, 2.5, "maximize") == 0.6  # best validation by 2.5 s: epoch 2
    assert stats.at_time(curve, 0.5, "maximize") == 0.4  # the first epoch at least
    assert stats.at_time(curve, 99, "maximize") == 0.7
    assert stats.at_time(curve, 99, "minimize") == 0.4


def _p(mean, low, high, n=5, p=0.001):
    return stats.Paired(n, mean, 1.0, low, high, p, p, n, 0, 0, 0.95)


@pytest.mark.parametrize(
    ("low", "high", "p_adj", "rope", "verdict"),
    [
        (0.02, 0.05, 0.01, 0.01, "better"),
        (0.005, 0.05, 0.01, 0.01, "inconclusive"),  # above 0, not above the rope
        (0.02, 0.05, 0.2, 0.01, "inconclusive"),  # the family's adjustment decides
        (-0.05, -0.02, 0.01, 0.01, "worse"),
        (-0.004, 0.006, 0.5, 0.01, "equivalent"),
        (-0.004, 0.006, 0.5, 0.0, "inconclusive"),  # rope 0: never equivalent
        (-0.02, 0.006, 0.5, 0.01, "inconclusive"),
    ],
)
def test_decide(low, high, p_adj, rope, verdict):
    assert decide(_p((low + high) / 2, low, high), p_adj, rope)[0] == verdict


def test_decide_with_one_seed_or_nan():
    one = stats.paired({0: 1.0}, {0: 0.0}, "maximize")
    assert decide(one, one.p, 0.0)[0] == "inconclusive"
    none = stats.paired({0: math.nan}, {0: 0.0}, "maximize")
    assert none.n == 0 and decide(none, none.p, 0.1)[0] == "inconclusive"


def _cmp(arm, question, verdict):
    return Comparison(arm, "restart", question, _p(0, 0, 0), 0.5, verdict, "")


def test_study_verdict_from_structured_comparisons():
    grows = {"plain": False, "pb": True, "gd": True}
    w = "winner text"
    pays = [
        _cmp("pb", "test", "better"),
        _cmp("pb", "equal_params", "equivalent"),
        _cmp("gd", "test", "worse"),
    ]
    assert study_verdict(pays, grows, "pb", w, "restart").dendrites_pay == "yes"
    ladder_wins = [
        _cmp("pb", "test", "better"),
        _cmp("pb", "equal_params", "worse"),
        _cmp("gd", "test", "equivalent"),
    ]
    assert study_verdict(ladder_wins, grows, "x", w, "restart").dendrites_pay == "no"
    open_ = [_cmp("pb", "test", "inconclusive"), _cmp("gd", "test", "worse")]
    v = study_verdict(open_, grows, "x", w, "restart")
    assert v.dendrites_pay == "unclear" and "--seeds auto" in v.sentence
    assert study_verdict([], {"plain": False}, "plain", w, "restart").dendrites_pay == (
        "not tested"
    )


def test_judge_family_applies_holm_across_arms():
    a = stats.Paired(5, 0.05, 0.01, 0.03, 0.07, 0.02, 0.06, 5, 0, 0, 0.95)
    b = stats.Paired(5, 0.05, 0.01, 0.03, 0.07, 0.03, 0.06, 5, 0, 0, 0.95)
    out = judge_family(["a", "b"], "ref", "test", [a, b], 0.01)
    assert [c.p_adjusted for c in out] == pytest.approx([0.04, 0.04])
    assert [c.verdict for c in out] == ["better", "better"]


def test_ledger_skips_a_cut_line_and_never_writes_a_run_twice(tmp_path):
    path = tmp_path / "runs.jsonl"
    ledger = Ledger(path, {"fingerprint": "abc"})
    run = {"val": 0.5, "params": 10}
    assert ledger.append({"arm": "pb", "seed": 0, "test": 0.5, **run})
    assert not ledger.append({"arm": "pb", "seed": 0, "test": 0.9, **run})
    with open(path, "a") as fh:
        fh.write('{"arm": "pb", "seed": 1, "te')  # a writer killed mid-line
    assert [r["seed"] for r in ledger.records()] == [0]
    assert ledger.append({"arm": "pb", "seed": 1, "test": 0.7, **run})
    assert [(r["seed"], r["test"]) for r in ledger.records()] == [(0, 0.5), (1, 0.7)]
    with pytest.raises(LedgerError, match="another study"):
        Ledger(path, {"fingerprint": "other"})
