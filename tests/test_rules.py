"""Training rules and switching policies as strategy objects, and the targeting helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import (
    BestCandidate,
    CorrelationRule,
    DendriteConfig,
    Event,
    FixedSwitching,
    GradientRule,
    PatienceSwitching,
    Perforator,
    RestartRule,
    TrainingRule,
)
from perforate.config import SWITCH_MODES, TRAINING_RULES
from perforate.rules import RULES, resolve_rule
from perforate.switching import SWITCHING, resolve_switching


def model3():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def step(model, ctl, gen):
    x, t = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    ctl.optimizer.zero_grad()
    nn.functional.mse_loss(model(x), t).backward()
    ctl.optimizer.step()


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_every_rule_and_policy_name_in_the_config_resolves_to_its_class():
    assert tuple(RULES) == TRAINING_RULES
    assert tuple(SWITCHING) == SWITCH_MODES
    assert type(resolve_rule(DendriteConfig())) is CorrelationRule
    assert type(resolve_rule(DendriteConfig.reference_gd())) is GradientRule
    assert type(resolve_rule(DendriteConfig(method="restart"))) is RestartRule
    assert type(resolve_switching(DendriteConfig(switch_mode="fixed"))) is FixedSwitching
    rule = resolve_rule(
        DendriteConfig(
            candidates_per_neuron=3, install_threshold=0.2, dendrites_learn=True, max_dendrites=2
        )
    )
    assert rule.pool_size == 3 and rule.dendrite_inputs_train
    assert rule.selector == BestCandidate("covariance", 0.2, 2, 0.0)


class FirstNeuronRule(TrainingRule):
    """A rule written outside the library: each cycle, neuron 0 of every layer gains one
    silent dendrite copied from its own base weights."""

    name = "first_neuron"

    @classmethod
    def from_config(cls, config):
        return cls()

    def next_cycle(self, layers, generator):
        for layer in layers.values():
            w = layer.base.weight.detach()[:1]
            layer.append_dendrites(torch.tensor([0]), w, torch.zeros(1), torch.zeros(1))
        return Event.INSTALLED


def test_a_new_rule_is_one_class_and_the_controller_runs_it_unchanged(gen):
    model = model3()
    cfg = DendriteConfig(patience=1, max_cycles=2, improvement_rel=0.0)
    ctl = Perforator(model, cfg, optimizer=sgd, rule=FirstNeuronRule())
    x = torch.randn(5, 3, generator=gen)
    step(model, ctl, gen)
    best = model(x)  # the state the first epoch scores 0.1 with: the phase's best
    events = [ctl.end_epoch(0.1)]
    step(model, ctl, gen)
    events.append(ctl.end_epoch(0.1))  # no improvement: cycle 0 ends, the rule grows
    assert events == [Event.CONTINUE, Event.INSTALLED]
    assert torch.equal(model(x), best)  # best restored, silent dendrite: same function
    assert ctl.dendrite_counts() == {"0": [1, 0, 0, 0], "2": [1, 0]}
    assert ctl.phase.value == "neuron" and ctl.cycle == 1


def test_a_selector_that_accepts_nothing_ends_the_run_after_the_dendrite_phase(gen):
    model = model3()
    rule = CorrelationRule(BestCandidate(install_threshold=1.0), pool_size=2)
    ctl = Perforator(
        model,
        DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=1),
        optimizer=sgd,
        rule=rule,
    )
    events = []
    for score in [0.1, 0.1, 0.0]:
        step(model, ctl, gen)
        events.append(ctl.end_epoch(score))
    assert events == [Event.CONTINUE, Event.DENDRITE_PHASE, Event.DONE]
    assert ctl.dendrite_counts() == {"0": [0] * 4, "2": [0, 0]}
    assert all(p.requires_grad for p in model.parameters())  # the freeze was lifted


def test_gradient_rule_grows_every_neuron_below_the_cap_silently_and_trainably(gen):
    model = model3()
    ctl = Perforator(
        model,
        DendriteConfig.reference_gd(
            patience=1, max_dendrites=2, improvement_rel=0.0, switch_mode="patience"
        ),
        optimizer=sgd,
    )
    x = torch.randn(5, 3, generator=gen)
    scores = iter([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    for expected in (1, 2):
        step(model, ctl, gen)
        best = model(x)
        ctl.end_epoch(next(scores))
        step(model, ctl, gen)
        assert ctl.end_epoch(next(scores)) == Event.INSTALLED
        assert torch.equal(model(x), best)
        assert ctl.dendrite_counts() == {"0": [expected] * 4, "2": [expected] * 2}
    layer = ctl.layers["0"]
    assert layer.dendrites.weight.requires_grad and layer.output_weight.requires_grad
    assert all(id(p) in {id(q) for q in ctl.parameters_in_use()} for p in layer.parameters())
    # The second dendrite cascades from the first only (strict lower triangle).
    assert torch.count_nonzero(torch.triu(layer.cascade_weight.permute(2, 0, 1))) == 0
    step(model, ctl, gen)
    assert ctl.end_epoch(0.4) == Event.CONTINUE
    step(model, ctl, gen)
    assert ctl.end_epoch(0.4) == Event.DONE  # every neuron at the cap


def test_restart_rule_never_grows(gen):
    model = model3()
    ctl = Perforator(
        model,
        DendriteConfig(
            method="restart", patience=1, max_cycles=2, improvement_rel=0.0, switch_mode="patience"
        ),
        optimizer=sgd,
    )
    events = []
    for score in [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]:
        step(model, ctl, gen)
        events.append(ctl.end_epoch(score))
    assert events == [
        Event.CONTINUE,
        Event.RESTARTED,
        Event.CONTINUE,
        Event.RESTARTED,
        Event.CONTINUE,
        Event.DONE,
    ]
    assert sum(r.dendrites for r in perforate.parameter_report(model).layers) == 0


@pytest.mark.parametrize(
    "policy",
    [
        PatienceSwitching.from_config(DendriteConfig(patience=2)),
        FixedSwitching(neuron_epochs=3, dendrite_epochs=2),
    ],
)
def test_switching_policies_resume_their_counts(policy):
    scores = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7]
    decisions = [policy.neuron_epoch(s) for s in scores[:3]]
    saved = policy.state_dict()
    fresh = type(policy).__new__(type(policy))
    fresh.__dict__.update({k: v for k, v in policy.__dict__.items() if k not in saved})
    fresh.load_state_dict(saved)
    assert [fresh.neuron_epoch(s) for s in scores[3:]] == [
        policy.neuron_epoch(s) for s in scores[3:]
    ]
    assert decisions == (
        [False, False, False] if isinstance(policy, PatienceSwitching) else [False, False, True]
    )


def test_patience_counts_only_improvements_beyond_the_threshold():
    p = PatienceSwitching.from_config(
        DendriteConfig(patience=2, improvement_rel=0.0, improvement_abs=0.05)
    )
    p.start_neuron_phase(reference=0.5)
    assert [p.neuron_epoch(s) for s in (0.54, 0.56, 0.6, 0.6)] == [False, False, False, True]
    p.start_dendrite_phase()
    assert [p.dendrite_epoch(c) for c in (0.1, 0.1005, 0.2, 0.2, 0.2, 0.2)][-1] is True


def test_output_layer_and_hidden_layers_only():
    model = nn.Sequential(
        nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    )
    assert perforate.output_layer(model) == "4"
    cfg = perforate.hidden_layers_only(model, DendriteConfig(exclude=("0",)))
    assert cfg.exclude == ("0", "4")
    perforate.add_dendrites(model, cfg)
    assert list(perforate.dendritic_layers(model)) == ["2"]
    with pytest.raises(perforate.NoTargetLayersError):
        perforate.output_layer(nn.Sequential(nn.ReLU()))
