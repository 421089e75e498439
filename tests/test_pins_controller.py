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


def _same(a, b, where=""):
    """Nested states equal, tensors bit for bit (one process)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _cloned(state):
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _cloned(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cloned(v) for v in state)
    return state


def test_an_install_whose_checkpoint_fails_leaves_everything_as_before(tmp_path, monkeypatch):
    from perforate import Event, training_state

    torch.manual_seed(0)
    # A BatchNorm: the dendrite phase moves its running statistics and the install puts
    # the accepted ones back, so a rollback must remember the moved ones by value.
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    cfg = DendriteConfig(switch_mode="fixed", fixed_neuron_epochs=1, fixed_dendrite_epochs=1)
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    ctl.checkpoint_path = tmp_path / "c.safetensors"

    def train():
        for _ in range(3):
            ctl.optimizer.zero_grad()
            model(torch.randn(8, 3)).pow(2).mean().backward()
            ctl.optimizer.step()
            ctl.end_step()

    train()
    assert ctl.end_epoch(0.5) == Event.DENDRITE_PHASE
    train()
    moved = model[0].norm.running_mean.clone()
    before = (_cloned(ctl.state_dict()), {k: v.clone() for k, v in model.state_dict().items()})

    def full_disk(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training_state, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ctl.end_epoch(0.6)  # would install, then fails writing the checkpoint
    _same(ctl.state_dict(), before[0], "controller")
    _same(model.state_dict(), before[1], "model")
    assert torch.equal(model[0].norm.running_mean, moved)
    monkeypatch.undo()
    assert ctl.end_epoch(0.6) == Event.INSTALLED  # the same call again, now it works


def test_resume_takes_config_and_seed_from_the_checkpoint_only(tmp_path):
    ctl = _ctl()
    path = ctl.save_checkpoint(tmp_path / "c.safetensors")
    for bad in ({"config": DendriteConfig()}, {"seed": 1}):
        with pytest.raises(TypeError, match="do not pass config or seed"):
            Perforator.resume(path, nn.Sequential(nn.Linear(3, 4)), optimizer=None, **bad)
