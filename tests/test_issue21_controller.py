"""Issue 21: the controller's defects a hostile review found, each pinned by its case."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from torch import nn

from perforate import DendriteConfig, Event, Perforator, Phase


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def step(model, ctl, gen, n=16, inputs=4):
    x = torch.randn(n, inputs, generator=gen)
    ctl.optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    ctl.optimizer.step()


def drive(ctl, model, scores, gen, inputs=4):
    events = []
    for s in scores:
        step(model, ctl, gen, inputs=inputs)
        events.append(ctl.end_epoch(s))
    return events


QUICK = DendriteConfig(patience=1, switch_mode="patience", dendrite_max_epochs=1)


# --- 1. a weight shared by two wrapped layers -------------------------------------------
def tied():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    m[2].weight = m[0].weight
    return m


def test_e106_a_tied_weight_trains_again_after_a_dendrite_phase(gen):
    model = tied()
    ctl = Perforator(model, QUICK, optimizer=sgd)
    shared = model[0].base.weight
    assert model[2].base.weight is shared
    events = drive(ctl, model, [0.5, 0.4], gen)
    assert events == [Event.CONTINUE, Event.DENDRITE_PHASE] and not shared.requires_grad
    assert drive(ctl, model, [0.4], gen) == [Event.INSTALLED]
    assert shared.requires_grad  # layer 2 had recorded it frozen (by layer 0) and kept it so
    assert any(p is shared for p in ctl.parameters_in_use())
    before = shared.detach().clone()
    step(model, ctl, gen)
    assert not torch.equal(before, shared)


def test_e106_a_users_frozen_tied_weight_stays_frozen_and_a_resume_mid_phase_restores_it(gen):
    model = tied()
    model[0].weight.requires_grad_(False)
    ctl = Perforator(model, QUICK, optimizer=sgd)
    drive(ctl, model, [0.5, 0.4], gen)
    assert ctl.phase == Phase.DENDRITE
    state = ctl.state_dict()
    other = tied()
    other[0].weight.requires_grad_(False)
    ctl2 = Perforator(other, QUICK, optimizer=sgd)
    ctl2.load_state_dict(state)
    for c, m in ((ctl, model), (ctl2, other)):
        drive(c, m, [0.4], gen)
        assert c.phase == Phase.NEURON and not m[0].base.weight.requires_grad
        assert m[0].base.bias.requires_grad and m[2].base.bias.requires_grad
    # A trainable tied weight, resumed mid phase, trains again afterwards.
    model = tied()
    ctl = Perforator(model, QUICK, optimizer=sgd)
    drive(ctl, model, [0.5, 0.4], gen)
    other = tied()
    ctl2 = Perforator(other, QUICK, optimizer=sgd)
    ctl2.load_state_dict(ctl.state_dict())
    drive(ctl2, other, [0.4], gen)
    assert other[0].base.weight.requires_grad and other[2].base.weight.requires_grad


# --- 2. remove_dendrites inside a dendrite phase ----------------------------------------
def test_e107_remove_dendrites_is_refused_inside_a_dendrite_phase_and_works_after_finish(gen):
    import perforate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, QUICK, optimizer=sgd)
    drive(ctl, model, [0.5, 0.4], gen)
    assert ctl.phase == Phase.DENDRITE
    with pytest.raises(perforate.PhaseError, match=r"dendrite phase.*ctl\.finish\(\)"):
        perforate.remove_dendrites(model)
    assert perforate.dendritic_layers(model)  # untouched: still wrapped, still in the phase
    assert all(layer.candidates is not None for layer in ctl.layers.values())
    ctl.finish()
    plain = perforate.remove_dendrites(model)
    assert all(p.requires_grad for p in plain.parameters())
    assert type(plain[0]) is nn.Linear and type(plain[3]) is nn.Linear


# --- 3. a second controller on the same model --------------------------------------------
def normed():
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))


def test_e108_a_second_controller_is_refused_while_the_first_is_in_a_dendrite_phase(gen):
    import perforate

    model = normed()
    first = Perforator(model, QUICK, optimizer=sgd)
    drive(first, model, [0.5, 0.4], gen)
    assert first.phase == Phase.DENDRITE and not model[0].weight.requires_grad
    with pytest.raises(perforate.PhaseError, match=r"dendrite phase of another Perforator"):
        Perforator(model, QUICK, optimizer=sgd)
    # The first one goes on undisturbed and gives the LayerNorm back.
    assert drive(first, model, [0.4], gen) == [Event.INSTALLED]
    assert model[0].weight.requires_grad and model[0].bias.requires_grad
    first.finish()
    second = Perforator(model, QUICK, optimizer=sgd)  # a finished run's model is free
    assert second.phase == Phase.NEURON


def test_e108_two_controllers_used_in_turn_are_refused(gen):
    import perforate

    model = normed()
    first = Perforator(model, QUICK, optimizer=sgd)
    drive(first, model, [0.5], gen)
    second = Perforator(model, QUICK, optimizer=sgd)  # takes over a neuron phase
    drive(second, model, [0.5], gen)
    step(model, first, gen)
    for call in (lambda: first.end_epoch(0.4), first.end_step, first.finish):
        with pytest.raises(perforate.PhaseError, match="another Perforator"):
            call()
    assert first.epoch == 1 and second.epoch == 1
    assert drive(second, model, [0.6], gen) == [Event.CONTINUE]  # the newer one works


# --- 4. layers that receive no gradient ------------------------------------------------
class TwoHeads(nn.Module):
    """A trunk and a head in use; `spare` is used as `mode` says: never, under no_grad,
    or with its output detached."""

    def __init__(self, mode: str = "unused") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)
        self.mode = mode

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        y = self.head(h)
        if self.mode == "no_grad":
            with torch.no_grad():
                teacher = self.spare(h)
            y = y + teacher
        elif self.mode == "detached":
            y = y + self.spare(h).detach()
        return y


@pytest.mark.parametrize("mode", ["unused", "no_grad", "detached"])
def test_e109_a_layer_without_gradient_is_named_with_the_likely_causes(mode, gen):
    import perforate

    model = TwoHeads(mode)
    ctl = Perforator(model, QUICK, optimizer=sgd)
    drive(ctl, model, [0.5, 0.4], gen)
    assert ctl.phase == Phase.DENDRITE
    step(model, ctl, gen)
    with pytest.raises(perforate.PhaseError) as caught:
        ctl.end_epoch(0.4)
    text = str(caught.value)
    assert "layers ['spare'] received no gradient" in text and "2 other layer(s) did" in text
    for cause in ("not used in forward", "torch.no_grad()", "detached", "exclude"):
        assert cause in text
    assert "'trunk'" not in text and "'head'" not in text


def test_e109_no_statistics_anywhere_names_every_layer_and_the_backward_call(gen):
    import perforate

    model = TwoHeads("unused")
    ctl = Perforator(model, QUICK, optimizer=sgd)
    drive(ctl, model, [0.5, 0.4], gen)
    ctl.optimizer.step()  # a step, but no forward with gradients: nothing gathered
    with pytest.raises(perforate.PhaseError) as caught:
        ctl.end_epoch(0.4)
    text = str(caught.value)
    assert "at any layer (['trunk', 'head', 'spare'])" in text
    assert "loss.backward()" in text and "torch.no_grad()" in text


# --- 5. end_epoch is all or nothing -------------------------------------------------------
SCORES = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8]


def run(scores, checkpoint_path=None, fail=None, **options):
    """A seeded run; `fail(epoch_index)` may raise before each end_epoch's own work is
    done (it is called again after the failure, when it should not raise)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, QUICK, optimizer=sgd, checkpoint_path=checkpoint_path, **options)
    gen = torch.Generator().manual_seed(7)
    events, failures = [], []
    for i, s in enumerate(scores):
        step(model, ctl, gen)
        try:
            if fail is not None:
                fail(i)
            events.append(ctl.end_epoch(s))
        except Exception as exc:
            failures.append((i, ctl.epoch, len(ctl.history), type(exc).__name__, str(exc)))
            if fail is not None:
                fail(None)  # the cause is fixed; the same call again
            events.append(ctl.end_epoch(s))
        if ctl.done:
            break
    return ctl, model, events, failures


