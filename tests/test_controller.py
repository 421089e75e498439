"""The controller as a state machine driven by scripted scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, Event, Perforator


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def train_epoch(model, optimizer, gen):
    """One real step, so weights move every epoch and candidates see an error."""
    x = torch.randn(16, 3, generator=gen)
    t = torch.randn(16, 2, generator=gen)
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), t).backward()
    optimizer.step()


def clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "candidate" not in k}


def run(config, scores, gen):
    model = tiny_model()
    ctl = Perforator(model, config, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), seed=0)
    events, states = [], {}
    for epoch, score in enumerate(scores, start=1):
        assert not ctl.done
        train_epoch(model, ctl.optimizer, gen)
        states[epoch] = clone_state(model)
        events.append(ctl.end_epoch(score))
    return model, ctl, events, states


SCRIPT = [
    0.5,
    0.6,
    0.6,
    0.6,  # cycle 0: best at 2, patience 2 runs out at 4
    0.0,
    0.0,  # dendrite phase: install after switch_mode="patience", dendrite_max_epochs=2
    0.65,
    0.64,
    0.64,  # cycle 1 beats 0.6 by more than 0.01 -> accepted
    0.0,
    0.0,
    0.655,
    0.65,  # cycle 2: best 0.655 is within the 0.01 margin -> rejected, retry
    0.0,
    0.0,
    0.6,
    0.6,
]  # retry cycle fails too -> retries exhausted: done, best of cycle 1
EXPECTED = {
    4: Event.DENDRITE_PHASE,
    6: Event.INSTALLED,
    9: Event.DENDRITE_PHASE,
    11: Event.INSTALLED,
    13: Event.RETRY,
    15: Event.INSTALLED,
    17: Event.DONE,
}


def _config(direction="maximize", **kw):
    return DendriteConfig(
        patience=2,
        dendrite_patience=5,
        switch_mode="patience",
        dendrite_max_epochs=2,
        max_retries=1,
        improvement_rel=0.0,
        improvement_abs=0.01,
        direction=direction,
        **kw,
    )


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_switches_retries_restores_and_stops_at_the_exact_epochs(direction, gen):
    sign = 1 if direction == "maximize" else -1
    model, ctl, events, states = run(_config(direction), [sign * s for s in SCRIPT], gen)
    got = {i + 1: e for i, e in enumerate(events) if e != Event.CONTINUE}
    assert got == EXPECTED
    assert ctl.done and ctl.best_score == pytest.approx(sign * 0.65)
    # The model holds the state of epoch 7 (best of the last accepted cycle), bit for bit.
    final = clone_state(model)
    assert list(final) == list(states[7])
    for k in final:
        assert torch.equal(final[k], states[7][k]), k
    assert all(int(layer.dendrite_count.sum()) > 0 for layer in ctl.layers.values())
    phases = [r.phase for r in ctl.history]
    assert (
        phases
        == ["neuron"] * 4
        + ["dendrite"] * 2
        + ["neuron"] * 3
        + ["dendrite"] * 2
        + ["neuron"] * 2
        + ["dendrite"] * 2
        + ["neuron"] * 2
    )
    assert [r.cycle for r in ctl.history][:7] == [0, 0, 0, 0, 0, 0, 1]
    assert ctl.history[4].correlation and ctl.history[0].correlation == {}
    with pytest.raises(perforate.PhaseError, match="done"):
        ctl.end_epoch(1.0)


def test_restore_after_cycle_0_is_the_best_epoch(gen):
    model, _ctl, events, states = run(_config(), SCRIPT[:4], gen)
    assert events[-1] == Event.DENDRITE_PHASE
    # Candidates exist now; everything else equals epoch 2's state.
    now = clone_state(model)
    for k in states[2]:
        assert torch.equal(now[k], states[2][k]), k


def test_optimizer_covers_only_what_trains_in_each_phase(gen):
    model = tiny_model()
    ctl = Perforator(model, _config(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    n_base = sum(1 for _ in model.parameters())
    assert len(list(ctl.parameters_in_use())) == n_base
    for s in SCRIPT[:4]:
        train_epoch(model, ctl.optimizer, gen)
        ctl.end_epoch(s)
    cands = {id(p) for layer in ctl.layers.values() for p in layer.candidate_parameters()}
    assert {id(p) for p in ctl.parameters_in_use()} == cands
    assert not any(p.requires_grad for p in model.parameters() if id(p) not in cands)
    before = clone_state(model)
    train_epoch(model, ctl.optimizer, gen)  # a dendrite epoch changes nothing but candidates
    after = clone_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    ctl.end_epoch(0.0)
    train_epoch(model, ctl.optimizer, gen)
    assert ctl.end_epoch(0.0) == Event.INSTALLED
    in_use = {id(p) for p in ctl.parameters_in_use()}
    for layer in ctl.layers.values():
        assert id(layer.output_weight) in in_use and id(layer.dendrites.weight) not in in_use
        assert all(id(p) in in_use and p.requires_grad for p in layer.base.parameters())
    before = clone_state(model)
    train_epoch(model, ctl.optimizer, gen)  # a neuron epoch after install moves the neurons
    after = clone_state(model)
    for name in ("0.base.weight", "2.base.weight", "0.output_weight"):
        assert not torch.equal(before[name], after[name]), name
    assert torch.equal(before["0.dendrites.weight"], after["0.dendrites.weight"])


def test_user_frozen_parameters_stay_frozen_across_phases(gen):
    model = nn.Sequential(
        nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)
    )
    model[0].weight.requires_grad_(False)  # the user froze the embedding
    model[2].bias.requires_grad_(False)  # and one bias
    ctl = Perforator(model, _config(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))

    def epoch():
        x = torch.randint(0, 5, (8, 2), generator=gen)
        ctl.optimizer.zero_grad()
        model(x).square().mean().backward()
        ctl.optimizer.step()

    for s in [*SCRIPT[:6]]:
        epoch()
        ctl.end_epoch(s)
    assert not model[0].weight.requires_grad and not model[2].base.bias.requires_grad
    assert model[2].base.weight.requires_grad and model[4].base.bias.requires_grad


def test_fixed_schedule(gen):
    cfg = DendriteConfig(
        switch_mode="fixed",
        fixed_neuron_epochs=3,
        fixed_dendrite_epochs=2,
        max_dendrites=2,
        improvement_abs=0.0,
        improvement_rel=0.0,
    )
    _, ctl, events, _ = run(cfg, [0.1, 0.2, 0.3, 0, 0, 0.4, 0.5, 0.6, 0, 0, 0.7, 0.8, 0.9], gen)
    got = {i + 1: e for i, e in enumerate(events) if e != Event.CONTINUE}
    assert got == {
        3: Event.DENDRITE_PHASE,
        5: Event.INSTALLED,
        8: Event.DENDRITE_PHASE,
        10: Event.INSTALLED,
        13: Event.DONE,
    }  # max_dendrites=2 reached
    assert ctl.best_score == pytest.approx(0.9)


def test_restart_control_never_adds_dendrites(gen):
    cfg = _config(method="restart")
    _, ctl, events, _ = run(cfg, [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], gen)
    got = {i + 1: e for i, e in enumerate(events) if e != Event.CONTINUE}
    assert got == {4: Event.RESTARTED, 7: Event.RESTARTED, 9: Event.RETRY}
    assert all(layer.slots == 0 for layer in ctl.layers.values())
    assert ctl.best_score == pytest.approx(0.7)


def test_gd_dendrites_are_added_untrained_and_learn(gen):
    cfg = DendriteConfig.reference_gd(patience=2, improvement_abs=0.01, improvement_rel=0.0)
    _model, ctl, events, _ = run(cfg, [0.5, 0.6, 0.6, 0.6, 0.7], gen)
    assert events[3] == Event.INSTALLED
    layer = ctl.layers["0"]
    assert layer.dendrite_count.tolist() == [1, 1, 1, 1]
    assert layer.dendrites.weight.requires_grad and not layer.config.perforate
    assert layer.dendrites.weight.abs().mean() > 0.05  # the layer's own init, not 0.01-scaled
    assert id(layer.dendrites.weight) in {id(p) for p in ctl.parameters_in_use()}


def test_selective_threshold_installs_nothing_and_stops(gen):
    _, ctl, events, _ = run(_config(install_threshold=1.0), SCRIPT[:6], gen)
    assert events[-1] == Event.DONE
    assert all(layer.slots == 0 for layer in ctl.layers.values())


def test_max_epochs_ends_with_the_best_state(gen):
    model, _ctl, events, states = run(_config(max_epochs=3), [0.5, 0.7, 0.6], gen)
    assert events == [Event.CONTINUE, Event.CONTINUE, Event.DONE]
    final = clone_state(model)
    assert all(torch.equal(final[k], states[2][k]) for k in final)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high", None, torch.ones(2)])
def test_bad_scores_raise(bad):
    ctl = Perforator(tiny_model(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(perforate.ScoreError):
        ctl.end_epoch(bad)


def test_dendrite_epoch_without_training_raises(gen):
    _, ctl, _, _ = run(_config(), SCRIPT[:4], gen)
    ctl.optimizer.step()  # a step, but no backward: no candidate statistics
    with pytest.raises(perforate.PhaseError, match=r"loss\.backward"):
        ctl.end_epoch(0.0)


def test_end_epoch_without_a_step_on_the_controllers_optimizer_raises(gen):
    model, ctl, _, _ = run(_config(), SCRIPT[:2], gen)
    with pytest.raises(perforate.PhaseError, match=r"without any ctl\.optimizer\.step"):
        ctl.end_epoch(0.5)
    outside = torch.optim.SGD(model.parameters(), lr=0.1)  # made outside the controller
    outside.step()
    with pytest.raises(perforate.PhaseError, match="not one made elsewhere"):
        ctl.end_epoch(0.5)


def test_optimizer_must_be_a_factory():
    model = tiny_model()
    with pytest.raises(TypeError, match="factory"):
        Perforator(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_scheduler_is_rebuilt_and_stepped(gen):
    model = tiny_model()
    ctl = Perforator(
        model,
        _config(),
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
    )
    for s in SCRIPT[:4]:
        train_epoch(model, ctl.optimizer, gen)
        ctl.end_epoch(s)
    assert [r.lr for r in ctl.history] == [1.0, 0.5, 0.25, 0.125]  # lr each epoch trained with
    assert ctl.optimizer.param_groups[0]["lr"] == 1.0  # fresh optimizer, fresh scheduler


def test_max_cycles_zero_is_plain_early_stopping(gen):
    model, ctl, events, states = run(_config(max_cycles=0), [0.5, 0.6, 0.6, 0.6], gen)
    assert events[-1] == Event.DONE and ctl.cycle == 0
    final = clone_state(model)
    assert all(torch.equal(final[k], states[2][k]) for k in final)


def test_step_based_phases(gen):
    model = tiny_model()
    cfg = _config(steps_per_evaluation=5)
    ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    scores = iter(SCRIPT[:6])
    evaluations = []
    for step in range(1, 31):
        train_epoch(model, ctl.optimizer, gen)  # here: one step
        if ctl.end_step():
            evaluations.append((step, ctl.end_epoch(next(scores))))
    assert [s for s, _ in evaluations] == [5, 10, 15, 20, 25, 30]
    assert evaluations[3][1] == Event.DENDRITE_PHASE and evaluations[5][1] == Event.INSTALLED
    # Without steps_per_evaluation a neuron phase never asks for an early evaluation;
    # after the run, end_step is an error.
    model = tiny_model()
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    plain = Perforator(model, DendriteConfig(max_cycles=0, patience=1), optimizer=sgd)
    for score in (0.5, 0.4):
        train_epoch(model, plain.optimizer, gen)
        assert plain.end_step() is False
        plain.end_epoch(score)
    assert plain.done
    with pytest.raises(perforate.PhaseError, match="done"):
        plain.end_step()


def test_dendrite_phase_leaves_norm_running_stats_as_they_were(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, _config(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    for s in SCRIPT[:4]:
        train_epoch(model, ctl.optimizer, gen)
        ctl.end_epoch(s)
    before = model[0].norm.running_mean.clone()
    for s in SCRIPT[4:6]:
        train_epoch(model, ctl.optimizer, gen)  # train mode: BatchNorm updates running stats
        assert not torch.equal(model[0].norm.running_mean, before)
        ctl.end_epoch(s)
    assert torch.equal(model[0].norm.running_mean, before)


def test_signed_output_weight_start_lowers_the_loss_on_average(gen):
    torch.manual_seed(0)
    model = tiny_model()
    ctl = Perforator(
        model, _config(output_weight_init=0.01), optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    x = torch.randn(64, 3, generator=gen)
    t = torch.randn(64, 2, generator=gen)

    def full_batch_epoch():
        ctl.optimizer.zero_grad()
        nn.functional.mse_loss(model(x), t).backward()
        ctl.optimizer.step()

    for s in SCRIPT[:5]:
        full_batch_epoch()
        ctl.end_epoch(s)
    with torch.no_grad():
        loss_before = nn.functional.mse_loss(model(x), t).item()
    full_batch_epoch()
    assert ctl.end_epoch(0.0) == Event.INSTALLED
    with torch.no_grad():
        loss_after = nn.functional.mse_loss(model(x), t).item()
    assert loss_after < loss_before
    v = model[2].output_weight[0]
    assert torch.allclose(v.abs(), torch.full_like(v, 0.01))


def test_prewrapped_model_keeps_its_structure_settings():
    model = perforate.add_dendrites(tiny_model(), DendriteConfig(activation="tanh"))
    ctl = Perforator(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert ctl.config.activation == "tanh"
    with pytest.raises(perforate.ConfigError, match="activation='tanh'"):
        Perforator(model, DendriteConfig(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    ctl = Perforator(
        model,
        DendriteConfig(activation="tanh", objective="covariance"),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    assert all(layer.config.objective == "covariance" for layer in ctl.layers.values())


def test_finish_from_outside_keeps_the_best_state_in_any_phase(gen):
    # In the first neuron phase: the best epoch (2), not the last.
    model, ctl, _, states = run(_config(), [0.5, 0.7, 0.6], gen)
    assert ctl.finish() == Event.DONE and ctl.done
    final = clone_state(model)
    assert all(torch.equal(final[k], states[2][k]) for k in final)
    assert ctl.finish() == Event.DONE  # idempotent
    # Inside a dendrite phase: candidates dropped, every layer back in a neuron phase,
    # the accepted state (epoch 2) restored, outside parameters trainable again.
    model, ctl, _, states = run(_config(), [*SCRIPT[:4], 0.0], gen)
    assert ctl.phase.value == "dendrite"
    ctl.finish()
    assert all(layer.phase.value == "neuron" for layer in ctl.layers.values())
    assert all(layer.candidates is None for layer in ctl.layers.values())
    final = clone_state(model)
    assert all(torch.equal(final[k], states[2][k]) for k in final)
    # Before any score there is nothing to keep.
    fresh = Perforator(tiny_model(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(perforate.PhaseError, match="before any end_epoch"):
        fresh.finish()


def test_phase_changes_and_installs_are_logged_once_each_and_epochs_stay_quiet(gen, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="perforate.controller"):
        run(_config(), SCRIPT[:6], gen)  # neuron phase, dendrite phase, install
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "epoch 4: cycle 0 accepted (best score 0.6, 0 dendrites)"
    assert lines[1] == "epoch 4: dendrite phase of cycle 0: candidates attached"
    assert lines[2].startswith("epoch 6: installed ")
    assert len(lines) == 3  # nothing for the epochs in between
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="perforate.controller"):
        run(_config(max_cycles=0), [0.5, 0.5, 0.5], gen)
    assert "epoch 3: the run ends: max_cycles=0 reached" in [r.getMessage() for r in caplog.records]


def test_history_goes_to_csv_and_to_any_scalar_logger(gen, tmp_path):
    import csv

    from perforate.events import CSV_COLUMNS, write_csv

    _, ctl, _, _ = run(_config(), SCRIPT[:6], gen)
    path = write_csv(ctl.history, tmp_path / "history.csv")
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(ctl.history) == 6
    for row, rec in zip(rows, ctl.history, strict=True):
        assert int(row["epoch"]) == rec.epoch and row["phase"] == rec.phase
        assert float(row["score"]) == rec.score and row["event"] == rec.event
        assert int(float(row["parameters"])) == rec.base_params + rec.dendrite_params
    dendrite_rows = [r for r in rows if r["phase"] == "dendrite"]
    assert dendrite_rows and all(float(r["correlation"]) > 0 for r in dendrite_rows)
    assert all(r["correlation"] == "" for r in rows if r["phase"] == "neuron")
    assert all(r["cycle"].isdigit() and r["dendrites"].isdigit() for r in rows)

    class Writer:  # what TensorBoard's SummaryWriter offers
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    writer = Writer()
    for rec in ctl.history:
        for tag, value in rec.scalars().items():
            writer.add_scalar(f"perforate/{tag}", value, rec.epoch)
    assert ("perforate/dendrite_phase", 1.0, 5) in writer.calls
    assert all(isinstance(v, float) for _, v, _ in writer.calls)
