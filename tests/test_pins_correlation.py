"""Candidate statistics: a save and load keeps the skipped-batch count; one process through
the distributed path (an identity reduction) equals the single-process path."""

from __future__ import annotations

import pytest
import torch

from perforate import CandidateStats, surrogate_gradient


def test_statistics_round_trip_with_their_skipped_batches():
    gen = torch.Generator().manual_seed(0)
    stats = CandidateStats(2, 3)
    v = torch.rand(5, 2, 3, generator=gen, dtype=torch.float64)
    e = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    surrogate_gradient(v, e, stats, "covariance")
    bad = e.clone()
    bad[0, 0] = float("nan")
    surrogate_gradient(v, bad, stats, "covariance")  # skipped
    assert stats.skipped_batches == 1
    back = CandidateStats(2, 3)
    back.load_state_dict(stats.state_dict())
    assert back.skipped_batches == 1
    for name in CandidateStats.FIELDS:
        assert torch.equal(getattr(back, name), getattr(stats, name)), name


@pytest.mark.parametrize("objective", ["covariance", "pearson"])
def test_an_identity_reduction_is_one_process(objective):
    gen = torch.Generator().manual_seed(1)
    alone, reduced = CandidateStats(2, 3), CandidateStats(2, 3)
    calls = []
    for _ in range(2):
        v = torch.rand(6, 2, 3, generator=gen, dtype=torch.float64)
        e = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        g1 = surrogate_gradient(v, e, alone, objective)
        g2 = surrogate_gradient(v, e, reduced, objective, reduce=calls.append, world_size=1)
        torch.testing.assert_close(g2, g1)
    assert calls  # the distributed path ran
    for name in CandidateStats.FIELDS:
        torch.testing.assert_close(getattr(reduced, name), getattr(alone, name))


def test_the_floor_of_squared_norms_is_1e_30():
    stats = CandidateStats(1, 1)
    stats.m_ve.fill_(1e-16)
    stats.m_vv.fill_(1e-15)
    stats.m_ee.fill_(1e-15)  # m_vv * m_ee = 1e-30: at the floor
    assert float(stats.pearson()) == pytest.approx(1e-16 / 1e-15, rel=1e-9)
    stats.m_ee.fill_(1e-16)  # 1e-31: floored to 1e-30
    assert float(stats.pearson()) == pytest.approx(1e-16 / 1e-15, rel=1e-9)
    stats.m_ee.fill_(4e-15)  # 4e-30: above it
    assert float(stats.pearson()) == pytest.approx(1e-16 / 2e-15, rel=1e-9)