def same_run(a, b):
    (ca, ma, ea, _), (cb, mb, eb, _) = a, b
    assert ea == eb and ca.epoch == cb.epoch and ca.phase == cb.phase
    keep = ("epoch", "cycle", "phase", "score", "best_score", "event", "dendrites")
    assert [[getattr(r, k) for k in keep] for r in ca.history] == [
        [getattr(r, k) for k in keep] for r in cb.history
    ]
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ra = {n: p.requires_grad for n, p in ma.named_parameters()}
    assert ra == {n: p.requires_grad for n, p in mb.named_parameters()}


def test_e115_a_checkpoint_folder_that_is_a_file_is_refused_before_anything_changes(tmp_path):
    reference = run(SCORES, tmp_path / "ok" / "c.safetensors")
    assert {Event.DENDRITE_PHASE, Event.INSTALLED} <= set(reference[2])
    blocker = tmp_path / "runs"

    def fail(i):
        if i == 3:  # a file where the checkpoint's folder should be
            shutil.rmtree(blocker)
            blocker.write_text("not a folder")
        elif i is None and blocker.is_file():
            blocker.unlink()

    ctl, model, events, failures = run(SCORES, blocker / "c.safetensors", fail)
    assert [f[:4] for f in failures] == [(3, 3, 3, "CheckpointError")]
    assert "is a file, not a folder" in failures[0][4] and "call end_epoch again" in failures[0][4]
    same_run(reference, (ctl, model, events, failures))
    assert (blocker / "c.safetensors").is_file()


