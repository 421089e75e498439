"""Growing dendrites into a model whose own parameters the user froze (issue 14's first
regime: "make my trained network better without retraining it")."""

from __future__ import annotations

import torch
from torch import nn

from perforate import DendriteConfig, Event, Perforator

CFG = DendriteConfig(
    switch_mode="patience",
    patience=1,
    dendrite_patience=1,
    dendrite_max_epochs=1,
    max_cycles=2,
    improvement_rel=0.0,
)


def test_frozen_parameters_stay_frozen_and_unchanged_while_dendrites_grow_and_train():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)  # the user's trained trunk
    trunk = {k: v.clone() for k, v in model[0].state_dict().items()}
    ctl = Perforator(model, CFG, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    frozen = [model[0].base.weight, model[0].base.bias]
    gen = torch.Generator().manual_seed(1)
    events = []
    for score in [0.1, 0.1, 0.0, 0.5, 0.5, 0.0, 0.6, 0.6]:
        x = torch.randn(32, 3, generator=gen)
        t = torch.randn(32, 2, generator=gen)
        ctl.optimizer.zero_grad()
        nn.functional.mse_loss(model(x), t).backward()
        ctl.optimizer.step()
        in_use = {id(p) for p in ctl.parameters_in_use()}
        assert not any(id(p) in in_use for p in frozen)  # never handed to an optimizer
        assert not any(p.requires_grad for p in frozen)
        events.append(ctl.end_epoch(score))
        assert not any(p.requires_grad for p in frozen)  # not even after a phase change
    assert events.count(Event.INSTALLED) == 2 and ctl.done
    assert all(torch.equal(model[0].base.state_dict()[k], v) for k, v in trunk.items())
    layer = ctl.layers["0"]
    assert layer.dendrite_count.tolist() == [2] * 6  # dendrites grew into the frozen layer
    assert layer.output_weight.requires_grad  # and their output weights trained
    assert torch.count_nonzero(layer.output_weight.detach()) > 0
