"""Behaviours of the core that mutation testing found unpinned, each against a value
computed independently (by hand, by autograd, or by a single-process reference)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import perforate
from perforate import (
    BestCandidate,
    CandidateStats,
    DendriteConfig,
    DendriticLayer,
    Event,
    PatienceSwitching,
    Perforator,
    surrogate_gradient,
)
from perforate.kinds import KINDS
from perforate.switching import Improvement


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def step(model, ctl, gen, n=16):
    x, t = torch.randn(n, 3, generator=gen), torch.randn(n, 2, generator=gen)
    ctl.optimizer.zero_grad()
    nn.functional.mse_loss(model(x), t).backward()
    ctl.optimizer.step()


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def drive(ctl, model, scores, gen):
    events = []
    for s in scores:
        step(model, ctl, gen)
        events.append(ctl.end_epoch(s))
    return events


# --- selection: the sign of a non-zero start, selective installation -------------------
def _layer_with_stats(m_ve, m_vv, m_ee, mean_v=None):
    """A Linear layer of C neurons in a dendrite phase whose statistics are set by hand."""
    p, c = m_ve.shape
    layer = DendriticLayer(nn.Linear(2, c), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=p)
    s = layer.stats
    s.count = torch.tensor(10.0, dtype=torch.float64)
    s.m_ve.copy_(m_ve)
    s.m_vv.copy_(m_vv)
    s.m_ee.copy_(m_ee)
    if mean_v is not None:
        s.mean_v.copy_(mean_v)
    return layer


def test_start_weight_points_against_the_error_for_either_sign_of_correlation():
    # Two neurons: the best candidate of neuron 0 correlates +0.8, of neuron 1 -0.6.
    m_ve = torch.tensor([[0.8, 0.1], [0.2, -0.6]], dtype=torch.float64)
    layer = _layer_with_stats(
        m_ve, torch.ones(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    )
    pick = BestCandidate(output_weight_init=0.25).select(layer)
    assert pick.choice.tolist() == [0, 1]
    # dL/dv = sum E a: with r > 0 the descent direction is v < 0, and vice versa.
    assert pick.output_weight.tolist() == [-0.25, 0.25]
    assert pick.summary["mean_abs_r"] == pytest.approx(0.7)
    assert pick.summary["installed"] == 2
    assert pick.summary["mean_output_std"] == pytest.approx((1 / 10) ** 0.5)


def test_install_compensates_the_bias_by_start_times_mean_activation():
    m_ve = torch.tensor([[0.8, -0.5]], dtype=torch.float64)
    mean_v = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    layer = _layer_with_stats(
        m_ve, torch.ones(1, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), mean_v
    )
    bias = layer.base.bias.detach().clone()
    pick = BestCandidate(output_weight_init=0.5).select(layer)
    layer.install(
        pick.choice, output_weight=pick.output_weight, activation_mean=pick.activation_mean
    )
    assert layer.output_weight[0].tolist() == [-0.5, 0.5]
    expected = bias - torch.tensor([-0.5 * 0.3, 0.5 * 0.7])
    torch.testing.assert_close(layer.base.bias.detach(), expected)


@pytest.mark.parametrize(
    "threshold,expected",
    [
        (0.0, [0, 0, 0]),
        (0.1, [-1, 0, 0]),
        (0.3, [-1, 0, 0]),
        (0.31, [-1, -1, 0]),
        (0.6, [-1, -1, -1]),
    ],
)
def test_selective_installation_keeps_exactly_the_neurons_at_or_above_threshold(
    threshold, expected
):
    m_ve = torch.tensor([[0.05, -0.3, 0.5]], dtype=torch.float64)
    layer = _layer_with_stats(
        m_ve, torch.ones(1, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    )
    pick = BestCandidate(install_threshold=threshold).select(layer)
    assert pick.choice.tolist() == expected
    assert pick.summary.get("installed", 0) == sum(c >= 0 for c in expected)


def test_a_neuron_at_the_cap_gets_nothing_and_the_best_is_by_the_objective():
    # Covariance prefers candidate 1 of neuron 0 (|0.9| > |0.5|); Pearson prefers 0.
    m_ve = torch.tensor([[0.5, 0.4], [0.9, 0.2]], dtype=torch.float64)
    m_vv = torch.tensor([[0.25, 1.0], [4.0, 1.0]], dtype=torch.float64)
    layer = _layer_with_stats(m_ve, m_vv, torch.ones(2, dtype=torch.float64))
    assert BestCandidate("covariance").select(layer).choice.tolist() == [1, 0]
    assert BestCandidate("pearson").select(layer).choice.tolist() == [0, 0]
    layer.dendrite_count[1] = 2
    assert BestCandidate("covariance", max_dendrites=2).select(layer).choice.tolist() == [1, -1]


def test_installing_nothing_ends_the_layers_dendrite_phase():
    layer = DendriticLayer(nn.Linear(2, 3), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=2)
    assert layer.install(torch.full((3,), -1)) == 0
    assert layer.phase.value == "neuron" and layer.candidates is None and layer.slots == 0
    assert layer.base.weight.requires_grad


# --- candidates -------------------------------------------------------------------------
def test_candidates_start_from_the_scaled_normal_and_see_installed_dendrites(gen):
    layer = DendriticLayer(
        nn.Linear(50, 40), KINDS["Linear"], DendriteConfig(candidate_init_scale=0.02)
    )
    layer.start_dendrite_phase(candidates=5, generator=gen)
    w = layer.candidates.bank.weight.detach()
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert w.mean().abs().item() < 0.002
    assert layer.candidates.cascade is None  # no installed dendrite to cascade from
    layer.install(torch.zeros(40, dtype=torch.long))
    layer.start_dendrite_phase(candidates=5, generator=gen)
    casc = layer.candidates.cascade.detach()
    assert casc.shape == (5, 1, 40) and casc.std().item() == pytest.approx(0.02, rel=0.1)


def _direct_pearson(v, e):
    vc, ec = v - v.mean(0), e - e.mean(0)
    cov = torch.einsum("np...,n...->p...", vc, ec)
    return cov / torch.sqrt(
        torch.einsum("np...,np...->p...", vc, vc) * torch.einsum("n...,n...->...", ec, ec)
    )


def test_pearson_gradient_through_a_conv_layer_equals_autograd(gen):
    x = torch.randn(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    w = 0.5 * torch.randn(2 * 3, 2, 3, 3, generator=gen, dtype=torch.float64)
    w.requires_grad_(True)
    e = torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)

    def v_of(weight):
        return torch.sigmoid(nn.functional.conv2d(x, weight)).unflatten(1, (2, 3))

    v = v_of(w)  # (B, P, C, H, W): patterns are batch x positions
    vp = v.permute(0, 3, 4, 1, 2).reshape(-1, 2, 3)
    ep = e.permute(0, 2, 3, 1).reshape(-1, 3)
    (expected,) = torch.autograd.grad(_direct_pearson(vp, ep).abs().sum(), w)
    v2 = v_of(w)
    v2.backward(surrogate_gradient(v2.detach(), e, CandidateStats(2, 3), "pearson"))
    torch.testing.assert_close(w.grad, -expected, rtol=1e-8, atol=1e-10)


def test_a_constant_candidate_gets_exactly_zero_pearson_gradient_not_a_blow_up(gen):
    v = torch.rand(20, 2, 3, generator=gen)
    v[:, 0, 1] = 1.0  # saturated
    v[:, 1, 2] = 0.5 + 1e-9 * torch.randn(20, generator=gen)  # constant to float32
    e = torch.randn(20, 3, generator=gen)
    g = surrogate_gradient(v, e, CandidateStats(2, 3), "pearson")
    assert torch.equal(g[:, 0, 1], torch.zeros(20)) and torch.equal(g[:, 1, 2], torch.zeros(20))
    assert g.abs().max() < 10  # the live candidates: O(1/sqrt(n)), not 1e14
    assert (g[:, 0, 0] != 0).all()


def test_two_ranks_folding_halves_equal_one_process_folding_the_whole(gen):
    """The DDP branch, in one process: two threads stand for two ranks, and an all-reduce
    made of a barrier and a shared sum stands for torch.distributed."""
    v = torch.rand(32, 2, 3, generator=gen, dtype=torch.float64)
    e = torch.randn(32, 3, generator=gen, dtype=torch.float64)
    barrier, slots = threading.Barrier(2), {}

    def reducer(rank):
        def reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            t.copy_(slots[0] + slots[1])
            barrier.wait()

        return reduce

    results = {}

    def rank(r, objective):
        stats = CandidateStats(2, 3)
        half = slice(16 * r, 16 * (r + 1))
        g = surrogate_gradient(v[half], e[half], stats, objective, reduce=reducer(r), world_size=2)
        results[r] = (stats, g)

    for objective in ("covariance", "pearson"):
        threads = [threading.Thread(target=rank, args=(r, objective)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        whole = CandidateStats(2, 3)
        g_whole = surrogate_gradient(v, e, whole, objective)
        for r in (0, 1):
            stats, g = results[r]
            for name in CandidateStats.FIELDS:
                torch.testing.assert_close(getattr(stats, name), getattr(whole, name))
            expected = g_whole[16 * r : 16 * (r + 1)]
            scale = 2 if objective == "pearson" else 1  # DDP averages the ranks' grads
            torch.testing.assert_close(g, expected * scale)


# --- switching ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "maximize,score,ref,expected",
    [
        (True, 1.05, 1.0, False),
        (True, 1.11, 1.0, True),
        (False, 0.95, 1.0, False),
        (False, 0.89, 1.0, True),
        (True, -0.95, -1.0, False),
        (True, -0.89, -1.0, True),
    ],
)
def test_relative_improvement_margin_is_relative_to_the_reference_magnitude(
    maximize, score, ref, expected
):
    assert Improvement(maximize, rel=0.1, abs=0.0).better(score, ref) is expected
    assert Improvement(maximize, rel=0.1, abs=0.0).better(score, ref, margin=False) is (
        score > ref if maximize else score < ref
    )


def test_absolute_margin_wins_when_larger_than_the_relative_one():
    imp = Improvement(True, rel=0.01, abs=0.2)
    assert not imp.better(1.15, 1.0) and imp.better(1.21, 1.0)


def test_dendrite_phase_ends_by_correlation_patience_with_a_relative_threshold():
    p = PatienceSwitching(
        Improvement(),
        dendrite_patience=2,
        dendrite_improvement_rel=0.1,
        dendrite_max_epochs=100,
    )
    p.start_dendrite_phase()
    # 0.105 is not 10% above 0.1; 0.2 is; then two evaluations without 10% more.
    assert [p.dendrite_epoch(c) for c in (0.1, 0.105, 0.2, 0.21, 0.215)] == [
        False,
        False,
        False,
        False,
        True,
    ]
    p.start_dendrite_phase()
    assert p.best_correlation is None and p.since_correlation == 0


def test_dendrite_phase_ends_at_its_maximum_length_even_while_improving():
    p = PatienceSwitching(Improvement(), dendrite_patience=5, dendrite_max_epochs=3)
    p.start_dendrite_phase()
    assert [p.dendrite_epoch(c) for c in (0.1, 0.2, 0.4)] == [False, False, True]


def test_a_controller_dendrite_phase_ends_by_patience_not_only_by_length(gen):
    model = tiny()
    cfg = DendriteConfig(
        patience=1,
        dendrite_patience=1,
        dendrite_improvement_rel=10.0,
        switch_mode="patience",
        dendrite_max_epochs=50,
    )
    ctl = Perforator(model, cfg, optimizer=sgd)
    events = drive(ctl, model, [0.1, 0.1, 0.0, 0.0], gen)
    # A 1000% relative improvement never happens: after one epoch without it, install.
    assert events == [Event.CONTINUE, Event.DENDRITE_PHASE, Event.CONTINUE, Event.INSTALLED]


# --- the controller's cycle decisions ---------------------------------------------------
def test_a_cycle_within_the_relative_margin_is_rejected_and_one_beyond_it_accepted(gen):
    model = tiny()
    cfg = DendriteConfig(
        patience=1,
        switch_mode="patience",
        dendrite_max_epochs=1,
        improvement_rel=0.1,
        max_retries=1,
    )
    ctl = Perforator(model, cfg, optimizer=sgd)
    # 1.05 is within 10% of the accepted 1.0: that cycle is retried; 1.2 is beyond it.
    scores = [1.0, 1.0, 0.0, 1.05, 0.0, 1.2, 1.2]
    events = drive(ctl, model, scores, gen)
    assert events == [
        Event.CONTINUE,
        Event.DENDRITE_PHASE,
        Event.INSTALLED,
        Event.RETRY,
        Event.INSTALLED,
        Event.CONTINUE,
        Event.DENDRITE_PHASE,
    ]
    # The best score recorded mid-run: the accepted one, or the cycle in flight's.
    assert [r.best_score for r in ctl.history] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2]
    assert ctl.retries == 0 and ctl.cycle == 2


def test_minimising_a_tie_does_not_replace_the_best_state(gen):
    model = tiny()
    ctl = Perforator(
        model, DendriteConfig(direction="minimize", patience=2, max_cycles=0), optimizer=sgd
    )
    step(model, ctl, gen)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    ctl.end_epoch(0.5)
    drive(ctl, model, [0.5, 0.7], gen)  # a tie, then worse: patience 2 runs out
    assert ctl.done and ctl.best_score == 0.5
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)


def test_a_rejected_first_install_rolls_back_to_the_plain_model(gen):
    model = tiny()
    ctl = Perforator(
        model,
        DendriteConfig(
            patience=1,
            switch_mode="patience",
            dendrite_max_epochs=1,
            max_retries=0,
            improvement_rel=0.0,
            improvement_abs=0.01,
        ),
        optimizer=sgd,
    )
    step(model, ctl, gen)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    events = [ctl.end_epoch(0.5), *drive(ctl, model, [0.5, 0.0, 0.505], gen)]
    assert events[-1] == Event.DONE
    assert ctl.dendrite_counts() == {"0": [0] * 4, "2": [0, 0]}
    assert sorted(model.state_dict()) == sorted(plain)
    assert all(torch.equal(model.state_dict()[k], plain[k]) for k in plain)


def test_max_epochs_inside_a_dendrite_phase_ends_cleanly_with_the_accepted_model(gen):
    model = tiny()
    ctl = Perforator(
        model,
        DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=10, max_epochs=3),
        optimizer=sgd,
    )
    step(model, ctl, gen)
    ctl.end_epoch(0.5)
    accepted = {k: v.clone() for k, v in model.state_dict().items()}
    events = drive(ctl, model, [0.4, 0.0], gen)
    assert events == [Event.DENDRITE_PHASE, Event.DONE]
    assert all(
        layer.phase.value == "neuron" and layer.candidates is None for layer in ctl.layers.values()
    )
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], accepted[k]) for k in accepted)


def test_the_candidate_optimizer_factory_builds_the_dendrite_phase_optimizer(gen):
    model = tiny()
    ctl = Perforator(
        model,
        DendriteConfig(patience=1),
        optimizer=sgd,
        candidate_optimizer=lambda p: torch.optim.Adam(p, lr=0.123),
    )
    assert isinstance(ctl.optimizer, torch.optim.SGD)
    drive(ctl, model, [0.1, 0.1], gen)
    assert isinstance(ctl.optimizer, torch.optim.Adam)
    assert ctl.optimizer.param_groups[0]["lr"] == 0.123
    cand = {id(p) for layer in ctl.layers.values() for p in layer.candidate_parameters()}
    assert {id(p) for p in ctl.parameters_in_use()} == cand


def test_reduce_on_plateau_is_stepped_with_the_score(gen):
    model = tiny()
    ctl = Perforator(
        model,
        DendriteConfig(patience=5),
        optimizer=sgd,
        scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode="max", patience=0, factor=0.5
        ),
    )
    drive(ctl, model, [0.5, 0.6], gen)
    assert ctl.optimizer.param_groups[0]["lr"] == 0.1  # improving: unchanged
    drive(ctl, model, [0.55], gen)
    assert ctl.optimizer.param_groups[0]["lr"] == 0.05  # worse: halved at once


def test_trainability_after_load_and_after_adoption(tmp_path, gen):
    model = tiny()
    ctl = Perforator(
        model,
        DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=1),
        optimizer=sgd,
    )
    drive(ctl, model, [0.1, 0.1, 0.0], gen)
    perforate.save(model, tmp_path / "m.safetensors")
    fresh = perforate.load(tiny(), tmp_path / "m.safetensors")
    layer = perforate.dendritic_layers(fresh)["0"]
    assert layer.output_weight.requires_grad and not layer.dendrites.weight.requires_grad
    Perforator(fresh, DendriteConfig(dendrites_learn=True), optimizer=sgd)
    assert layer.dendrites.weight.requires_grad and layer.output_weight.requires_grad


# --- defaults, immutability, small contracts ---------------------------------------------
def test_strategy_defaults_are_the_configs_defaults():
    from perforate import CorrelationRule, FixedSwitching, GradientRule

    cfg, gd = DendriteConfig(), DendriteConfig.reference_gd()
    assert BestCandidate() == BestCandidate.from_config(cfg)
    assert Improvement() == Improvement.from_config(cfg)
    a, b = CorrelationRule(), CorrelationRule.from_config(cfg)
    assert (a.selector, a.pool_size, a.dendrite_inputs_train, a.max_dendrites) == (
        b.selector,
        b.pool_size,
        b.dendrite_inputs_train,
        b.max_dendrites,
    )
    a, b = GradientRule(), GradientRule.from_config(gd)
    assert (a.max_dendrites, a.dendrite_inputs_train, a.cascade_init_scale) == (
        b.max_dendrites,
        b.dendrite_inputs_train,
        b.cascade_init_scale,
    )
    a, b = PatienceSwitching(Improvement()), PatienceSwitching.from_config(cfg)
    assert {k: v for k, v in vars(a).items()} == {k: v for k, v in vars(b).items()}
    assert vars(FixedSwitching()) == vars(FixedSwitching.from_config(cfg))


def test_value_objects_are_frozen():
    import dataclasses

    from perforate.selection import Selection

    for obj in (
        Improvement(),
        BestCandidate(),
        Selection(torch.tensor([-1, 0, 2]), torch.zeros(3), torch.zeros(1, 3), {}),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.__setattr__(next(iter(vars(obj))), None)
    assert Selection(torch.tensor([-1, 0, 2]), torch.zeros(3), torch.zeros(1, 3), {}).count == 2


def test_rules_without_a_dendrite_phase_refuse_install_and_selection_needs_candidates():
    from perforate import RestartRule

    with pytest.raises(NotImplementedError, match="restart"):
        RestartRule().install({})
    layer = DendriticLayer(nn.Linear(2, 3), KINDS["Linear"], DendriteConfig(), path="fc")
    with pytest.raises(ValueError, match="fc: no candidates"):
        BestCandidate().select(layer)


def test_a_rule_written_outside_inherits_frozen_dendrite_inputs(gen):
    from perforate import TrainingRule

    class Grow(TrainingRule):
        name = "grow"

        @classmethod
        def from_config(cls, config):
            return cls()

        def next_cycle(self, layers, generator):
            for layer in layers.values():
                n = layer.neurons
                layer.append_dendrites(
                    torch.arange(n),
                    torch.zeros(n, layer.base.in_features),
                    torch.zeros(n),
                    torch.zeros(n),
                )
            return Event.INSTALLED

    model = tiny()
    ctl = Perforator(model, DendriteConfig(patience=1), optimizer=sgd, rule=Grow())
    drive(ctl, model, [0.1, 0.1], gen)
    layer = ctl.layers["0"]
    assert layer.output_weight.requires_grad and not layer.dendrites.weight.requires_grad


def test_gradient_rule_cascade_starts_small_and_centred_and_draws_only_when_needed(gen):
    from perforate import GradientRule

    layer = DendriticLayer(nn.Linear(4, 400), KINDS["Linear"], DendriteConfig())
    layers = {"fc": layer}
    rule = GradientRule(cascade_init_scale=0.01)
    rule.next_cycle(layers, gen)
    state = gen.get_state()
    rule.next_cycle(layers, gen)  # second dendrite: cascades from the first
    assert not torch.equal(state, gen.get_state())
    casc = layer.cascade_weight.detach()[1, 0]
    assert torch.isfinite(casc).all() and casc.std().item() == pytest.approx(0.01, rel=0.15)
    assert abs(casc.mean().item()) < 0.003
    flat = DendriticLayer(nn.Linear(4, 3), KINDS["Linear"], DendriteConfig(cascade=False))
    rule.next_cycle({"fc": flat}, gen)
    state = gen.get_state()
    rule.next_cycle({"fc": flat}, gen)
    assert torch.equal(state, gen.get_state())  # no cascade, nothing drawn


def test_candidate_biases_also_start_from_the_scaled_normal(gen):
    layer = DendriticLayer(
        nn.Linear(3, 200), KINDS["Linear"], DendriteConfig(candidate_init_scale=0.05)
    )
    layer.start_dendrite_phase(candidates=10, generator=gen)
    bias = layer.candidates.bank.bias.detach()
    assert bias.std().item() == pytest.approx(0.05, rel=0.1) and abs(bias.mean().item()) < 0.01


def test_a_pool_used_on_its_own_folds_statistics_and_reports_its_best(gen):
    from perforate import CandidatePool

    base = nn.Linear(3, 2)
    pool = CandidatePool.normal(
        KINDS["Linear"],
        base,
        3,
        0,
        scale=0.5,
        cascade=True,
        activation=torch.sigmoid,
        objective="covariance",
        generator=gen,
    )
    assert "size=3" in repr(pool) and pool.output_std().eq(0).all()  # empty: 0, not NaN
    v = pool.outputs(torch.randn(8, 3, generator=gen), None)
    g = pool.objective_gradient(v.detach(), torch.randn(8, 2, generator=gen))
    assert g.shape == v.shape and int(pool.stats.count) == 8
    m = torch.tensor([[0.1, -0.9], [0.5, 0.2], [-0.3, 0.4]], dtype=torch.float64)
    pool.stats.m_ve.copy_(m)
    pool.stats.m_vv.fill_(1.0)
    pool.stats.m_ee.fill_(1.0)
    assert pool.best_correlation() == pytest.approx((0.5 + 0.9) / 2)  # per neuron, then mean


def test_statistics_are_shared_over_the_group_the_layer_was_given(gen):
    calls = []
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.share_statistics(lambda t: calls.append(t.numel()), 2)
    layer.start_dendrite_phase(candidates=2, generator=gen)
    assert layer.candidates.reduce is not None and layer.candidates.world_size == 2
    layer(torch.randn(4, 3, generator=gen)).sum().backward()
    assert len(calls) == 2  # sums, then centred moments


def test_a_tiny_but_real_variation_keeps_its_pearson_gradient(gen):
    v = 0.5 + 1e-5 * torch.randn(50, 1, 2, generator=gen)
    e = torch.randn(50, 2, generator=gen)
    g = surrogate_gradient(v, e, CandidateStats(1, 2), "pearson")
    assert (g != 0).all() and torch.isfinite(g).all()


# --- the layer --------------------------------------------------------------------------
def test_output_weights_train_in_a_neuron_phase_whatever_the_inputs_do(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=1, generator=gen)
    layer.install(torch.zeros(2, dtype=torch.long))
    layer.start_dendrite_phase(candidates=1, generator=gen)
    layer.start_neuron_phase(dendrite_inputs_train=False)
    assert layer.output_weight.requires_grad and not layer.dendrites.weight.requires_grad
    assert not layer.cascade_weight.requires_grad


def test_inference_drops_a_pool_in_flight_and_freezes_everything(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=2, generator=gen)
    layer.start_inference()
    assert layer.candidates is None and not any(p.requires_grad for p in layer.parameters())


def test_absent_slots_hold_exact_zeros_and_the_mask_is_a_buffer(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.set_slots(2)
    assert torch.equal(layer.dendrites.bias, torch.zeros(4))
    assert torch.equal(layer.dendrites.weight, torch.zeros(4, 3))
    assert "slot_mask" in dict(layer.named_buffers())
    assert "slot_mask" not in layer.state_dict()
    layer.set_slots(0)
    assert layer.slot_mask is None and layer.dendrites is None


def test_a_plain_load_state_dict_of_the_wrong_width_keeps_the_layers_dendrites(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=1, generator=gen)
    layer.install(torch.zeros(2, dtype=torch.long))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["output_weight"] = torch.zeros(1, 5)
    with pytest.raises(RuntimeError):
        layer.load_state_dict(state)
    assert layer.slots == 1 and layer.dendrite_count.tolist() == [1, 1]


def test_an_unsupported_layer_without_a_path_is_named_by_its_type():
    with pytest.raises(perforate.UnsupportedLayerError, match="Linear: Linear with 0 inputs"):
        DendriticLayer(nn.Linear(0, 2), KINDS["Linear"], DendriteConfig())


# --- the controller's small contracts -----------------------------------------------------
def test_wrapped_is_the_model_or_its_wrapper_rebuilt_at_each_phase(gen):
    model = tiny()
    assert Perforator(model, DendriteConfig(), optimizer=sgd).wrapped is model
    built = []

    def wrapper(m):
        built.append(nn.Sequential(m))
        return built[-1]

    model = tiny()
    ctl = Perforator(model, DendriteConfig(patience=1), optimizer=sgd, wrapper=wrapper)
    assert ctl.wrapped is built[-1] and built[-1][0] is model
    drive(ctl, model, [0.1, 0.1], gen)
    assert len(built) == 2 and ctl.wrapped is built[-1]


@pytest.mark.parametrize("score", [torch.tensor([0.5, 0.6]), torch.zeros(0)])
def test_a_score_tensor_must_hold_exactly_one_number(score, gen):
    model = tiny()
    ctl = Perforator(model, DendriteConfig(), optimizer=sgd)
    step(model, ctl, gen)
    with pytest.raises(perforate.ScoreError, match="one number"):
        ctl.end_epoch(score)
    assert ctl.end_epoch(torch.tensor([0.5])) == Event.CONTINUE


def test_parameters_outside_the_layers_train_again_after_a_dendrite_phase(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(
        model,
        DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=1, pair_norms=False),
        optimizer=sgd,
    )
    drive(ctl, model, [0.1, 0.1], gen)
    assert not model[1].weight.requires_grad  # frozen while candidates train
    drive(ctl, model, [0.0], gen)
    assert model[1].weight.requires_grad
    assert id(model[1].weight) in {id(p) for p in ctl.parameters_in_use()}


def test_a_failed_load_state_dict_leaves_a_trained_controller_exactly_as_it_was(gen):
    model = tiny()
    ctl = Perforator(
        model,
        DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=1),
        optimizer=sgd,
    )
    drive(ctl, model, [0.1, 0.1, 0.0, 0.2], gen)
    other_model = tiny()
    other = Perforator(
        other_model,
        DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=1),
        optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
    )
    drive(other, other_model, [0.3, 0.3, 0.0], gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = [r.to_dict() for r in ctl.history]
    with pytest.raises(perforate.CheckpointMismatchError, match="Adam"):
        ctl.load_state_dict(other.state_dict())
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [r.to_dict() for r in ctl.history] == history and ctl.epoch == 4


def test_save_checkpoint_returns_the_path_it_wrote(tmp_path, gen):
    model = tiny()
    ctl = Perforator(model, DendriteConfig(), optimizer=sgd)
    step(model, ctl, gen)
    ctl.end_epoch(0.1)
    path = ctl.save_checkpoint(str(tmp_path / "c.safetensors"))
    assert path == tmp_path / "c.safetensors" and path.is_file()


def test_the_direction_warning_points_at_the_callers_line_and_survives_resume(gen):
    import warnings

    from perforate.switching import DirectionCheck

    model = tiny()
    ctl = Perforator(model, DendriteConfig(patience=2, max_cycles=0), optimizer=sgd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drive(ctl, model, [0.9, 0.5, 0.1], gen)
    hits = [w for w in caught if issubclass(w.category, perforate.PerforateWarning)]
    assert len(hits) == 1 and "direction='maximize'" in str(hits[0].message)
    assert "(0.9 -> 0.1)" in str(hits[0].message)
    import inspect

    lines, first = inspect.getsourcelines(drive)
    call = first + next(i for i, t in enumerate(lines) if "ctl.end_epoch(s)" in t)
    assert (hits[0].filename, hits[0].lineno) == (__file__, call)  # the user's own line
    check = DirectionCheck(Improvement(), "maximize")
    check.load_state_dict(ctl.direction_check.state_dict())
    assert check.scores == [0.9, 0.5, 0.1]


# --- pinned after a held-out mutation sample (seed 1) -------------------------------------
def test_sharing_statistics_reaches_a_pool_already_attached(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=2, generator=gen)

    def reduce(t):
        return None

    layer.share_statistics(reduce, 3)
    assert layer.candidates.reduce is reduce and layer.candidates.world_size == 3


def test_an_exported_layer_cannot_train_again(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig(), path="fc")
    layer.start_inference()
    for start in (layer.start_neuron_phase, layer.start_dendrite_phase):
        with pytest.raises(perforate.PhaseError, match="fc: layer was exported"):
            start()
    with pytest.raises(perforate.PhaseError):
        layer.append_dendrites([0], torch.zeros(1, 3), torch.zeros(1), torch.zeros(1))


def test_unit_flags_live_only_during_a_dendrite_phase_and_survive_its_checkpoint(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.base.bias.requires_grad_(False)  # the user froze it
    layer.start_dendrite_phase(candidates=1, generator=gen)
    phase, weights = layer.phase_state_dict(), layer.state_dict()
    assert phase["unit_flags"] == {"base.weight": True, "base.bias": False}
    layer.start_neuron_phase()
    assert layer.phase_state_dict()["unit_flags"] == {}
    fresh = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    fresh.load_phase_state_dict(phase)
    fresh.load_state_dict(weights)
    fresh.start_neuron_phase()
    assert fresh.base.weight.requires_grad and not fresh.base.bias.requires_grad


def test_install_copies_each_chosen_candidates_cascade_from_earlier_slots_only(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=2, generator=gen)
    layer.install(torch.tensor([0, 1]))
    layer.start_dendrite_phase(candidates=2, generator=gen)
    with torch.no_grad():
        layer.candidates.cascade.copy_(torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]))
    w = layer.candidates.bank.weight.detach().clone()
    layer.install(torch.tensor([1, 0]))
    assert layer.cascade_weight[1, 0].tolist() == [3.0, 2.0]  # pool 1 -> neuron 0, 0 -> 1
    assert layer.cascade_weight[0].abs().sum() == 0  # slot 0 cascades from nothing
    torch.testing.assert_close(layer.dendrites.weight[2:].detach(), w[[2, 1]])


def test_append_dendrites_takes_a_list_and_an_empty_one_changes_nothing():
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    assert layer.append_dendrites([], torch.zeros(0, 3), torch.zeros(0), torch.zeros(0)) == 0
    assert layer.slots == 0
    assert layer.append_dendrites([1], torch.ones(1, 3), torch.zeros(1), torch.zeros(1)) == 1
    assert layer.dendrite_count.tolist() == [0, 1]
    with pytest.raises(perforate.InstallError, match="one dendrite per call"):
        layer.append_dendrites([0, 0], torch.ones(2, 3), torch.zeros(2), torch.zeros(2))


def test_parameter_counts_and_repr_of_a_grown_unit_with_a_norm():
    base = nn.Linear(3, 2)
    layer = DendriticLayer(
        base, KINDS["Linear"], DendriteConfig(), norm=nn.LayerNorm(2), path="fc", norm_path="ln"
    )
    layer.append_dendrites([0, 1], torch.ones(2, 3), torch.zeros(2), torch.zeros(2))
    layer.append_dendrites([0], torch.ones(1, 3), torch.zeros(1), torch.zeros(1))
    # unit: 3*2+2 + LayerNorm 4; dendrites: 3 x (3 inputs + bias + output weight) + 1 cascade
    assert layer.parameter_counts() == (12, 3 * 5 + 1)
    assert "norm=yes" in repr(layer) and "dendrites=3" in repr(layer)
    plain = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    assert "norm=no" in repr(plain)


def test_the_seed_decides_the_candidates(gen):
    def first_pool(seed):
        model = tiny()
        ctl = Perforator(model, DendriteConfig(patience=1), optimizer=sgd, seed=seed)
        drive(ctl, model, [0.1, 0.1], torch.Generator().manual_seed(0))
        return ctl.layers["0"].candidates.bank.weight.detach().clone()

    assert torch.equal(first_pool(3), first_pool(3))
    assert not torch.equal(first_pool(3), first_pool(4))


def test_end_step_counts_steps_up_and_fires_every_n(gen):
    ctl = Perforator(tiny(), DendriteConfig(steps_per_evaluation=3), optimizer=sgd)
    fired = [ctl.end_step() for _ in range(7)]
    assert fired == [False, False, True, False, False, True, False] and ctl.steps == 7


def test_a_checkpoint_error_raised_while_applying_keeps_its_own_message(tmp_path, gen):
    model = tiny()
    ctl = Perforator(model, DendriteConfig(patience=1), optimizer=sgd)
    drive(ctl, model, [0.1], gen)
    state = ctl.state_dict()
    other = Perforator(
        tiny(), DendriteConfig(patience=1), optimizer=lambda p: torch.optim.Adam(p, lr=0.1)
    )
    with pytest.raises(perforate.CheckpointMismatchError) as err:
        other.load_state_dict(state)
    assert str(err.value).startswith("the checkpoint holds the state of a SGD optimizer")


def test_resume_in_a_dendrite_phase_thaws_outside_parameters_after_install(tmp_path, gen):
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2))

    cfg = DendriteConfig(
        patience=1, switch_mode="patience", dendrite_max_epochs=2, pair_norms=False
    )
    model = build()
    ctl = Perforator(model, cfg, optimizer=sgd)
    drive(ctl, model, [0.1, 0.1, 0.0], gen)  # inside the dendrite phase
    path = ctl.save_checkpoint(tmp_path / "c.safetensors")
    model = build()
    ctl = Perforator.resume(path, model, optimizer=sgd)
    assert not model[1].weight.requires_grad
    drive(ctl, model, [0.0], gen)  # install
    assert model[1].weight.requires_grad


def test_empty_batches_fold_nothing_and_unknown_objectives_are_refused():
    stats = CandidateStats(2, 3)
    assert surrogate_gradient(torch.zeros(0, 2, 3), torch.zeros(0, 3), stats, "pearson") is None
    assert int(stats.count) == 0 and stats.skipped_batches == 0
    with pytest.raises(ValueError, match="objective must be one of"):
        surrogate_gradient(torch.rand(4, 2, 3), torch.randn(4, 3), stats, "spearman")


def test_a_fresh_patience_policy_starts_from_zero():
    assert PatienceSwitching(Improvement()).state_dict() == {
        "phase_epochs": 0,
        "since_improvement": 0,
        "reference": None,
        "best_correlation": None,
        "since_correlation": 0,
    }


def test_the_direction_warning_fires_for_a_slow_steady_decline_too():
    import warnings

    from perforate.switching import DirectionCheck

    check = DirectionCheck(Improvement(rel=1e-3), "maximize")
    for s in (0.9, 0.8999, 0.8998):  # each step below the improvement threshold
        check.add(s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check.check()
    assert len(caught) == 1


def test_max_epochs_caps_the_run_even_when_every_epoch_changes_phase(gen):
    model = tiny()
    cfg = DendriteConfig(
        patience=1, switch_mode="patience", dendrite_max_epochs=1, max_retries=10, max_epochs=3
    )
    ctl = Perforator(model, cfg, optimizer=sgd)
    events = drive(ctl, model, [0.1, 0.1, 0.0], gen)
    assert events == [Event.CONTINUE, Event.DENDRITE_PHASE, Event.DONE]
    assert ctl.epoch == 3 and all(layer.candidates is None for layer in ctl.layers.values())