@pytest.mark.parametrize("where", [1, 2, 3, 4])  # continue, dendrite phase, install, continue
def test_e115_a_failed_checkpoint_write_rolls_the_epoch_back_and_the_retry_matches(
    where, tmp_path, monkeypatch
):
    from perforate import training_state

    reference = run(SCORES, tmp_path / "a" / "c.safetensors")
    real = training_state.save
    broken = {"on": False}

    def save(path, state):
        if broken["on"]:
            raise OSError(28, "No space left on device")  # after the path checks passed
        return real(path, state)

    def fail(i):
        broken["on"] = i == where

    monkeypatch.setattr(training_state, "save", save)
    result = run(SCORES, tmp_path / "b" / "c.safetensors", fail)
    failures = result[3]
    assert [f[:4] for f in failures] == [(where, where, where, "OSError")]
    same_run(reference, result)


def test_e115_a_one_cycle_schedule_stepped_past_its_end_changes_nothing(gen):
    import perforate

    def one_cycle(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=2)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, DendriteConfig(patience=5), optimizer=sgd, scheduler=one_cycle)
    drive(ctl, model, [0.5, 0.55], gen)  # OneCycleLR's construction is its first step
    step(model, ctl, gen)
    lr = ctl.optimizer.param_groups[0]["lr"]
    before = (ctl.epoch, len(ctl.history), ctl.scheduler.state_dict()["last_epoch"])
    for _ in range(2):  # the retry says the same, not "no ctl.optimizer.step()"
        with pytest.raises(perforate.ConfigError, match=r"scheduler raised.*total_steps"):
            ctl.end_epoch(0.6)
        assert (ctl.epoch, len(ctl.history), ctl.scheduler.state_dict()["last_epoch"]) == before
        assert ctl.optimizer.param_groups[0]["lr"] == lr
        assert ctl.direction_check.scores == [0.5, 0.55] and ctl.best_score == 0.55


# --- 6. copy.deepcopy of a controller -------------------------------------------------------
@pytest.mark.parametrize("copied_at", [1, 3])  # a neuron phase, a dendrite phase
def test_e116_a_deep_copy_of_a_controller_drives_its_own_model_exactly_as_the_original(
    copied_at,
):
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, QUICK, optimizer=sgd, seed=3)
    gen = torch.Generator().manual_seed(7)
    drive(ctl, model, SCORES[:copied_at], gen)
    twin = copy.deepcopy(ctl)
    assert twin.model is not model and twin.phase == ctl.phase
    own = {id(p) for p in twin.model.parameters()}
    assert all(id(p) in own for p in twin.parameters_in_use())
    runs = []
    for c in (ctl, twin):
        g = torch.Generator().manual_seed(11)
        runs.append(drive(c, c.model, SCORES[copied_at:8], g))
    assert runs[0] == runs[1] and twin.epoch == ctl.epoch == 8  # steps counted in both
    sa, sb = model.state_dict(), twin.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r.event for r in ctl.history] == [r.event for r in twin.history]


