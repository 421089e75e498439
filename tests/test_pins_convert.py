"""to_plain's copy is for inference only: what it leaves trainable and what it does not."""

from __future__ import annotations

import torch
from torch import nn

import perforate
from helpers import grow


def test_to_plain_freezes_what_was_wrapped_and_leaves_the_rest(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 2))
    perforate.add_dendrites(model, perforate.DendriteConfig(exclude=("3",)))
    grow(perforate.dendritic_layers(model)["0"], 1, gen)  # "2" stays without dendrites
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags["2.base.weight"] and flags["0.base.weight"]
    plain = perforate.to_plain(model.eval(), torch.randn(2, 4, generator=gen))
    assert type(plain[2]) is nn.Linear and type(plain[3]) is nn.Linear
    # Wrapped layers come back in inference: every parameter frozen, grown or not.
    assert not any(p.requires_grad for p in plain[0].parameters())
    assert not any(p.requires_grad for p in plain[2].parameters())
    assert all(p.requires_grad for p in plain[3].parameters())  # never wrapped: as it was
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # untouched
