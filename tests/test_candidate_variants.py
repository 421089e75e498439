"""Candidate variants as rules (issue 14, regime 4): restricted fan-in, closed-form start,
output-error (boosting-like) candidates. Each against hand-computed values, through a
whole controller run, and resumed bit for bit inside a dendrite phase."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import perforate
from perforate import DendriteConfig, Perforator
from perforate.candidate_variants import (
    ClosedFormPool,
    OutputError,
    OutputErrorPool,
    OutputErrorStats,
    SparsePool,
    sample_fan_in_mask,
)
from perforate.convert import dendritic_layers
from perforate.kinds import kind_of
from perforate.rules import ClosedFormRule, OutputErrorRule, SparseRule, resolve_rule


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def adam(params):
    return torch.optim.Adam(params, lr=0.05)


def batch(gen, n=32):
    x = torch.randn(n, 6, generator=gen)
    return x, (x[:, :3] * x[:, 3:]).sum(1).gt(0).long() + x[:, 0].gt(1).long()


def train_steps(model, ctl, gen, steps):
    for _ in range(steps):
        x, t = batch(gen)
        ctl.optimizer.zero_grad()
        F.cross_entropy(model(x), t).backward()
        ctl.optimizer.step()


def into_dendrite_phase(method, gen, **kw):
    model = mlp()
    cfg = DendriteConfig(method=method, switch_mode="fixed", fixed_neuron_epochs=1, **kw)
    ctl = Perforator(model, cfg, optimizer=adam, seed=3)
    train_steps(model, ctl, gen, 3)
    ctl.end_epoch(0.5)  # the fixed neuron phase ends: candidates attach
    assert ctl.phase.value == "dendrite"
    return model, ctl


def test_fan_in_mask_has_exactly_k_distinct_inputs_per_row():
    mask = sample_fan_in_mask(40, 10, 3, torch.Generator().manual_seed(0))
    assert mask.shape == (40, 10) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [3] * 40
    assert len({tuple(r.tolist()) for r in mask}) > 10  # sampled per row, not one pattern
    assert sample_fan_in_mask(2, 4, 9, None).sum(1).tolist() == [4, 4]  # k capped at fan-in


def test_sparse_candidates_compute_on_their_inputs_only_and_zeros_stay_zero(gen):
    model, ctl = into_dendrite_phase("sparse", gen, dendrite_fan_in=2)
    layer = dendritic_layers(model)["0"]
    pool = layer.candidates
    assert isinstance(pool, SparsePool)
    x = torch.randn(7, 6, generator=gen)
    w = pool.bank.weight * pool.mask
    assert torch.equal(pool.bank_output(x), F.linear(x, w, pool.bank.bias))
    train_steps(model, ctl, gen, 5)
    assert pool.bank.weight[~pool.mask].abs().max() == 0  # Adam never moved them
    assert pool.bank.weight[pool.mask].abs().min() > 0
    for _ in range(5):
        if ctl.end_epoch(0.5).value == "installed":
            break
        train_steps(model, ctl, gen, 2)
    counts = layer.dendrite_count
    assert int(counts.sum()) > 0
    _, dend = layer.parameter_counts()
    assert dend == int(counts.sum()) * (2 + 2)  # fan-in 2, bias, output weight
    rows = layer.dendrites.weight[layer.slot_mask.flatten().bool()]
    assert (rows != 0).sum(1).tolist() == [2] * int(counts.sum())


def test_sparse_convolution_masks_whole_input_channels(gen):
    conv = nn.Conv2d(5, 3, 3)
    layer = perforate.DendriticLayer(conv, kind_of(conv), DendriteConfig())
    pool = SparseRule(fan_in=2).make_pool(layer, gen)
    nonzero = pool.input_weight().ne(0).any(-1).any(-1)  # (rows, in_channels)
    assert nonzero.sum(1).tolist() == [2] * pool.bank.weight.shape[0]
    assert torch.equal(nonzero, pool.mask)


def test_e97_sparse_refuses_learning_dendrite_inputs():
    with pytest.raises(perforate.ConfigError, match="dendrites_learn=False"):
        resolve_rule(DendriteConfig(method="sparse", dendrites_learn=True))


def test_closed_form_start_is_the_ridge_direction_of_the_error_at_p_slopes(gen):
    layer = perforate.DendriticLayer(nn.Linear(4, 2), kind_of(nn.Linear(4, 2)), DendriteConfig())
    pool = ClosedFormRule(pool_size=4, warmup=3).make_pool(layer, gen)
    true = torch.tensor([[1.0, -2.0, 0.0, 0.5], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    xs = []
    for _ in range(3):
        x = torch.randn(500, 4, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 1.0]) + 3.0
        xs.append(x)
        e = (x.double() @ true.T).float()  # error linear in the input
        v = pool.outputs(x, None)
        pool.objective_gradient(v, e, x)
    assert pool.cf_started
    x = torch.cat(xs).double()
    w = pool.bank.weight.double().reshape(4, 2, 4)  # (P, C, F)
    for c in range(2):
        cos = F.cosine_similarity(w[0, c], true[c], dim=0)
        assert float(cos) > 0.999  # ridge on noise-free data: the true direction
        pre = x @ w[:, c].T + pool.bank.bias.double().reshape(4, 2)[:, c]
        assert pre.std(0).tolist() == pytest.approx([0.5, 1.0, 2.0, 4.0], rel=2e-3)
        assert pre.mean(0).abs().max() < 1e-3  # centred on the mean input


def test_e97_closed_form_refuses_convolutions(gen):
    conv = nn.Conv1d(2, 3, 3)
    layer = perforate.DendriticLayer(conv, kind_of(conv), DendriteConfig())
    with pytest.raises(perforate.PhaseError, match="supports Linear layers"):
        ClosedFormRule().make_pool(layer, gen)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3, 2))
    with pytest.raises(perforate.ConfigError, match="convolutions"):  # before any training
        Perforator(model, DendriteConfig(method="closed_form"), optimizer=adam)


def test_closed_form_drops_the_warm_up_statistics_at_the_first_batch_after_the_start(gen):
    layer = perforate.DendriticLayer(nn.Linear(4, 2), kind_of(nn.Linear(4, 2)), DendriteConfig())
    pool = ClosedFormRule(pool_size=2, warmup=2).make_pool(layer, gen)
    for n in (30, 30):
        x = torch.randn(n, 4, generator=gen)
        g = pool.objective_gradient(pool.outputs(x, None), torch.randn(n, 2, generator=gen), x)
    assert pool.cf_started and int(pool.stats.count) == 60  # a judgement now has a window
    assert g.abs().max() == 0  # no stale step on the weights just set
    x = torch.randn(7, 4, generator=gen)
    pool.objective_gradient(pool.outputs(x, None), torch.randn(7, 2, generator=gen), x)
    assert int(pool.stats.count) == 7  # only the new candidates' batch


def test_output_error_statistics_and_gradient_by_hand():
    g = torch.Generator().manual_seed(5)
    v = torch.rand(9, 2, 3, generator=g, dtype=torch.float64)
    e = torch.randn(9, 4, generator=g, dtype=torch.float64)
    stats = OutputErrorStats(2, 3, 4, "cpu")
    stats.fold_output_error(v[:4], e[:4])
    stats.fold_output_error(v[4:], e[4:])
    vc, ec = v - v.mean(0), e - e.mean(0)
    cov = torch.einsum("npc,no->pco", vc, ec)
    assert torch.allclose(stats.m_ve, cov)
    assert torch.allclose(stats.covariance(), cov.abs().sum(-1))
    r = cov / torch.sqrt((vc**2).sum(0)[..., None] * (ec**2).sum(0))
    best = r.abs().argmax(-1, keepdim=True)
    assert torch.allclose(stats.pearson(), r.gather(-1, best).squeeze(-1))
    # The covariance objective's gradient: -d/dV sum_o |cov| on one batch, by autograd.
    pool = OutputErrorPool.from_pool(
        perforate.DendriticLayer(
            nn.Linear(2, 3), kind_of(nn.Linear(2, 3)), DendriteConfig()
        ).draw_candidates(2)
    )
    pool.source = OutputError()
    pool.source.error = e.float()
    got = pool.objective_gradient(v.float(), torch.zeros(9, 3))
    vv = v.clone().requires_grad_(True)
    s = torch.einsum("npc,no->pco", vv - vv.mean(0), ec).abs().sum()
    (want,) = torch.autograd.grad(-s, vv)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_output_error_pearson_gives_a_constant_candidate_no_gradient():
    layer = perforate.DendriticLayer(
        nn.Linear(4, 3), kind_of(nn.Linear(4, 3)), DendriteConfig(objective="pearson")
    )
    pool = OutputErrorPool.from_pool(layer.draw_candidates(2))
    pool.source = OutputError()
    pool.source.error = torch.randn(8, 5)
    v = pool.outputs(torch.ones(8, 4), None)  # every pattern alike: V constant
    assert pool.objective_gradient(v, torch.zeros(8, 3)).abs().max() == 0


@pytest.mark.parametrize(
    ("method", "rule", "pool"),
    [
        ("sparse", SparseRule, SparsePool),
        ("closed_form", ClosedFormRule, ClosedFormPool),
        ("output_error", OutputErrorRule, OutputErrorPool),
    ],
)
def test_each_variant_runs_through_the_controller_and_resumes_bit_for_bit(
    method, rule, pool, tmp_path
):
    gen = torch.Generator().manual_seed(7)
    kw = {"closed_form_batches": 2} if method == "closed_form" else {}
    model, ctl = into_dendrite_phase(method, gen, **kw)
    assert type(ctl.rule) is rule
    assert all(type(layer.candidates) is pool for layer in ctl.layers.values())
    train_steps(model, ctl, gen, 1)  # mid-warm-up for closed_form
    path = ctl.save_checkpoint(tmp_path / "c.safetensors")
    state = gen.get_state()
    train_steps(model, ctl, gen, 4)
    ctl.end_epoch(0.5)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    gen.set_state(state)
    model2 = mlp(seed=1)  # other weights: the checkpoint must replace them
    ctl2 = Perforator.resume(path, model2, optimizer=adam)
    assert all(type(layer.candidates) is pool for layer in ctl2.layers.values())
    train_steps(model2, ctl2, gen, 4)
    ctl2.end_epoch(0.5)
    got = model2.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # The run goes on to an install with the variant's dendrites.
    for _ in range(10):
        train_steps(model2, ctl2, gen, 3)
        if ctl2.end_epoch(0.5).value in ("installed", "done"):
            break
    assert ctl2.dendrites_kept >= 0 and ctl2.phase.value in ("neuron", "done")


def test_e97_output_error_needs_the_output_tensor(gen):
    class Boxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return {"logits": self.net(x)}

    model = Boxed()
    cfg = DendriteConfig(method="output_error", switch_mode="fixed", fixed_neuron_epochs=1)
    ctl = Perforator(model, cfg, optimizer=adam)
    x, t = batch(gen)
    F.cross_entropy(model(x)["logits"], t).backward()  # neuron phase: no tap needed
    ctl.optimizer.step()
    ctl.end_epoch(0.5)
    with pytest.raises(perforate.PhaseError, match="returns the output"):
        model(torch.randn(2, 6))