# --- 7. resuming without the factories the run started with -----------------------------
def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        ({"scheduler"}, ["scheduler=..."]),
        ({"candidate_optimizer"}, ["candidate_optimizer=..."]),
        ({"scheduler", "candidate_optimizer"}, ["scheduler=...", "candidate_optimizer=..."]),
    ],
)
def test_e117_a_resume_without_the_runs_scheduler_or_candidate_optimizer_is_refused(
    dropped, named, tmp_path
):
    import perforate

    factories = {"scheduler": step_lr, "candidate_optimizer": adam}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, QUICK, optimizer=sgd, **factories)
    drive(ctl, model, [0.5], torch.Generator().manual_seed(0))
    path = ctl.save_checkpoint(tmp_path / "c.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    kept = {k: v for k, v in factories.items() if k not in dropped}
    with pytest.raises(perforate.CheckpointMismatchError) as caught:
        Perforator.resume(path, fresh, optimizer=sgd, **kept)
    text = str(caught.value)
    assert all(n in text for n in named) and f"{len(named)} difference(s)" in text
    assert not perforate.dendritic_layers(fresh)  # left as it was given
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    resumed = Perforator.resume(path, fresh, optimizer=sgd, **factories)
    assert resumed.scheduler.state_dict()["last_epoch"] == 1


# --- 8. steps a GradScaler skipped ---------------------------------------------------------
def test_e118_steps_a_grad_scaler_skipped_are_not_blamed_on_another_optimizer(gen, caplog):
    import logging

    import perforate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, DendriteConfig(patience=5), optimizer=sgd)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 4, generator=gen)
    for _ in range(2):  # 1e36 * 2^16 overflows float32: inf gradients, both steps skipped
        ctl.optimizer.zero_grad()
        scaler.scale(model(x).pow(2).mean() * 1e36).backward()
        scaler.step(ctl.optimizer)
        scaler.update()
    assert scaler.get_scale() == 2.0**14
    with caplog.at_level(logging.WARNING, logger="perforate"):
        assert ctl.end_epoch(0.5) == Event.CONTINUE
    assert ctl.epoch == 1 and "every step was skipped on non-finite gradients" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # An optimizer made elsewhere is still named as such ...
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    other.zero_grad()
    model(x).pow(2).mean().backward()
    other.step()
    with pytest.raises(perforate.PhaseError, match="parameters changed: an optimizer made"):
        ctl.end_epoch(0.5)
    # ... and no training at all (gradients cleared) is not blamed on one.
    step(model, ctl, gen)
    ctl.end_epoch(0.5)
    ctl.optimizer.zero_grad(set_to_none=True)
    with pytest.raises(perforate.PhaseError) as caught:
        ctl.end_epoch(0.5)
    assert "GradScaler" in str(caught.value) and "parameters changed" not in str(caught.value)


# --- 9. an optimizer factory that ignores its argument ----------------------------------------
def test_e119_a_factory_that_ignores_its_params_is_refused_before_candidates_train(gen):
    import perforate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    captured = list(model.parameters())  # the plain model's, taken before wrapping

    def ignoring(params):
        return torch.optim.SGD(captured, lr=0.1)

    ctl = Perforator(model, QUICK, optimizer=ignoring)  # a neuron phase: the same tensors
    drive(ctl, model, [0.5], gen)
    step(model, ctl, gen)
    with pytest.raises(perforate.ConfigError) as caught:
        ctl.end_epoch(0.4)  # the dendrite phase would train candidates it does not hold
    text = str(caught.value)
    assert "optimizer factory built an optimizer without 4 of the 4 parameters" in text
    assert "0.candidates.bank.weight" in text and "lambda params" in text
    assert ctl.phase == Phase.NEURON and ctl.epoch == 1  # nothing changed (all or nothing)
    assert all(layer.candidates is None for layer in ctl.layers.values())
    # A factory over the model's parameters at call time holds the candidates: accepted.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ctl = Perforator(model, QUICK, optimizer=lambda p: torch.optim.SGD(model.parameters(), lr=0.1))
    assert drive(ctl, model, [0.5, 0.4], gen) == [Event.CONTINUE, Event.DENDRITE_PHASE]


# --- 10. the direction trap -------------------------------------------------------------------
def regression_data(n, g):
    x = torch.randn(n, 3, generator=g)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] - 0.3 * x[:, 2:3] ** 2
    return x, y + 0.3 * torch.randn(n, 1, generator=g)


