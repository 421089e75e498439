"""Training rules' defaults and the restart control's quiet ending."""

from __future__ import annotations

import logging

import torch
from torch import nn

import perforate
from perforate import DendriteConfig, Event, Perforator
from perforate.kinds import kind_of
from perforate.rules import (
    ClosedFormRule,
    OutputErrorRule,
    RestartRule,
    SparseRule,
    resolve_rule,
)


def test_rule_defaults_agree_with_the_config_defaults():
    cfg = DendriteConfig()
    sparse = SparseRule()
    assert (sparse.pool_size, sparse.fan_in) == (4, 8)
    assert (sparse.pool_size, sparse.fan_in) == (cfg.candidates_per_neuron, cfg.dendrite_fan_in)
    closed = ClosedFormRule()
    assert (
        (closed.pool_size, closed.warmup)
        == (4, 20)
        == (
            cfg.candidates_per_neuron,
            cfg.closed_form_batches,
        )
    )
    assert not RestartRule.grows
    from_cfg = resolve_rule(
        DendriteConfig(method="sparse", dendrite_fan_in=3, candidates_per_neuron=2)
    )
    assert (from_cfg.pool_size, from_cfg.fan_in) == (2, 3)


def test_a_sparse_pool_masks_each_candidate_to_its_fan_in():
    layer = perforate.DendriticLayer(nn.Linear(6, 2), kind_of(nn.Linear(6, 2)), DendriteConfig())
    pool = SparseRule(pool_size=3, fan_in=2).make_pool(layer, torch.Generator().manual_seed(0))
    assert tuple(pool.mask.shape) == (6, 6) and pool.mask.sum(1).tolist() == [2] * 6


def test_closed_form_refuses_a_convolution_but_takes_linears():
    lin = perforate.add_dendrites(nn.Sequential(nn.Linear(2, 2)), DendriteConfig())
    ClosedFormRule().bind(lin, perforate.dendritic_layers(lin))  # no error
    conv = perforate.add_dendrites(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Linear(2, 2)))
    try:
        ClosedFormRule().bind(conv, perforate.dendritic_layers(conv))
    except perforate.ConfigError as exc:
        assert "['0'] are convolutions" in str(exc)
    else:
        raise AssertionError("a convolution was accepted")


def test_the_restart_control_ends_without_the_no_dendrites_warning(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    cfg = DendriteConfig(
        method="restart", switch_mode="patience", patience=1, cycle_patience=1, max_retries=0
    )
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), seed=0)
    events = []
    with caplog.at_level(logging.WARNING, logger="perforate"):
        for score in [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]:
            ctl.optimizer.zero_grad()
            model(torch.randn(4, 2)).pow(2).mean().backward()
            ctl.optimizer.step()
            events.append(ctl.end_epoch(score))
            if ctl.done:
                break
    assert events[-1] == Event.DONE and ctl.dendrites_kept == 0
    assert "ended with no dendrites" not in caplog.text


def test_output_error_rule_bound_again_leaves_the_first_model_alone():
    rule = OutputErrorRule()
    first = nn.Sequential(nn.Linear(2, 2))
    second = nn.Sequential(nn.Linear(2, 2))
    for model in (first, second):
        perforate.add_dendrites(model, DendriteConfig())
    rule.bind(first, perforate.dendritic_layers(first))
    rule.bind(second, perforate.dendritic_layers(second))
    assert not first._forward_hooks and not first._forward_pre_hooks  # removed
    assert len(second._forward_hooks) == 1 and len(second._forward_pre_hooks) == 1
    layer = perforate.dendritic_layers(second)["0"]
    layer.start_dendrite_phase(rule.make_pool(layer, torch.Generator().manual_seed(0)))
    x = torch.randn(3, 2, requires_grad=True)
    first(x).sum().backward()
    assert rule.source.error is None  # the first model no longer taps its output
    second(x).sum().backward()
    assert torch.equal(rule.source.error, torch.ones(3, 2))  # d(sum)/d(output)


def test_an_output_error_pool_reads_its_rules_error_from_the_start():
    rule = OutputErrorRule()
    layer = perforate.DendriticLayer(nn.Linear(2, 2), kind_of(nn.Linear(2, 2)), DendriteConfig())
    pool = rule.make_pool(layer, torch.Generator().manual_seed(0))
    assert pool.source is rule.source


def test_closed_form_keeps_dendrite_inputs_frozen_by_default():
    assert ClosedFormRule().dendrite_inputs_train is False
    assert SparseRule().dendrite_inputs_train is False


def test_a_new_forward_forgets_the_last_output_error():
    rule = OutputErrorRule()
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(2, 2)), DendriteConfig())
    layers = perforate.dendritic_layers(model)
    rule.bind(model, layers)
    layers["0"].start_dendrite_phase(rule.make_pool(layers["0"], torch.Generator()))
    model(torch.randn(3, 2)).sum().backward()
    assert rule.source.error is not None
    model(torch.randn(3, 2))  # the next batch's forward: the old error must not be used
    assert rule.source.error is None


def test_a_pb_run_that_keeps_no_dendrites_says_so(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    cfg = DendriteConfig(
        switch_mode="fixed", fixed_neuron_epochs=1, fixed_dendrite_epochs=1, max_retries=0,
        max_epochs=3,
    )  # fmt: skip
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with caplog.at_level(logging.WARNING, logger="perforate"):
        for score in [0.5, 0.5, 0.4]:
            ctl.optimizer.zero_grad()
            model(torch.randn(4, 2)).pow(2).mean().backward()
            ctl.optimizer.step()
            ctl.end_epoch(score)
    assert ctl.done and ctl.dendrites_kept == 0
    assert "ended with no dendrites" in caplog.text
