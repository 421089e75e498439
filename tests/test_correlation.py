"""Streaming statistics and the candidate objective's gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perforate import CandidateStats, DendriteConfig, DendriticLayer, surrogate_gradient
from perforate.kinds import KINDS


def _direct(v: torch.Tensor, e: torch.Tensor):
    vc, ec = v - v.mean(0), e - e.mean(0)
    cov = torch.einsum("npc,nc->pc", vc, ec)
    r = cov / torch.sqrt((vc**2).sum(0) * (ec**2).sum(0)[None])
    return cov, r


def test_streaming_equals_full_batch_even_with_a_large_error_offset(gen):
    v = torch.rand(1000, 3, 4, generator=gen, dtype=torch.float64)
    # A tiny error signal on a large offset: naive float32 sums would lose it.
    e = 1e3 + 1e-3 * torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    stats = CandidateStats(3, 4)
    for vb, eb in zip(v.split(77), e.split(77), strict=True):
        stats.fold(vb.float(), eb.float())
    cov, r = _direct(v.float().double(), e.float().double())
    assert int(stats.count) == 1000
    torch.testing.assert_close(stats.pearson(), r, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(stats.covariance(), cov, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(stats.mean_v, v.float().double().mean(0), rtol=1e-6, atol=1e-7)


def test_saturated_candidate_gives_zero_correlation_and_zero_gradient():
    stats = CandidateStats(1, 2)
    v = torch.full((10, 1, 2), 1.0)
    e = torch.randn(10, 2)
    g = surrogate_gradient(v, e, stats, "pearson")
    assert torch.equal(g, torch.zeros_like(g))  # not e / sqrt(1e-30): about 1e14
    assert torch.equal(stats.pearson(), torch.zeros(1, 2, dtype=torch.float64))


def _pool(gen, n=50, f=6, p=3, c=4):
    x = torch.randn(n, f, generator=gen, dtype=torch.float64)
    w = (0.5 * torch.randn(p * c, f, generator=gen, dtype=torch.float64)).requires_grad_(True)
    e = torch.randn(n, c, generator=gen, dtype=torch.float64)
    return x, w, e


@pytest.mark.parametrize("objective", ["covariance", "pearson"])
def test_surrogate_gradient_equals_autograd_of_full_batch_objective(objective, gen):
    x, w, e = _pool(gen)
    p, c = 3, 4
    v = torch.sigmoid(x @ w.T).reshape(-1, p, c)
    cov, r = _direct(v, e)
    objective_value = (cov if objective == "covariance" else r).abs().sum()
    (expected,) = torch.autograd.grad(objective_value, w)
    v2 = torch.sigmoid(x @ w.T).reshape(-1, p, c)
    v2.backward(surrogate_gradient(v2.detach(), e, CandidateStats(p, c), objective))
    torch.testing.assert_close(w.grad, -expected, rtol=1e-8, atol=1e-10)


def test_surrogate_gradient_equals_fahlmans_closed_form(gen):
    x, w, e = _pool(gen)
    p, c = 3, 4
    v = torch.sigmoid(x @ w.T).reshape(-1, p, c)
    v.backward(surrogate_gradient(v.detach(), e, CandidateStats(p, c), "covariance"))
    # dS/dw_{p,c} = sum_n sigma_{p,c} (E_{n,c} - mean E_c) g'(net_{n,p,c}) x_n
    vd = v.detach()
    sigma = torch.sign(torch.einsum("npc,nc->pc", vd - vd.mean(0), e - e.mean(0)))
    coef = sigma * (e - e.mean(0))[:, None, :] * vd * (1 - vd)  # (n, p, c)
    closed = torch.einsum("npc,nf->pcf", coef, x).reshape(p * c, -1)
    torch.testing.assert_close(w.grad, -closed, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", ["Linear", "Conv2d"])
def test_layer_delivers_closed_form_gradient_from_users_backward(kind, gen):
    """Through a real backward: dL/dy = E exactly when L = sum(y * E)."""
    if kind == "Linear":
        base, x = nn.Linear(5, 3), torch.randn(4, 7, 5, generator=gen)
    else:
        base, x = nn.Conv2d(2, 3, 3, padding=1), torch.randn(4, 2, 5, 5, generator=gen)
    layer = DendriticLayer(
        base.double(), KINDS[kind], DendriteConfig(objective="covariance", cascade=False)
    )
    x = x.double()
    layer.start_dendrite_phase(candidates=2, generator=gen)
    with torch.no_grad():
        layer.candidates.bank.weight.normal_(0, 0.5, generator=gen)
    y = layer(x)
    e = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * e).sum().backward()
    # Expected, by hand: patterns are all positions, neurons on the channel/last axis.
    net = layer.candidates.bank(x)
    v = torch.sigmoid(net)
    to_rows = layer.kind.patterns_last
    vr, er = to_rows(v).reshape(-1, 2, 3), to_rows(e)
    sigma = torch.sign(torch.einsum("npc,nc->pc", vr - vr.mean(0), er - er.mean(0)))
    coef = -(sigma * (er - er.mean(0))[:, None, :] * vr * (1 - vr)).reshape(vr.shape[0], 6)
    if kind == "Linear":
        xr = x.reshape(-1, 5)
        expected_w = coef.T @ xr
        expected_b = coef.sum(0)
    else:
        coef_map = coef.reshape(4, 5, 5, 6).permute(0, 3, 1, 2)
        expected_w = torch.nn.grad.conv2d_weight(
            x, layer.candidates.bank.weight.shape, coef_map, padding=1
        )
        expected_b = coef.sum(0)
    torch.testing.assert_close(layer.candidates.bank.weight.grad, expected_w, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(layer.candidates.bank.bias.grad, expected_b, rtol=1e-8, atol=1e-10)
    assert int(layer.stats.count) == vr.shape[0]


def test_error_is_captured_when_everything_upstream_is_frozen(gen):
    base = nn.Linear(4, 3)
    base.requires_grad_(False)
    layer = DendriticLayer(base, KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(generator=gen)
    x = torch.randn(8, 4)  # no grad on the input, no grad on the base: first layer, frozen
    y = layer(x)
    assert y.requires_grad
    torch.nn.functional.mse_loss(y, torch.randn(8, 3)).backward()
    assert int(layer.stats.count) == 8
    assert layer.candidates.bank.weight.grad.abs().sum() > 0


def test_non_finite_error_batch_is_skipped_and_counted(gen):
    layer = DendriticLayer(nn.Linear(4, 3), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(generator=gen)
    y = layer(torch.randn(8, 4))
    (y * float("nan")).sum().backward()
    assert layer.stats.skipped_batches == 1 and int(layer.stats.count) == 0
    assert torch.equal(
        layer.candidates.bank.weight.grad, torch.zeros_like(layer.candidates.bank.weight)
    )
    layer(torch.randn(8, 4)).sum().backward()
    assert int(layer.stats.count) == 8 and torch.isfinite(layer.stats.pearson()).all()


def test_candidate_learns_a_known_nonlinear_residual_and_install_lowers_the_loss(gen):
    """The neuron's residual is sigmoid(4 x.b): a candidate must find it (|r| >= 0.9)."""
    n, f = 2000, 5
    x = torch.randn(n, f, generator=gen)
    a, b = torch.randn(f, generator=gen), torch.randn(f, generator=gen)
    target = (x @ a + 0.8 * torch.sigmoid(2 * (x @ b) / f**0.5))[:, None]
    model = nn.Sequential(nn.Linear(f, 1))
    with torch.no_grad():  # the neuron has the linear part: its residual is the sigmoid
        model[0].weight.copy_(a[None])
        model[0].bias.zero_()
    from perforate import add_dendrites

    add_dendrites(model)
    layer = model[0]
    loss_before = nn.functional.mse_loss(model(x), target).item()
    layer.start_dendrite_phase(candidates=4, generator=gen)
    opt = torch.optim.Adam(layer.candidate_parameters(), lr=0.05)
    for _ in range(15):
        layer.stats.reset()
        for idx in torch.randperm(n, generator=gen).split(100):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[idx]), target[idx]).backward()
            opt.step()
    best = layer.stats.pearson().abs().max().item()
    assert best >= 0.9, best
    layer.install(layer.stats.score("pearson").argmax(0))
    assert nn.functional.mse_loss(model(x), target).item() == pytest.approx(loss_before)
    opt = torch.optim.Adam([layer.output_weight, *layer.base.parameters()], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * loss_before, (loss.item(), loss_before)
