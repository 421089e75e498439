"""The optimizer owner: what it builds, which steps it counts, what it refuses."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from perforate import CheckpointMismatchError, ConfigError, PhaseError
from perforate.optimizers import OptimizerOwner


class _Wrapping(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer holding the real one."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.optimizer = inner
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.state = inner.state
        self._optimizer_step_pre_hooks = OrderedDict()  # torch wraps every subclass's step
        self._optimizer_step_post_hooks = OrderedDict()

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def state_dict(self):
        return self.optimizer.state_dict()


def _step(opt, p):
    opt.zero_grad()
    p.pow(2).sum().backward()
    opt.step()


def test_the_factory_for_the_phase_builds_over_the_given_parameters():
    made = []
    owner = OptimizerOwner(
        lambda ps: made.append("neuron") or torch.optim.SGD(ps, lr=0.1),
        candidate_optimizer=lambda ps: made.append("candidate") or torch.optim.SGD(ps, lr=0.2),
    )
    w = nn.Parameter(torch.ones(2))
    model = nn.Linear(1, 1)
    owner.build(model, [w], candidates=True)
    assert made == ["candidate"] and owner.current_lr() == 0.2
    assert owner.wrapped is model and owner.scheduler is None
    owner.build(model, [w], candidates=False)
    assert made == ["candidate", "neuron"] and owner.current_lr() == 0.1
    assert owner.optimizer.param_groups[0]["params"] == [w]
    alone = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=0.3))
    alone.build(model, [w], candidates=True)  # no candidate factory: the same one
    assert alone.current_lr() == 0.3


def test_steps_are_counted_on_the_innermost_optimizer_of_this_phase_only():
    w = nn.Parameter(torch.ones(2))
    owner = OptimizerOwner(lambda ps: _Wrapping(_Wrapping(torch.optim.SGD(ps, lr=0.1))))
    owner.build(nn.Linear(1, 1), [w], candidates=False)
    old = owner.optimizer
    for _ in range(3):
        _step(owner.optimizer, w)
    assert owner.take_steps() == 3 and owner.take_steps() == 0
    owner.build(nn.Linear(1, 1), [w], candidates=False)
    _step(old, w)  # a stale optimizer still stepping is not counted
    _step(owner.optimizer, w)
    assert owner.take_steps() == 1


def test_nothing_to_train_and_a_factory_returning_no_optimizer_are_refused():
    owner = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=0.1))
    with pytest.raises(PhaseError, match="no trainable parameter"):
        owner.build(nn.Linear(1, 1), [], candidates=False)
    bad = OptimizerOwner(lambda ps: "sgd")
    with pytest.raises(TypeError, match=r"returned str, not a torch\.optim\.Optimizer"):
        bad.build(nn.Linear(1, 1), [nn.Parameter(torch.ones(1))], candidates=False)
    with pytest.raises(TypeError, match="candidate_optimizer must be callable, got int"):
        OptimizerOwner(lambda ps: None, candidate_optimizer=1)
    with pytest.raises(TypeError, match="wrapper must be callable"):
        OptimizerOwner(lambda ps: None, wrapper="ddp")


def test_the_wrapper_is_applied_at_every_build():
    seen = []
    owner = OptimizerOwner(
        lambda ps: torch.optim.SGD(ps, lr=0.1), wrapper=lambda m: seen.append(m) or "wrapped"
    )
    model = nn.Linear(1, 1)
    w = nn.Parameter(torch.ones(1))
    owner.build(model, [w], candidates=False)
    owner.build(model, [w], candidates=True)
    assert seen == [model, model] and owner.wrapped == "wrapped"


def test_schedulers_step_with_the_score_only_when_they_take_one():
    w = nn.Parameter(torch.ones(1))
    plateau = OptimizerOwner(
        lambda ps: torch.optim.SGD(ps, lr=1.0),
        scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode="max", patience=0, factor=0.5
        ),
    )
    plateau.build(nn.Linear(1, 1), [w], candidates=False)
    plateau.step_scheduler(1.0)
    plateau.step_scheduler(1.0)  # no better: halved
    assert plateau.current_lr() == 0.5
    step = OptimizerOwner(
        lambda ps: torch.optim.SGD(ps, lr=1.0),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.25),
    )
    step.build(nn.Linear(1, 1), [w], candidates=False)
    _step(step.optimizer, w)
    step.step_scheduler(123.0)
    assert step.current_lr() == 0.25
    none = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=1.0))
    assert none.current_lr() is None  # nothing built yet
    none.step_scheduler(1.0)  # no scheduler: nothing happens


def test_state_names_the_optimizer_class_and_refuses_another():
    w = nn.Parameter(torch.ones(1))
    adam = OptimizerOwner(lambda ps: _Wrapping(torch.optim.Adam(ps, lr=0.1)))
    adam.build(nn.Linear(1, 1), [w], candidates=False)
    state = adam.state_dict()
    assert state["optimizer_class"] == "Adam" and state["scheduler"] is None
    sgd = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=0.1))
    sgd.build(nn.Linear(1, 1), [w], candidates=False)
    with pytest.raises(CheckpointMismatchError, match="state of a Adam optimizer, the factory"):
        sgd.load_state_dict(state)
    empty = OptimizerOwner(lambda ps: None).state_dict()
    assert [empty[k] for k in ("optimizer_class", "optimizer", "scheduler")] == [None] * 3
    assert empty["steps_since_evaluation"] == 0


def _owner_with_history():
    w = nn.Parameter(torch.ones(2))
    owner = OptimizerOwner(
        lambda ps: torch.optim.SGD(ps, lr=1.0, momentum=0.9),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
    )
    owner.build(nn.Linear(1, 1), [w], candidates=False)
    return owner, w


def test_load_restores_momentum_schedule_and_step_count():
    owner, w = _owner_with_history()
    for _ in range(2):
        _step(owner.optimizer, w)
    owner.step_scheduler(0.0)
    state = owner.state_dict()
    fresh, w2 = _owner_with_history()
    fresh.load_state_dict(state)
    assert fresh.current_lr() == 0.5 and fresh.take_steps() == 2
    assert fresh.scheduler.state_dict()["last_epoch"] == 1  # the schedule's own state
    buf = fresh.optimizer.state[w2]["momentum_buffer"]
    assert torch.equal(buf, owner.optimizer.state[w]["momentum_buffer"])


def test_load_of_a_state_without_optimizer_or_scheduler_keeps_the_fresh_ones():
    fresh, _ = _owner_with_history()
    fresh.load_state_dict(
        {"optimizer": None, "scheduler": None, "steps_since_evaluation": 4}
    )  # an old file: no class named either
    assert fresh.current_lr() == 1.0 and fresh.take_steps() == 4
    assert fresh.optimizer.state == {}
    nothing_built = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=1.0))
    owner, _ = _owner_with_history()
    nothing_built.load_state_dict(owner.state_dict())  # nothing to load into: counts only
    assert nothing_built.optimizer is None and nothing_built.take_steps() == 0


def test_a_factory_ignoring_many_parameters_names_five_and_counts_the_rest():
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(7)])
    other = nn.Parameter(torch.ones(1))
    owner = OptimizerOwner(lambda ps: torch.optim.SGD([other], lr=0.1))
    with pytest.raises(ConfigError) as info:
        owner.build(model, list(model.parameters()), candidates=True)
    text = str(info.value)
    assert "the candidate_optimizer factory built an optimizer without 7 of the 7" in text
    assert "(0.weight, 1.weight, 2.weight, 3.weight, 4.weight and 2 more)" in text


def test_undo_puts_back_steps_hyperparameters_and_schedule_of_the_same_optimizer():
    owner, w = _owner_with_history()
    _step(owner.optimizer, w)
    mark = owner.mark()
    _step(owner.optimizer, w)
    owner.step_scheduler(0.0)  # lr 1.0 -> 0.5
    owner.optimizer.param_groups[0]["momentum"] = 0.1
    owner.undo(mark)
    assert owner.current_lr() == 1.0 and owner.optimizer.param_groups[0]["momentum"] == 0.9
    assert owner.scheduler.state_dict()["last_epoch"] == 0 and owner.take_steps() == 1
    mark = owner.mark()
    owner.build(nn.Linear(1, 1), [w], candidates=False)  # rebuilt since the mark
    owner.optimizer.param_groups[0]["lr"] = 7.0
    owner.undo(mark)
    assert owner.current_lr() == 7.0 and owner.take_steps() == 0  # only the count


def test_a_shallow_copy_counts_the_steps_of_the_optimizer_it_shares():
    owner, w = _owner_with_history()
    twin = copy.copy(owner)  # the same optimizer object, a hook for each owner
    _step(owner.optimizer, w)
    assert owner.take_steps() == 1 and twin.take_steps() == 1
    again = copy.copy(twin)
    again.__setstate__(again.__dict__)  # already hooked: not counted twice
    _step(owner.optimizer, w)
    assert again.take_steps() == 1


def test_missing_factories_are_named_and_old_states_judged_by_their_scheduler():
    plain = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=1.0))
    full, _ = _owner_with_history()
    assert plain.missing(full.state_dict()) == [
        "the run was started with a scheduler and is resumed without one: pass "
        "scheduler=... as at the start"
    ]
    assert full.missing(full.state_dict()) == []
    # Written before 0.4: no has_scheduler; a saved scheduler state says there was one.
    assert plain.missing({"scheduler": {"last_epoch": 1}}) != []
    assert plain.missing({"scheduler": None}) == []
    two = OptimizerOwner(
        lambda ps: torch.optim.SGD(ps, lr=1.0), candidate_optimizer=lambda ps: None
    )
    assert "started with a candidate_optimizer" in plain.missing(two.state_dict())[0]


def test_before_any_build_there_is_nothing_to_train_or_blame():
    owner = OptimizerOwner(lambda ps: torch.optim.SGD(ps, lr=1.0))
    assert owner.params() == [] and owner.no_steps_reason() == "none"
