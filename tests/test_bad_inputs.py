"""Bad inputs not covered elsewhere; docs/errors.md lists the whole catalogue."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, Event, Perforator


def model_and_ctl(**cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    settings = {
        "patience": 1,
        "dendrite_patience": 1,
        "switch_mode": "patience",
        "dendrite_max_epochs": 2,
        "improvement_abs": 0.01,
        "improvement_rel": 0.0,
        **cfg,
    }
    config = DendriteConfig(**settings)
    return model, Perforator(model, config, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def step(model, ctl, x=None, scale=1.0):
    x = torch.randn(8, 3) if x is None else x
    ctl.optimizer.zero_grad()
    (model(x).square().mean() * scale).backward()
    ctl.optimizer.step()


def to_dendrite_phase(model, ctl):
    for s in (0.5, 0.5):
        step(model, ctl)
        event = ctl.end_epoch(s)
    assert event == Event.DENDRITE_PHASE


def test_nan_loss_in_dendrite_phase_is_skipped_counted_and_harmless():
    model, ctl = model_and_ctl()
    to_dendrite_phase(model, ctl)
    step(model, ctl)
    before = {n: layer.stats.m_ve.clone() for n, layer in ctl.layers.items()}
    step(model, ctl, scale=float("nan"))
    for n, layer in ctl.layers.items():
        assert torch.equal(layer.stats.m_ve, before[n])
        assert torch.isfinite(layer.candidates.bank.weight).all()
    ctl.end_epoch(0.5)
    assert ctl.history[-1].skipped_batches == 2  # one batch, seen by both layers


def test_empty_batch_leaves_statistics_alone():
    model, ctl = model_and_ctl()
    to_dendrite_phase(model, ctl)
    step(model, ctl)
    counts = {n: float(layer.stats.count) for n, layer in ctl.layers.items()}
    step(model, ctl, x=torch.randn(0, 3))
    assert {n: float(layer.stats.count) for n, layer in ctl.layers.items()} == counts
    assert all(torch.isfinite(layer.stats.m_ve).all() for layer in ctl.layers.values())


def test_scores_that_only_get_worse_warn_about_direction():
    model, ctl = model_and_ctl(patience=2)
    with pytest.warns(perforate.PerforateWarning, match="direction='minimize'"):
        for s in (0.9, 0.8, 0.7):  # a loss passed with direction="maximize"
            step(model, ctl)
            ctl.end_epoch(s)


def test_model_moved_to_float64_after_wrapping_keeps_working():
    model, ctl = model_and_ctl()
    model.double()
    for s in (0.5, 0.5):
        step(model, ctl, x=torch.randn(8, 3, dtype=torch.float64))
        ctl.end_epoch(s)
    layer = ctl.layers["0"]
    assert layer.candidates.bank.weight.dtype == torch.float64
    step(model, ctl, x=torch.randn(8, 3, dtype=torch.float64))
    ctl.end_epoch(0.5)
    step(model, ctl, x=torch.randn(8, 3, dtype=torch.float64))
    assert ctl.end_epoch(0.5) == Event.INSTALLED
    assert layer.dendrites.weight.dtype == torch.float64


def test_eval_mode_forward_in_dendrite_phase_changes_nothing():
    model, ctl = model_and_ctl()
    to_dendrite_phase(model, ctl)
    model.eval()
    w = ctl.layers["0"].candidates.bank.weight.clone()
    model(torch.randn(5, 3))  # grad enabled, no backward: no statistics, no update
    assert float(ctl.layers["0"].stats.count) == 0
    assert torch.equal(ctl.layers["0"].candidates.bank.weight, w)


def test_checkpoint_every_must_be_positive():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(perforate.ConfigError, match="checkpoint_every"):
        Perforator(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), checkpoint_every=0)


def test_optimizer_factory_must_return_an_optimizer():
    with pytest.raises(TypeError, match=r"not a torch\.optim\.Optimizer"):
        Perforator(nn.Sequential(nn.Linear(2, 2)), optimizer=lambda p: list(p))


def test_model_without_trainable_parameters_is_refused():
    model = nn.Sequential(nn.Linear(2, 2)).requires_grad_(False)
    with pytest.raises(perforate.PhaseError, match="no trainable parameter"):
        Perforator(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def test_wrong_model_and_config_types():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        perforate.add_dendrites("not a model")
    with pytest.raises(TypeError, match="DendriteConfig"):
        perforate.add_dendrites(nn.Sequential(nn.Linear(2, 2)), {"activation": "tanh"})
