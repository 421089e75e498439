"""The budget schedule: settled dendrite phases, short later neuron phases, a cost cap."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from perforate import DendriteConfig, Event, Perforator
from perforate.accounting import step_cost
from perforate.convert import dendritic_layers
from perforate.switching import BudgetSwitching, Improvement, correlation_se, resolve_switching


def policy(**kw):
    args = dict(patience=3, cycle_patience=1, check_steps=5, settle_z=2.0, cost_budget=2.0)
    return BudgetSwitching(Improvement(rel=0.0, abs=0.01), **{**args, **kw})


def test_correlation_standard_error_by_hand():
    assert correlation_se(0.5, 103) == pytest.approx(0.75 / 10)
    assert correlation_se(0.0, 10_003) == pytest.approx(0.01)
    assert correlation_se(0.3, 3) == math.inf


def test_first_neuron_phase_takes_patience_later_ones_cycle_patience():
    p = policy()
    assert [p.neuron_epoch(s) for s in (0.5, 0.4, 0.4, 0.4)] == [False, False, False, True]
    p.start_dendrite_phase()
    p.start_neuron_phase(0.5)
    assert p.neuron_epoch(0.505) is True  # within the 0.01 margin: one evaluation is all
    p.start_neuron_phase(0.5)
    assert [p.neuron_epoch(s) for s in (0.52, 0.51)] == [False, True]


def test_dendrite_phase_installs_when_the_gain_is_within_z_standard_errors():
    p = policy(dendrite_max_epochs=10)
    p.start_dendrite_phase()
    n = 10_003  # se(r) = (1 - r^2) / 100
    assert p.dendrite_epoch(0.10, n) is False  # nothing to compare with yet
    assert p.dendrite_epoch(0.20, n) is False  # +0.10 > 2 * 0.0096
    assert p.dendrite_epoch(0.21, n) is True  # +0.01 <= 2 * 0.00956
    p.start_dendrite_phase()
    assert p.dendrite_epoch(0.10, 103) is False
    assert p.dendrite_epoch(0.20, 103) is True  # few patterns: +0.10 is within 2 * 0.096
    q = policy(dendrite_max_epochs=2, settle_z=0.0, dendrite_improvement_rel=0.0)
    q.start_dendrite_phase()
    assert [q.dendrite_epoch(r, n) for r in (0.1, 0.5)] == [False, True]  # the cap


def test_cost_after_the_first_phase_is_capped_relative_to_it():
    p = policy(cost_budget=2.0)
    p.spend(10.0)
    assert not p.exhausted()  # the first phase is never cut
    p.start_dendrite_phase()
    p.spend(19.0)
    assert not p.exhausted()
    p.spend(1.0)
    assert p.exhausted()
    unlimited = policy(cost_budget=0.0)
    unlimited.spend(1.0)
    unlimited.start_dendrite_phase()
    unlimited.spend(1e9)
    assert not unlimited.exhausted()


def test_policy_state_round_trips_and_continues_alike():
    a = policy()
    a.spend(4.0)
    a.neuron_epoch(0.5)
    a.start_dendrite_phase()
    a.dendrite_epoch(0.1, 50)
    a.spend(3.0)
    b = policy()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b.dendrite_epoch(0.1001, 50) == a.dendrite_epoch(0.1001, 50) is True
    b.spend(5.0), a.spend(5.0)
    assert a.exhausted() == b.exhausted() is True


def test_config_selects_the_budget_policy_with_its_settings():
    cfg = DendriteConfig(switch_mode="budget", cycle_patience=4, dendrite_check_steps=7)
    p = resolve_switching(cfg)
    assert isinstance(p, BudgetSwitching)
    assert (p.cycle_patience, p.check_steps, p.cost_budget) == (4, 7, cfg.cost_budget)


def sgd(params):
    return torch.optim.SGD(params, lr=0.05)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def step(model, ctl, gen):
    x = torch.randn(16, 3, generator=gen)
    t = torch.randn(16, 2, generator=gen)
    ctl.optimizer.zero_grad()
    nn.functional.mse_loss(model(x), t).backward()
    ctl.optimizer.step()


CFG = DendriteConfig(
    switch_mode="budget",
    patience=2,
    cycle_patience=1,
    dendrite_check_steps=3,
    settle_z=1e6,  # any window after the first counts as settled
    improvement_abs=0.01,
    improvement_rel=0.0,
    cost_budget=0.0,
)


def drive(model, ctl, gen, scores, steps_per_epoch=10, call_end_step=True, log=None):
    """The documented loop: steps, `end_step` after each, `end_epoch` per epoch or early."""
    for score in scores:
        if ctl.done:
            break
        taken = 0
        for _ in range(steps_per_epoch):
            step(model, ctl, gen)
            taken += 1
            if call_end_step and ctl.end_step():
                break
        event = ctl.end_epoch(score)
        if log is not None:
            log.append((ctl.history[-1].phase, taken, event))
    return ctl


def test_dendrite_phase_ends_mid_epoch_when_settled_and_installs_at_end_epoch():
    model = tiny()
    ctl = Perforator(model, CFG, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    log = []
    drive(model, ctl, torch.Generator().manual_seed(1), [0.5, 0.5, 0.5, 0.0, 0.6], log=log)
    assert [e for _, _, e in log[:3]] == [Event.CONTINUE, Event.CONTINUE, Event.DENDRITE_PHASE]
    # Two windows of 3 steps: judged at step 3 (nothing to compare), settled at step 6.
    assert log[3] == ("dendrite", 6, Event.INSTALLED)
    assert ctl.history[3].correlation  # the judged window's correlation is recorded
    assert sum(ctl.dendrite_counts()["0"]) > 0
    # Step cost by hand: (2 + 2P)/3 in a dendrite phase, 1 + k/3 with k dendrites per
    # neuron (here every one of the 4 + 2 neurons has one).
    layers = dendritic_layers(model)
    assert step_cost(layers, True, 4) == pytest.approx(10 / 3)
    assert ctl.dendrite_counts() == {"0": [1, 1, 1, 1], "2": [1, 1]}
    assert step_cost(layers, False, 4) == pytest.approx(1 + 1 / 3)


def test_a_loop_without_end_step_has_each_epoch_judged():
    model = tiny()
    ctl = Perforator(model, CFG, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    log = []
    scores = [0.5, 0.5, 0.5, 0.0, 0.0, 0.6]
    drive(model, ctl, torch.Generator().manual_seed(1), scores, call_end_step=False, log=log)
    assert [(p, e) for p, _, e in log[3:5]] == [
        ("dendrite", Event.CONTINUE),
        ("dendrite", Event.INSTALLED),
    ]


def test_a_window_cut_by_the_epoch_end_is_judged_at_half_a_window_or_carried_on():
    model = tiny()
    cfg = CFG.replace(dendrite_check_steps=6)  # half a window: 3 steps
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    log = []
    gen = torch.Generator().manual_seed(1)
    drive(model, ctl, gen, [0.5, 0.5, 0.5], log=log)
    assert ctl.phase.value == "dendrite"
    before = ctl.layers["0"].stats.count.item()
    drive(model, ctl, gen, [0.0], steps_per_epoch=2, log=log)
    # 2 steps: not half a window, so nothing is judged and the statistics go on.
    assert log[3] == ("dendrite", 2, Event.CONTINUE) and not ctl.history[3].correlation
    assert ctl.layers["0"].stats.count.item() > before
    drive(model, ctl, gen, [0.0, 0.0, 0.0], steps_per_epoch=2, log=log)
    assert [(p, n, e.value) for p, n, e in log[4:7]] == [
        ("dendrite", 2, "continue"),  # 4 steps: judged (the first window: nothing to compare)
        ("dendrite", 2, "continue"),  # 2 steps of the next window
        ("dendrite", 2, "installed"),  # 4 steps: judged, settled
    ]
    assert ctl.history[4].correlation


def test_the_cost_budget_stops_new_cycles_and_keeps_the_best_accepted_model(caplog):
    caplog.set_level(logging.INFO, logger="perforate")
    model = tiny()
    cfg = CFG.replace(cost_budget=0.5, max_retries=5)
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    log = []
    # First phase: 3 epochs of 10 steps = 30 units, so the budget is 15. The dendrite
    # phase (6 steps at (2 + 2*4)/3 = 3.33 each = 20 units) is finished, and so is its
    # neuron phase (cycle_patience 1); then no retry starts although 5 are allowed.
    scores = [0.5, 0.5, 0.5, 0.0, 0.4, 0.4, 0.4]
    drive(model, ctl, torch.Generator().manual_seed(1), scores, log=log)
    assert [e.value for _, _, e in log] == [
        "continue",
        "continue",
        "dendrite_phase",
        "installed",
        "done",
    ]
    assert ctl.best_score == 0.5  # the cycle did not improve: its dendrites are removed
    assert ctl.dendrites_kept == 0
    assert "cost budget is spent" in caplog.text
    assert "ended with no dendrites" in caplog.text  # nobody believes they got dendrites
    unlimited = Perforator(tiny(), CFG.replace(max_retries=5), optimizer=sgd, seed=0)
    drive(unlimited.model, unlimited, torch.Generator().manual_seed(1), scores)
    assert unlimited.history[4].event == "retry"  # without the budget: another cycle


def test_the_restart_control_never_claims_missing_dendrites(caplog):
    model = tiny()
    cfg = CFG.replace(method="restart", max_cycles=1)
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    drive(model, ctl, torch.Generator().manual_seed(1), [0.5] * 10)
    assert ctl.done and ctl.dendrites_kept == 0
    assert "no dendrites" not in caplog.text


@pytest.mark.parametrize("stop_after", [3, 4, 5])  # before, in and after a dendrite phase
def test_budget_run_resumes_exactly(tmp_path, stop_after):
    scores = [0.5, 0.5, 0.5, 0.0, 0.0, 0.6, 0.6, 0.0, 0.0, 0.7, 0.5, 0.5]

    def fresh():
        model = tiny()
        ctl = Perforator(model, CFG, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=3)
        return model, ctl

    ref_model, ref = fresh()
    drive(ref_model, ref, torch.Generator().manual_seed(1), scores, steps_per_epoch=2)
    model, ctl = fresh()
    gen = torch.Generator().manual_seed(1)
    drive(model, ctl, gen, scores[:stop_after], steps_per_epoch=2)
    path = ctl.save_checkpoint(tmp_path / "c.safetensors")
    model = tiny()
    ctl = Perforator.resume(path, model, optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    drive(model, ctl, gen, scores[stop_after:], steps_per_epoch=2)
    strip = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ctl.history]
    assert strip == [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ref.history]
    a, b = ref_model.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_controller_state_from_before_the_budget_settings_still_loads():
    """0.2 states lack the window and the budget settings: those take their defaults."""
    cfg = DendriteConfig(switch_mode="patience", patience=1, dendrite_max_epochs=1)
    model = tiny()
    ctl = Perforator(model, cfg, optimizer=sgd, seed=0)
    drive(model, ctl, torch.Generator().manual_seed(1), [0.5, 0.4, 0.0], call_end_step=False)
    state = ctl.state_dict()
    del state["window"]
    for name in ("cycle_patience", "dendrite_check_steps", "settle_z", "cost_budget"):
        del state["config"][name]
    fresh = Perforator(tiny(), cfg, optimizer=sgd, seed=0)
    fresh.load_state_dict(state)
    assert fresh.epoch == ctl.epoch and fresh.phase == ctl.phase
    assert fresh.state_dict()["window"] == {
        "steps": 0,
        "stepping": False,
        "install_due": False,
        "correlation": {},
    }


def test_a_window_of_one_step_judges_inside_end_step_and_never_an_empty_one():
    model = tiny()
    cfg = CFG.replace(dendrite_check_steps=1, settle_z=0.0, dendrite_improvement_rel=10.0)
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    log = []
    gen = torch.Generator().manual_seed(1)
    drive(model, ctl, gen, [0.5, 0.5, 0.5], log=log)
    # Every step is judged; the second judgement (gain < 10x) settles at step 2.
    drive(model, ctl, gen, [0.0], steps_per_epoch=10, log=log)
    assert log[3] == ("dendrite", 2, Event.INSTALLED)
    # Epochs of one step: the first judgement (inside end_step) can never install, so the
    # end_epoch right after it has nothing new to judge and goes on (it used to judge
    # empty statistics and raise).
    model = tiny()
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0)
    log = []
    drive(model, ctl, gen, [0.5, 0.5, 0.5], log=log)
    drive(model, ctl, gen, [0.0, 0.0], steps_per_epoch=1, log=log)
    assert log[3] == ("dendrite", 1, Event.CONTINUE)
    assert log[4] == ("dendrite", 1, Event.INSTALLED)
