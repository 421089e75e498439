"""Candidate variants, pinned by hand: the ridge start's exact weights, output-error
statistics over uneven batches, convolutions, non-finite errors, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, PhaseError
from perforate.candidate_variants import (
    ClosedFormPool,
    OutputError,
    OutputErrorPool,
    OutputErrorStats,
)
from perforate.kinds import kind_of
from perforate.rules import ClosedFormRule, SparseRule


def _layer(base: nn.Module, **cfg) -> perforate.DendriticLayer:
    return perforate.DendriticLayer(base, kind_of(base), DendriteConfig(**cfg))


def test_a_sparse_pool_shows_its_fan_in():
    pool = SparseRule(fan_in=3).make_pool(_layer(nn.Linear(6, 2)), torch.Generator())
    assert "fan_in=3" in repr(pool)


def test_variants_that_do_not_run_distributed_say_so():
    gen = torch.Generator().manual_seed(0)
    layer = _layer(nn.Linear(4, 2))
    for pool in (
        ClosedFormRule(pool_size=2).make_pool(layer, gen),
        OutputErrorPool.from_pool(layer.draw_candidates(2, generator=gen)),
    ):
        pool.share_statistics(None, 1)  # one process: fine
        with pytest.raises(PhaseError, match=r"do(es)? not run distributed yet"):
            pool.share_statistics(lambda t: None, 2)


def test_the_ridge_start_by_hand_where_the_ridge_turns_the_direction():
    # Input 1 varies 1600 times less than input 0: the ridge (1e-3 times the mean input
    # variance, about 2e-3) is comparable to its variance (2.5e-3), so it shrinks that
    # weight by nearly half, and each neuron's direction depends on its exact size.
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    x = z * torch.tensor([2.0, 0.05], dtype=torch.float64) + 1.0
    e = torch.stack([x[:, 0] + 20 * x[:, 1], -x[:, 0] + 40 * x[:, 1]], 1) + 0.1  # (N, C=2)
    pool = ClosedFormRule(pool_size=3, warmup=1).make_pool(_layer(nn.Linear(2, 2)), gen)
    pool.cf_n.fill_(200)
    pool.cf_sum_x.copy_(x.sum(0))
    pool.cf_sum_e.copy_(e.sum(0))
    pool.cf_xx.copy_(x.T @ x)
    pool.cf_xe.copy_(x.T @ e)
    pool.start_from_regression()
    # The reference: covariances, ridge, solve, unit output std, slopes 0.5 * 8^(i/2).
    mx, me = x.mean(0), e.mean(0)
    cxx = (x - mx).T @ (x - mx) / 200
    cxe = (x - mx).T @ (e - me) / 200
    lam = 1e-3 * float(cxx.diagonal().mean())
    w = torch.linalg.solve(cxx + lam * torch.eye(2, dtype=torch.float64), cxe)
    std = torch.sqrt(((x - mx) @ w).pow(2).mean(0))
    unit = w / std
    for i, slope in enumerate([0.5, 0.5 * 8**0.5, 4.0]):
        for c in range(2):
            row = i * 2 + c
            want = slope * unit[:, c]
            got = pool.bank.weight[row].double()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            assert float(pool.bank.bias[row]) == pytest.approx(-float(want @ mx), rel=1e-4)
    assert pool.cf_started
    ols = torch.linalg.solve(cxx, cxe)
    assert float(w[1, 0] / ols[1, 0]) < 0.6  # the ridge really shrank input 1's weight


def test_output_error_statistics_merge_uneven_batches_and_skip_empty_and_bad_ones():
    g = torch.Generator().manual_seed(2)
    v = torch.rand(6, 2, 1, generator=g, dtype=torch.float64)
    e = torch.randn(6, 3, generator=g, dtype=torch.float64)
    stats = OutputErrorStats(2, 1, 3, "cpu")
    assert stats.fold_output_error(v[:0], e[:0]) is None  # empty: nothing folded
    stats.fold_output_error(v[:1], e[:1])  # a single pattern counts
    assert int(stats.count) == 1
    bad = e[1:2].clone()
    bad[0, 1] = float("inf")
    *_, ok = stats.fold_output_error(v[1:2], bad)
    assert not bool(ok) and int(stats.skipped) == 1 and int(stats.count) == 1
    stats.fold_output_error(v[1:], e[1:])
    vc, ec = v - v.mean(0), e - e.mean(0)
    assert int(stats.count) == 6
    torch.testing.assert_close(stats.mean_v, v.mean(0))
    torch.testing.assert_close(stats.mean_e, e.mean(0))
    torch.testing.assert_close(stats.m_ve, torch.einsum("npc,no->pco", vc, ec))
    torch.testing.assert_close(stats.m_vv, (vc * vc).sum(0))
    torch.testing.assert_close(stats.m_ee, (ec * ec).sum(0))


def test_a_non_finite_output_error_gives_no_gradient_and_is_counted():
    layer = _layer(nn.Linear(3, 2))
    pool = OutputErrorPool.from_pool(layer.draw_candidates(2, generator=torch.Generator()))
    pool.source = OutputError()
    pool.source.error = torch.tensor([[1.0, float("nan")], [0.5, 2.0], [0.0, 1.0]])
    v = pool.outputs(torch.randn(3, 3), None)
    grad = pool.objective_gradient(v, torch.zeros(3, 2))
    assert grad.shape == v.shape and bool((grad == 0).all())
    assert int(pool.stats.skipped) == 1 and int(pool.stats.count) == 0


def _conv_pool(pool_size: int, channels: int) -> OutputErrorPool:
    layer = _layer(nn.Conv1d(2, channels, 1))
    draw = layer.draw_candidates(pool_size, generator=torch.Generator().manual_seed(0))
    pool = OutputErrorPool.from_pool(draw)
    pool.source = OutputError()
    return pool


def test_output_error_in_a_convolution_of_one_sample_one_candidate_one_channel():
    pool = _conv_pool(1, 1)
    x = torch.randn(1, 2, 5)
    pool.source.error = torch.tensor([[0.5, -1.0]])
    v = pool.outputs(x, None)  # (B=1, P=1, C=1, 5)
    grad = pool.objective_gradient(v, torch.zeros(1, 1, 5))
    assert grad.shape == v.shape and int(pool.stats.count) == 5  # 5 positions folded


def test_output_error_in_a_convolution_equals_its_positions_as_patterns():
    # Each position is a pattern carrying its sample's output error.
    conv, flat = _conv_pool(2, 3), _layer(nn.Linear(2, 3))
    flat_pool = OutputErrorPool.from_pool(flat.draw_candidates(2, generator=torch.Generator()))
    flat_pool.source = OutputError()
    x = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(3))
    err = torch.tensor([[1.0, -0.5], [0.25, 2.0]])
    conv.source.error = err
    v = conv.outputs(x, None)  # (2, 2, 3, 4)
    grad = conv.objective_gradient(v, torch.zeros(2, 3, 4))
    v_rows = v.permute(0, 3, 1, 2).reshape(8, 2, 3)
    flat_pool.source.error = err.repeat_interleave(4, 0)
    want = flat_pool.objective_gradient(v_rows, torch.zeros(8, 3))
    torch.testing.assert_close(grad.permute(0, 3, 1, 2).reshape(8, 2, 3), want)
    torch.testing.assert_close(conv.stats.m_ve, flat_pool.stats.m_ve)
    conv.source.error = torch.zeros(2, 3, 2)  # an output per position, not per sample
    with pytest.raises(PhaseError, match="one output per sample"):
        conv.objective_gradient(v, torch.zeros(2, 3, 4))


def _warm(pool, gen, batches, n=20):
    grads = []
    for _ in range(batches):
        x = torch.randn(n, 3, generator=gen)
        v = pool.outputs(x, None)
        grads.append(pool.objective_gradient(v, torch.randn(n, 2, generator=gen), x))
    return grads


def test_closed_form_warm_up_returns_gradients_then_starts_once_and_counts_afresh():
    gen = torch.Generator().manual_seed(6)
    pool = ClosedFormRule(pool_size=2, warmup=3).make_pool(_layer(nn.Linear(3, 2)), gen)
    grads = _warm(pool, gen, 2)
    assert not pool.cf_started and all(g.shape == (20, 2, 2) for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # the warm-up's candidates learn
    _warm(pool, gen, 1)  # the third batch: the start
    assert pool.cf_started
    started = pool.bank.weight.detach().clone()
    sums = pool.cf_xx.clone()
    _warm(pool, gen, 2, n=7)  # two batches after the start
    assert torch.equal(pool.bank.weight, started)  # started once, not again
    assert torch.equal(pool.cf_xx, sums)  # the sums stop at the start
    assert int(pool.stats.count) == 14  # counted afresh from the first batch after


def test_a_pool_of_one_starts_at_the_first_slope():
    gen = torch.Generator().manual_seed(7)
    pool = ClosedFormRule(pool_size=1, warmup=1).make_pool(_layer(nn.Linear(3, 2)), gen)
    x = torch.randn(50, 3, generator=gen)
    pool.objective_gradient(pool.outputs(x, None), x[:, :2] * 2.0, x)
    assert pool.cf_started
    pre = x.double() @ pool.bank.weight.double().T + pool.bank.bias.double()
    assert pre.std(0, unbiased=False).tolist() == pytest.approx([0.5, 0.5], rel=1e-3)


def test_closed_form_statistics_round_trip_whole():
    gen = torch.Generator().manual_seed(8)
    layer = _layer(nn.Linear(3, 2))
    pool = ClosedFormRule(pool_size=2, warmup=5).make_pool(layer, gen)
    _warm(pool, gen, 2)
    state = pool.statistics_state_dict()
    fresh = ClosedFormRule(pool_size=2, warmup=5).make_pool(layer, gen)
    fresh.load_statistics_state_dict(state)
    assert int(fresh.stats.count) == 40 and fresh.cf_batches == 2
    torch.testing.assert_close(fresh.stats.m_ve, pool.stats.m_ve)
    torch.testing.assert_close(fresh.cf_xe, pool.cf_xe)


def _output_stats():
    g = torch.Generator().manual_seed(9)
    v = torch.rand(8, 2, 3, generator=g, dtype=torch.float64)
    e = torch.randn(8, 4, generator=g, dtype=torch.float64)
    stats = OutputErrorStats(2, 3, 4, "cpu")
    stats.fold_output_error(v, e)
    vc, ec = v - v.mean(0), e - e.mean(0)
    cov = torch.einsum("npc,no->pco", vc, ec)
    r = cov / torch.sqrt((vc**2).sum(0)[..., None] * (ec**2).sum(0))
    return stats, cov, r


def test_output_error_scores_and_signs_by_hand():
    stats, cov, r = _output_stats()
    torch.testing.assert_close(stats.score("covariance"), cov.abs().sum(-1))
    torch.testing.assert_close(stats.score("pearson"), r.abs().sum(-1))
    torch.testing.assert_close(stats.pearson_per_output(), r)
    assert torch.equal(stats.sign(), torch.where(cov >= 0, 1.0, -1.0).to(stats.sign().dtype))
    with pytest.raises(ValueError, match="objective must be one of"):
        stats.score("mse")


def test_output_error_pool_statistics_shapes_and_options():
    stats, _, _ = _output_stats()
    saved = {k: getattr(stats, k) for k in ("mean_v", "m_ve", "m_vv", "mean_e", "m_ee")}
    shapes = OutputErrorPool.statistics_shapes(2, 3, saved)
    assert shapes["m_ve"] == (2, 3, 4) and shapes["mean_e"] == (4,) and shapes["m_ee"] == (4,)
    assert shapes["mean_v"] == (2, 3) and shapes["m_vv"] == (2, 3)
    assert OutputErrorPool.statistics_shapes(2, 3, {})["m_ve"] == (2, 3)  # none saved yet
    assert OutputErrorPool.saved_options({"stats": saved}) == {"outputs": 4}


def test_output_error_pool_refusals():
    layer = _layer(nn.Linear(3, 2))
    pool = OutputErrorPool.from_pool(layer.draw_candidates(2, generator=torch.Generator()))
    v = pool.outputs(torch.randn(5, 3), None)
    with pytest.raises(PhaseError, match="saw no output error"):
        pool.objective_gradient(v, torch.zeros(5, 2))
    pool.source = OutputError()
    with pytest.raises(PhaseError, match="saw no output error"):
        pool.objective_gradient(v, torch.zeros(5, 2))
    pool.source.error = torch.randn(4, 3)  # 4 outputs for 5 patterns
    with pytest.raises(PhaseError, match=r"patterns \(5\) to match the output's \(4\)"):
        pool.objective_gradient(v, torch.zeros(5, 2))
    pool.source.error = torch.randn(5, 3)
    pool.objective_gradient(v, torch.zeros(5, 2))  # sized at the first batch: 3 outputs
    assert pool.stats.mean_e.shape == (3,) and int(pool.stats.count) == 5
    pool.source.error = torch.randn(5, 4)
    with pytest.raises(PhaseError, match="output size changed inside a dendrite phase"):
        pool.objective_gradient(v, torch.zeros(5, 2))


def test_through_the_layer_a_closed_form_pool_gets_its_input_and_starts():
    gen = torch.Generator().manual_seed(10)
    layer = _layer(nn.Linear(3, 2))
    pool = ClosedFormRule(pool_size=2, warmup=2).make_pool(layer, gen)
    assert ClosedFormPool.from_pool(layer.draw_candidates(2, generator=gen)).warmup == 20
    layer.start_dendrite_phase(pool)
    for _ in range(2):
        layer(torch.randn(16, 3, generator=gen)).pow(2).sum().backward()
    assert pool.cf_started and pool.cf_batches == 2


def test_a_single_pattern_is_not_enough_to_start():
    gen = torch.Generator().manual_seed(11)
    pool = ClosedFormRule(pool_size=2, warmup=1).make_pool(_layer(nn.Linear(3, 2)), gen)
    x = torch.randn(1, 3, generator=gen)
    pool.objective_gradient(pool.outputs(x, None), torch.randn(1, 2, generator=gen), x)
    assert not pool.cf_started  # one pattern: no covariance yet
    x = torch.randn(1, 3, generator=gen)
    pool.objective_gradient(pool.outputs(x, None), torch.randn(1, 2, generator=gen), x)
    assert pool.cf_started  # two patterns


def test_a_closed_form_state_lacking_a_sum_is_refused():
    gen = torch.Generator().manual_seed(12)
    pool = ClosedFormRule(pool_size=2).make_pool(_layer(nn.Linear(3, 2)), gen)
    state = pool.statistics_state_dict()
    del state["cf_xe"]
    with pytest.raises(PhaseError, match="closed-form candidate state lacks 'cf_xe'"):
        pool.load_statistics_state_dict(state)


def test_output_error_pearson_gradient_is_the_batch_correlations_by_autograd():
    g = torch.Generator().manual_seed(13)
    layer = _layer(nn.Linear(2, 3), objective="pearson")
    pool = OutputErrorPool.from_pool(layer.draw_candidates(2, generator=g))
    pool.source = OutputError()
    v = torch.rand(9, 2, 3, generator=g, dtype=torch.float64)
    e = torch.randn(9, 4, generator=g, dtype=torch.float64)
    pool.source.error = e
    got = pool.objective_gradient(v, torch.zeros(9, 3, dtype=torch.float64))
    vv = v.clone().requires_grad_(True)
    vc, ec = vv - vv.mean(0), e - e.mean(0)
    r = torch.einsum("npc,no->pco", vc, ec) / torch.sqrt(
        (vc * vc).sum(0)[..., None] * (ec * ec).sum(0)
    )
    (want,) = torch.autograd.grad(-r.abs().sum(), vv)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
