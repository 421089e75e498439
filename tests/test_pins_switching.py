"""Switching policies built without arguments behave as the default settings say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perforate import DendriteConfig, PerforateWarning, Perforator
from perforate.switching import (
    BudgetSwitching,
    DirectionCheck,
    FixedSwitching,
    Improvement,
    PatienceSwitching,
    resolve_switching,
)


def _public(policy) -> dict:
    return {
        k: v
        for k, v in vars(policy).items()
        if not k.startswith("_") and isinstance(v, (int, float, bool, str))
    }


def test_constructor_defaults_equal_the_default_config():
    cfg = DendriteConfig()
    imp = Improvement.from_config(cfg)
    for cls, mode in (
        (BudgetSwitching, "budget"),
        (PatienceSwitching, "patience"),
        (FixedSwitching, "fixed"),
    ):
        built = cls() if cls is FixedSwitching else cls(imp)
        configured = resolve_switching(cfg.replace(switch_mode=mode))
        assert type(configured) is cls
        assert _public(built) == _public(configured), cls.__name__
        assert _public(built)  # something was compared


def test_improvement_defaults():
    imp = Improvement()
    assert imp.maximize is True
    assert Improvement.from_config(DendriteConfig()) == Improvement(True, 1e-3, 0.0)


def _looks_wrong(scores) -> bool:
    check = DirectionCheck(Improvement(True, 1e-3, 0.0), "maximize")
    for s in scores:
        check.add(s)
    return check.looks_wrong()


def test_the_direction_check_needs_the_whole_last_third_below_the_first():
    # Six scores: the last third is the last two; one of them equals the first.
    assert not _looks_wrong([1.0, 0.5, 0.4, 0.3, 1.0, 0.2])
    assert _looks_wrong([1.0, 0.6, 0.5, 0.4, 0.3, 0.95, 0.2])  # last third 0.95, 0.2
    assert not _looks_wrong([1.0, 0.5])  # too few to tell


def test_a_run_capped_inside_its_first_phase_is_still_checked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    ctl = Perforator(
        model, DendriteConfig(max_epochs=5), optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    with pytest.warns(PerforateWarning, match="moved the wrong way"):
        for score in [1.0, 0.8, 0.6, 0.4, 0.2]:  # a loss, falling, under maximize
            ctl.optimizer.zero_grad()
            model(torch.randn(4, 2)).pow(2).mean().backward()
            ctl.optimizer.step()
            ctl.end_epoch(score)
    assert ctl.done and ctl.direction_check.checked


def test_the_direction_checks_verdict_survives_a_save_and_load():
    check = DirectionCheck(Improvement(True, 1e-3, 0.0), "maximize")
    for s in [1.0, 0.6, 0.5, 0.4, 0.3, 0.95, 0.2]:
        check.add(s)
    with pytest.warns(PerforateWarning, match="moved the wrong way"):
        assert check.check() is True
    back = DirectionCheck(Improvement(True, 1e-3, 0.0), "maximize")
    back.load_state_dict(check.state_dict())
    assert back.suspicious is True and back.checked is True and back.scores == check.scores
    old = DirectionCheck(Improvement(True, 1e-3, 0.0), "maximize")
    old.load_state_dict({"scores": [1.0]})  # written before 0.4
    assert old.suspicious is False and old.checked is False


def test_the_closing_note_speaks_only_when_the_first_score_stayed_best():
    check = DirectionCheck(Improvement(True, 1e-3, 0.0), "maximize")
    for s in (0.9, 0.8):
        check.add(s)
    assert check.closing_note(0.9) is None  # two scores: too few to say
    check.add(0.85)
    note = check.closing_note(0.9)
    assert note is not None and "its best score was the first epoch's (0.9" in note
    assert check.closing_note(0.95) is None  # a later score was better
    assert DirectionCheck(Improvement(), "maximize").closing_note(1.0) is None


def test_fixed_phases_last_exactly_their_length():
    fixed = FixedSwitching(neuron_epochs=2, dendrite_epochs=3)
    fixed.start_neuron_phase(None)
    assert [fixed.neuron_epoch(0.5) for _ in range(2)] == [False, True]
    fixed.start_dendrite_phase()
    assert [fixed.dendrite_epoch(0.1) for _ in range(3)] == [False, False, True]
    fixed.start_dendrite_phase()  # a second dendrite phase counts afresh
    assert [fixed.dendrite_epoch(0.1) for _ in range(3)] == [False, False, True]
