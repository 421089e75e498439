"""Freezing outside a dendrite phase's candidates, and giving trainability back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig
from perforate.trainability import OutsideFreeze


def _model():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2), nn.Linear(2, 2))
    model[3].bias.requires_grad_(False)  # the user froze this one
    perforate.add_dendrites(model, DendriteConfig(include=("0", "2")))
    return model, perforate.dendritic_layers(model)


def test_record_names_outside_parameters_and_by_default_the_units():
    model, layers = _model()
    freeze = OutsideFreeze(model, layers)
    # Layer 0 pairs with its LayerNorm (its unit: base + norm); layer 2 alone; 3 outside.
    assert freeze.record() == {
        "0.base.weight": True,
        "0.base.bias": True,
        "0.norm.weight": True,
        "0.norm.bias": True,
        "2.base.weight": True,
        "2.base.bias": True,
        "3.weight": True,
        "3.bias": False,
    }
    assert freeze.record(units=False) == {"3.weight": True, "3.bias": False}


def test_freeze_then_unfreeze_puts_every_flag_back_and_forgets_them():
    model, layers = _model()
    freeze = OutsideFreeze(model, layers)
    flags = freeze.record()
    freeze.freeze(flags)
    assert not model[3].weight.requires_grad and not model[3].bias.requires_grad
    assert model[0].base.weight.requires_grad  # the layers freeze their own units
    model[0].base.weight.requires_grad_(False)  # as a layer starting its phase would
    assert freeze.state_dict() == {"flags": flags}
    freeze.unfreeze()
    assert model[3].weight.requires_grad and not model[3].bias.requires_grad
    assert model[0].base.weight.requires_grad
    assert freeze.state_dict() == {"flags": {}}


def test_freeze_without_flags_records_the_outside_only():
    model, layers = _model()
    freeze = OutsideFreeze(model, layers)
    freeze.freeze()
    assert freeze.flags == {"3.weight": True, "3.bias": False}


def test_load_state_dict_takes_known_names_as_bools_and_refuses_unknown_ones():
    model, layers = _model()
    freeze = OutsideFreeze(model, layers)
    freeze.load_state_dict({"flags": {"3.weight": 1, "0.base.bias": 0}})
    assert freeze.flags == {"3.weight": True, "0.base.bias": False}
    with pytest.raises(KeyError, match=r"frozen parameters not in the model: \['9.weight'\]"):
        freeze.load_state_dict({"flags": {"9.weight": True}})
    assert freeze.flags == {"3.weight": True, "0.base.bias": False}  # unchanged


def test_a_tied_weight_gets_its_trainability_back():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    model = perforate.add_dendrites(nn.Sequential(a, b), DendriteConfig())
    layers = perforate.dendritic_layers(model)
    freeze = OutsideFreeze(model, layers)
    flags = freeze.record()
    assert flags["0.base.weight"] is True and "1.base.weight" not in flags  # shared: once
    freeze.freeze(flags)
    for layer in layers.values():
        layer.start_dendrite_phase(candidates=1, generator=torch.Generator().manual_seed(0))
    assert not model[0].base.weight.requires_grad
    for layer in layers.values():
        layer.start_neuron_phase()
    freeze.unfreeze()
    assert model[0].base.weight.requires_grad and model[1].base.weight.requires_grad
