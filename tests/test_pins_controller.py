"""The controller: when end_step asks for an evaluation, all-or-nothing end_epoch, resume
refusals, what the end of a run says."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, Perforator, training_state


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


def _step(ctl, n=2):
    for _ in range(n):
        ctl.optimizer.zero_grad()
        ctl.model(torch.randn(8, 3)).pow(2).mean().backward()
        ctl.optimizer.step()


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_anything_changes(tmp_path):
    ctl = _ctl()
    ctl.checkpoint_path = tmp_path  # a directory
    _step(ctl)
    with pytest.raises(perforate.CheckpointError, match=r"it is a directory\. Nothing changed"):
        ctl.end_epoch(0.5)
    assert ctl.epoch == 0 and ctl.history == []


@pytest.mark.parametrize(
    ("scores", "note"), [([0.9, 0.5, 0.5, 0.5], True), ([0.5, 0.6, 0.7, 0.8], False)]
)
def test_a_run_that_ends_says_why_only_when_its_first_score_stayed_best(scores, note, caplog):
    ctl = _ctl(max_epochs=4)
    with caplog.at_level(logging.WARNING, logger="perforate"):
        for s in scores:
            _step(ctl)
            ctl.end_epoch(s)
    assert ctl.done
    assert ("the run ended; its best score was the first epoch's" in caplog.text) is note
    assert "the run ended; None" not in caplog.text


def test_skipped_steps_are_logged_with_the_epochs_number(caplog):
    ctl = _ctl()
    _step(ctl)
    ctl.end_epoch(0.5)
    ctl.optimizer.zero_grad()
    (ctl.model(torch.randn(4, 3)).sum() * float("inf")).backward()  # a scaler skips this
    with caplog.at_level(logging.WARNING, logger="perforate"):
        ctl.end_epoch(0.5)
    assert "epoch 2: no optimizer step took effect" in caplog.text


def _checkpoint(tmp_path):
    ctl = _ctl()
    _step(ctl)
    ctl.end_epoch(0.5)
    return ctl.save_checkpoint(tmp_path / "c.safetensors")


def test_resume_refuses_a_checkpoint_whose_config_is_invalid(tmp_path):
    path = _checkpoint(tmp_path)
    state = training_state.load(path)
    state["controller"]["config"]["patience"] = 0
    training_state.save(path, state)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(perforate.CheckpointError, match="saved config is invalid: patience"):
        Perforator.resume(path, model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert not perforate.dendritic_layers(model)


def test_a_failed_resume_into_a_plain_model_leaves_it_plain_and_unchanged(tmp_path):
    path = _checkpoint(tmp_path)
    state = training_state.load(path)
    del state["controller"]["epoch"]  # a damaged controller state
    training_state.save(path, state)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Exception):  # noqa: B017 (whatever the damage raises)
        Perforator.resume(path, model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert not perforate.dendritic_layers(model)
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_failed_resume_into_a_wrapped_model_leaves_it_wrapped(tmp_path):
    path = _checkpoint(tmp_path)
    state = training_state.load(path)
    del state["controller"]["epoch"]
    training_state.save(path, state)
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))
    with pytest.raises(Exception):  # noqa: B017 (whatever the damage raises)
        Perforator.resume(path, model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert set(perforate.dendritic_layers(model)) == {"0", "2"}


def test_a_budget_run_spends_each_steps_cost_and_asks_nothing_after_an_install():
    from perforate import Event

    ctl = _ctl(dendrite_check_steps=2, dendrite_max_epochs=1, patience=1, cycle_patience=1)

    def epoch(score):
        asked = []
        for _ in range(4):
            ctl.optimizer.zero_grad()
            ctl.model(torch.randn(8, 3)).pow(2).mean().backward()
            ctl.optimizer.step()
            asked.append(ctl.end_step())
        return asked, ctl.end_epoch(score)

    assert epoch(0.5) == ([False] * 4, Event.CONTINUE)
    assert epoch(0.5) == ([False] * 4, Event.DENDRITE_PHASE)
    assert ctl.switching.first_cost == 8.0  # the first neuron phase: 8 plain steps
    # Judged every 2 steps; a cap of one judgement: the install is due from step 2 on.
    assert epoch(0.5) == ([False, True, True, True], Event.INSTALLED)
    # 4 dendrite-phase steps of 4 candidates: 4 * (2 + 2 * 4) / 3.
    assert ctl.switching.spent == pytest.approx(4 * 10 / 3)
    asked, _ = epoch(0.5)
    assert asked == [False] * 4  # the install happened: nothing is due any more
    # 4 neuron-phase steps with one dendrite per neuron: 4 * (1 + 1 / 3) more.
    assert ctl.switching.spent == pytest.approx(4 * 10 / 3 + 4 * 4 / 3)


def test_a_dendrite_phase_whose_checkpoint_fails_draws_the_same_candidates_again(
    tmp_path, monkeypatch
):
    from perforate import Event

    ctl = _ctl(switch_mode="fixed", fixed_neuron_epochs=1)
    ctl.checkpoint_path = tmp_path / "c.safetensors"
    _step(ctl)
    before = _cloned(ctl.state_dict())

    def full_disk(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training_state, "save", full_disk)
    with pytest.raises(OSError):
        ctl.end_epoch(0.5)  # draws candidates, then fails writing the checkpoint
    _same(ctl.state_dict(), before, "controller")  # the generator included
    monkeypatch.undo()
    assert ctl.end_epoch(0.5) == Event.DENDRITE_PHASE


def test_finish_writes_the_final_checkpoint(tmp_path):
    ctl = _ctl()
    ctl.checkpoint_path = tmp_path / "c.safetensors"
    _step(ctl)
    ctl.end_epoch(0.5)
    (tmp_path / "c.safetensors").unlink()
    ctl.finish()
    assert training_state.load(tmp_path / "c.safetensors")["controller"]["phase"] == "done"


def test_a_state_restores_the_direction_check_and_refuses_what_does_not_fit():
    ctl = _ctl()
    for s in (0.5, 0.4):
        _step(ctl)
        ctl.end_epoch(s)
    state = ctl.state_dict()
    fresh = _ctl()
    fresh.load_state_dict(state)
    assert fresh.direction_check.scores == [0.5, 0.4]
    odd = {**state, "requires_grad": {**state["requires_grad"], "9.weight": True}}
    with pytest.raises(
        perforate.CheckpointMismatchError, match=r"not in the model: \['9.weight'\]"
    ):
        _ctl().load_state_dict(odd)
    broken = {k: v for k, v in state.items() if k != "phase"}
    with pytest.raises(perforate.CheckpointError, match="malformed controller state"):
        _ctl().load_state_dict(broken)


def test_the_controllers_config_reaches_layers_wrapped_earlier():
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 2)), DendriteConfig())
    Perforator(
        model, DendriteConfig(objective="pearson"), optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    layer = perforate.dendritic_layers(model)["0"]
    assert layer.config.objective == "pearson"
    assert layer.draw_candidates(2, generator=torch.Generator()).objective == "pearson"


@pytest.mark.parametrize(
    ("seed", "ok"), [(-(2**63), True), (2**64 - 1, True), (-(2**63) - 1, False), (2**64, False)]
)
def test_a_seed_must_fit_64_bits(seed, ok):
    model = nn.Sequential(nn.Linear(3, 2))
    make = lambda: Perforator(  # noqa: E731
        model, DendriteConfig(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), seed=seed
    )
    if ok:
        make()
    else:
        with pytest.raises(perforate.ConfigError, match=r"seed must lie in \[-2\*\*63, 2\*\*64\)"):
            make()


def test_a_retry_is_logged_with_the_cycle_and_the_score_to_beat(caplog):
    from perforate import Event

    ctl = _ctl(switch_mode="fixed", fixed_neuron_epochs=1, fixed_dendrite_epochs=1)
    events = []
    with caplog.at_level(logging.INFO, logger="perforate"):
        for score in (0.5, 0.5, 0.4):  # the cycle with dendrites scores worse
            _step(ctl)
            events.append(ctl.end_epoch(score))
    assert events[-1] == Event.RETRY
    assert "epoch 3: cycle 1 did not beat 0.5; back to the accepted state (retry 1)" in caplog.text
