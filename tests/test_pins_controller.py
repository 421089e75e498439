"""The controller's step counting: when end_step asks the loop to evaluate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perforate import DendriteConfig, Perforator


def _ctl(**cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    return Perforator(model, DendriteConfig(**cfg), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def test_a_fresh_run_asks_for_no_evaluation_mid_epoch():
    ctl = _ctl()
    assert [ctl.end_step() for _ in range(60)] == [False] * 60
    assert ctl.steps == 60


@pytest.mark.parametrize("every", [1, 3])
def test_steps_per_evaluation_asks_every_n_steps(every):
    ctl = _ctl(steps_per_evaluation=every)
    got = [ctl.end_step() for _ in range(6)]
    assert got == [(i + 1) % every == 0 for i in range(6)]


def test_after_an_install_end_step_asks_nothing_of_the_neuron_phase():
    from perforate import Event

    ctl = _ctl(switch_mode="fixed", fixed_neuron_epochs=1, fixed_dendrite_epochs=1)
    model = ctl.model
    events = []
    for score in (0.5, 0.6):
        for _ in range(3):
            ctl.optimizer.zero_grad()
            model(torch.randn(8, 3)).pow(2).mean().backward()
            ctl.optimizer.step()
            assert ctl.end_step() is False
        events.append(ctl.end_epoch(score))
    assert events == [Event.DENDRITE_PHASE, Event.INSTALLED]
    assert [ctl.end_step() for _ in range(60)] == [False] * 60
