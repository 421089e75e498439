"""Snapshots: what they hold, what restoring puts back, and when restoring refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, PhaseError
from perforate.snapshots import Snapshot


def _grown(gen):
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 2)), DendriteConfig())
    model[0].start_dendrite_phase(candidates=2, generator=gen)
    return model


def test_take_copies_the_network_but_never_the_candidates(gen):
    model = _grown(gen)
    snap = Snapshot.take(model, 0.25)
    assert snap.score == 0.25
    assert not any("candidates" in k for k in snap.state)
    assert "0.base.weight" in snap.state
    with torch.no_grad():
        model[0].base.weight.add_(1.0)
    assert not torch.equal(snap.state["0.base.weight"], model[0].base.weight)  # a copy


def test_restore_puts_the_network_back_and_leaves_the_candidates_alone(gen):
    model = _grown(gen)
    snap = Snapshot.take(model, 1.0)
    want = model[0].base.weight.detach().clone()
    with torch.no_grad():
        model[0].base.weight.zero_()
        model[0].candidates.bank.weight.fill_(3.0)
    snap.restore(model)
    assert torch.equal(model[0].base.weight, want)
    assert bool((model[0].candidates.bank.weight == 3.0).all())


def test_restore_into_a_model_with_a_tensor_the_snapshot_lacks_refuses(gen):
    model = _grown(gen)
    snap = Snapshot.take(model, 1.0)
    del snap.state["0.base.bias"]
    with pytest.raises(PhaseError, match=r"could not restore the best state: missing \['0.base"):
        snap.restore(model)


def test_restore_with_a_tensor_the_model_lacks_refuses(gen):
    model = _grown(gen)
    snap = Snapshot.take(model, 1.0)
    snap.state["9.weight"] = torch.zeros(1)
    with pytest.raises(PhaseError, match=r"missing \[\], unexpected \['9.weight'\]"):
        snap.restore(model)


def test_state_dict_round_trip_and_none():
    snap = Snapshot(0.5, {"w": torch.ones(2)})
    back = Snapshot.from_state_dict(snap.state_dict())
    assert back.score == 0.5 and type(back.score) is float
    assert torch.equal(back.state["w"], torch.ones(2))
    assert Snapshot.from_state_dict({"score": 2, "state": {}}).score == 2.0
    assert Snapshot.from_state_dict(None) is None