def fit(direction, metric, seed=2, max_epochs=25):
    """A user's loop: a 3-16-1 MLP trained with MSE, `metric(model, x, y)` as the score."""
    g = torch.Generator().manual_seed(seed)
    (xt, yt), (xv, yv) = regression_data(256, g), regression_data(128, g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    ctl = Perforator(
        model,
        DendriteConfig(direction=direction, max_epochs=max_epochs),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        seed=0,
    )
    while not ctl.done:
        for i in range(0, 256, 16):
            ctl.optimizer.zero_grad()
            nn.functional.mse_loss(model(xt[i : i + 16]), yt[i : i + 16]).backward()
            ctl.optimizer.step()
        with torch.no_grad():
            ctl.end_epoch(metric(model, xv, yv))
    with torch.no_grad():
        return ctl, nn.functional.mse_loss(model(xv), yv).item()


def mse(model, x, y):
    return nn.functional.mse_loss(model(x), y).item()


def sign_accuracy(model, x, y):
    return ((model(x) > 0) == (y > 0)).float().mean().item()


def test_e120_an_mse_under_maximize_warns_early_and_the_end_does_not_blame_dendrites(caplog):
    import logging

    import perforate

    with (
        caplog.at_level(logging.WARNING, logger="perforate"),
        pytest.warns(perforate.PerforateWarning) as caught,
    ):
        wrong, kept = fit("maximize", mse)
    first = wrong.direction_check.scores
    assert len(first) == 11 and first[0] == max(first)  # patience 10: the best is the first
    assert not all(b < a for a, b in itertools.pairwise(first))  # the old check missed it
    assert wrong.direction_check.worsening() >= 0.7
    text = str(caught[0].message)
    assert "direction='maximize'" in text and "set direction='minimize'" in text
    assert caught[0].filename == __file__  # the user's own end_epoch line
    records = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert text in records  # logged too, for runs that only log
    closing = [r for r in records if "best score was the first epoch's" in r]
    assert closing and "check `direction`" in closing[0]
    assert not any("no cycle with dendrites beat" in r for r in records)
    # The same run under minimize: no warning, and a better model than the one kept above.
    with caplog.at_level(logging.WARNING, logger="perforate"):
        caplog.clear()
        right, best = fit("minimize", mse)
    assert not right.direction_check.suspicious and "direction" not in caplog.text
    assert best < kept / 2 and kept == first[0]


def test_e120_an_accuracy_that_plateaus_early_under_maximize_raises_no_alarm(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="perforate"):
        ctl, _ = fit("maximize", sign_accuracy, max_epochs=20)  # PerforateWarning = error
    first = ctl.direction_check.scores
    assert max(first) - first[0] > 0.05 and not ctl.direction_check.suspicious
    assert "direction" not in caplog.text


@pytest.mark.parametrize(
    ("direction", "scores", "warns"),
    [
        # a noisy falling loss under maximize: 84% of pairs worse, the old check missed it
        ("maximize", [0.42, 0.36, 0.23, 0.20, 0.18, 0.16, 0.13, 0.13, 0.14, 0.14, 0.13], True),
        # a rising accuracy under minimize
        ("minimize", [0.50, 0.61, 0.70, 0.69, 0.75, 0.78, 0.77, 0.80, 0.81, 0.80, 0.82], True),
        # an accuracy whose first epoch happens to be the best of a noisy plateau (59%)
        ("maximize", [0.91, 0.905, 0.908, 0.903, 0.906, 0.907, 0.904, 0.909, 0.905, 0.906], False),
        # an accuracy that rises, then plateaus: the best is late
        ("maximize", [0.60, 0.80, 0.85, 0.86, 0.86, 0.855, 0.86, 0.858, 0.857, 0.859], False),
        # a loss falling then rising back to its start: the last epochs are not worse
        ("maximize", [0.50, 0.30, 0.20, 0.18, 0.20, 0.30, 0.45, 0.50, 0.52, 0.55], False),
    ],
)
def test_e120_the_direction_check_judges_the_trend_not_each_step(direction, scores, warns):
    import warnings

    from perforate.switching import DirectionCheck, Improvement

    check = DirectionCheck(Improvement(maximize=direction == "maximize"), direction)
    for s in scores:
        check.add(s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check.check() is warns
    assert len(caught) == int(warns)
    best = check.improvement.best(scores)  # the run's best when no cycle beat the phase
    assert (check.closing_note(best) is not None) == (best == scores[0])


# --- 11. progress from the Python API ---------------------------------------------------------
def test_e121_show_progress_prints_the_decisions_to_stderr_and_only_after_it_is_called(capsys, gen):
    import logging

    import perforate

    logger = logging.getLogger("perforate")
    level = logger.level
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)

    def a_run():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        ctl = Perforator(model, QUICK.replace(max_cycles=1), optimizer=sgd)
        drive(ctl, model, [0.5, 0.4, 0.4, 0.6, 0.5], gen)
        assert ctl.done

    a_run()
    assert capsys.readouterr().err == ""  # quiet by default
    try:
        handler = perforate.show_progress()
        assert perforate.show_progress() is handler  # idempotent: one handler
        assert [h for h in logger.handlers if isinstance(h, logging.StreamHandler)] == [handler]
        a_run()
        err = capsys.readouterr().err.splitlines()
        assert "perforate: epoch 2: dendrite phase of cycle 0: candidates attached" in err
        assert any(line.startswith("perforate: epoch 3: installed ") for line in err)
        assert any("the run ends: max_cycles=1 reached" in line for line in err)
        assert perforate.show_progress(logging.WARNING) is handler
        a_run()
        assert "dendrite phase" not in capsys.readouterr().err  # INFO no longer shown
    finally:
        logger.removeHandler(perforate.show_progress())
        logger.setLevel(level)
