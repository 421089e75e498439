"""A candidate pool on its own: one process's defaults and its gradient by reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perforate import CandidateStats, DendriteConfig, DendriticLayer, surrogate_gradient
from perforate.kinds import KINDS


@pytest.mark.parametrize("objective", ["covariance", "pearson"])
def test_a_fresh_pool_is_one_process_and_its_gradient_is_the_surrogate(objective):
    gen = torch.Generator().manual_seed(4)
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig(objective=objective))
    pool = layer.draw_candidates(2, generator=gen)
    assert pool.reduce is None and pool.world_size == 1
    x = torch.randn(6, 3, generator=gen)
    v = pool.outputs(x, None)
    e = torch.randn(6, 2, generator=gen)
    got = pool.objective_gradient(v, e)
    want = surrogate_gradient(v.detach(), e, CandidateStats(2, 2), objective)
    torch.testing.assert_close(got, want)
    assert float(got.abs().sum()) > 0


def test_an_empty_batch_gets_a_zero_gradient_and_folds_nothing():
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    pool = layer.draw_candidates(2, generator=torch.Generator().manual_seed(0))
    v = pool.outputs(torch.zeros(0, 3), None)
    got = pool.objective_gradient(v, torch.zeros(0, 2))
    assert got.shape == v.shape == (0, 2, 2) and int(pool.stats.count) == 0
