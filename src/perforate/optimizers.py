"""The optimizer owner: builds what trains now, at the start and after every restructure.

Why the library owns the optimizer: each phase change freezes, thaws or replaces
parameters, and an optimizer built earlier would hold stale ones (the reference library
makes its users rebuild by hand). The user gives factories; this object calls them,
counts the steps taken on the result (on the innermost optimizer, since wrappers from
accelerate or Lightning call its `step` and may carry no hooks of their own), steps the
scheduler, and re-applies a wrapper such as DistributedDataParallel, which registers only
the parameters that train when it is built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import CheckpointMismatchError, ConfigError, PhaseError

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
Wrapper = Callable[[nn.Module], nn.Module]


class OptimizerOwner:
    """Optimizer, scheduler and wrapped model of the current phase.

    Args:
        optimizer: factory `params -> Optimizer` for neuron phases.
        candidate_optimizer: factory for dendrite phases (default: `optimizer`).
        scheduler: optional factory `optimizer -> scheduler`, stepped once per evaluation
            that continues a phase (with the score, for ReduceLROnPlateau).
        wrapper: e.g. `lambda m: DistributedDataParallel(m)`, re-applied at every build.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        candidate_optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        wrapper: Wrapper | None = None,
    ) -> None:
        if not callable(optimizer):
            raise TypeError(
                "optimizer must be a factory, e.g. lambda params: torch.optim.Adam(params), "
                f"got {type(optimizer).__name__}; the controller rebuilds it at every restructure"
            )
        for name, f in (
            ("candidate_optimizer", candidate_optimizer),
            ("scheduler", scheduler),
            ("wrapper", wrapper),
        ):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        self._factory = optimizer
        self._candidate_factory = candidate_optimizer or optimizer
        self._scheduler_factory = scheduler
        self._wrapper = wrapper
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.wrapped: nn.Module | None = None
        self.steps_since_evaluation = 0
        self._stepped: torch.optim.Optimizer | None = None
        self._versions: list[int | None] = []

    def build(self, model: nn.Module, params: list[nn.Parameter], candidates: bool) -> None:
        """A fresh optimizer over `params` (candidate factory if `candidates`)."""
        if not params:
            raise PhaseError("no trainable parameter in the model: nothing to optimise")
        factory = self._candidate_factory if candidates else self._factory
        optimizer = factory(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(optimizer).__name__}, "
                "not a torch.optim.Optimizer"
            )
        inner = optimizer
        while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
            inner = inner.optimizer
        _check_holds(model, inner, params, "candidate_optimizer" if candidates else "optimizer")
        self._stepped = inner
        inner.register_step_post_hook(self._count_step)
        self.optimizer = optimizer
        self.note_versions()
        self.wrapped = model if self._wrapper is None else self._wrapper(model)
        if self._scheduler_factory is not None:
            self.scheduler = self._scheduler_factory(optimizer)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (copy.deepcopy) gets optimizers without hooks (torch drops them): count
        # the steps of the copy's own optimizer again.
        self.__dict__.update(state)
        hooks = getattr(self._stepped, "_optimizer_step_post_hooks", {}).values()
        if self._stepped is not None and not any(
            getattr(h, "__self__", None) is self for h in hooks
        ):
            self._stepped.register_step_post_hook(self._count_step)

    def _count_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer is self._stepped:  # an optimizer of an earlier phase may still step
            self.steps_since_evaluation += 1

    def params(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            return []
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def note_versions(self) -> None:
        """Remember the in-place version of every parameter trained now (call it after an
        evaluation's own changes): `no_steps_reason` tells from it whether anything updated
        them since."""
        self._versions = [getattr(p, "_version", None) for p in self.params()]

    def no_steps_reason(self) -> str:
        """Why no step was counted since the last evaluation: "elsewhere" (the parameters
        changed: another optimizer stepped them), "skipped" (they did not, and their
        gradients are not finite: a GradScaler skipped every step) or "none" (no sign of
        training, or gradients already cleared)."""
        params = self.params()
        versions = [getattr(p, "_version", None) for p in params]
        if getattr(self, "_versions", None) != versions:
            return "elsewhere"
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            return "skipped"
        return "none"

    def take_steps(self) -> int:
        """Steps taken since the last call."""
        n, self.steps_since_evaluation = self.steps_since_evaluation, 0
        return n

    def step_scheduler(self, score: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score)
        else:
            self.scheduler.step()

    def mark(self) -> dict[str, Any]:
        """What `undo` needs to put back the step count, the scheduler and the optimizer's
        hyperparameters (an `end_epoch` that fails is rolled back: controller.py)."""
        hyper = None
        if self.optimizer is not None:
            hyper = [
                copy.deepcopy({k: v for k, v in g.items() if k != "params"})
                for g in self.optimizer.param_groups
            ]
        scheduler = None
        if self.scheduler is not None:
            try:
                scheduler = copy.deepcopy(self.scheduler.state_dict())
            except Exception:  # a state that cannot be copied: left as it is on undo
                scheduler = None
        return {
            "steps": self.steps_since_evaluation,
            "optimizer": self.optimizer,
            "scheduler_object": self.scheduler,
            "hyper": hyper,
            "scheduler": scheduler,
        }

    def undo(self, mark: dict[str, Any]) -> None:
        """Put back what `mark` saw, where the optimizer and scheduler are still those."""
        self.steps_since_evaluation = mark["steps"]
        if self.optimizer is not mark["optimizer"] or self.optimizer is None:
            return  # rebuilt since: the controller restored them from its own state
        for group, saved in zip(self.optimizer.param_groups, mark["hyper"], strict=True):
            group.update(copy.deepcopy(saved))
        if mark["scheduler"] is not None and self.scheduler is mark["scheduler_object"]:
            self.scheduler.load_state_dict(copy.deepcopy(mark["scheduler"]))

    def current_lr(self) -> float | None:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        return float(groups[0]["lr"]) if groups and "lr" in groups[0] else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer_class": None if self._stepped is None else type(self._stepped).__name__,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "steps_since_evaluation": self.steps_since_evaluation,
            "has_scheduler": self._scheduler_factory is not None,
            "has_candidate_optimizer": self._candidate_factory is not self._factory,
        }

    def missing(self, state: dict[str, Any]) -> list[str]:
        """The factories the saved run had and this owner lacks: a resume without them
        would silently train on without a schedule, or the candidates with the neurons'
        optimizer. (States written before 0.4 say only whether a scheduler was stepped.)"""
        had_scheduler = state.get("has_scheduler", state.get("scheduler") is not None)
        out = []
        if had_scheduler and self._scheduler_factory is None:
            out.append(
                "the run was started with a scheduler and is resumed without one: pass "
                "scheduler=... as at the start"
            )
        if state.get("has_candidate_optimizer") and self._candidate_factory is self._factory:
            out.append(
                "the run was started with a candidate_optimizer and is resumed without one: "
                "pass candidate_optimizer=... as at the start"
            )
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into the optimizer and scheduler `build` made for the same phase; the
        optimizer class must be the one saved (Adam moments are no SGD momentum)."""
        saved = state.get("optimizer_class")
        here = None if self._stepped is None else type(self._stepped).__name__
        if saved is not None and here is not None and saved != here:
            raise CheckpointMismatchError(
                f"the checkpoint holds the state of a {saved} optimizer, the factory built a "
                f"{here}; resume with the factory the run started with"
            )
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps_since_evaluation = int(state["steps_since_evaluation"])


def _check_holds(
    model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], name: str
) -> None:
    """A factory must optimise the parameters it is given: one that ignores them (builds
    over `model.parameters()` captured earlier, or over a part of the model) would leave
    new candidates or dendrite output weights untrained, and they would be installed
    as if trained."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in params if id(p) not in held]
    if not missing:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    shown = [names.get(id(p), f"a {tuple(p.shape)} tensor") for p in missing[:5]]
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise ConfigError(
        f"the {name} factory built an optimizer without {len(missing)} of the "
        f"{len(params)} parameters it was given ({', '.join(shown)}{more}): the factory "
        "must optimise its argument, e.g. lambda params: torch.optim.Adam(params, lr=1e-3), "
        "not parameters taken from the model earlier (the controller rebuilds it at every "
        "restructure with what trains now); freeze (requires_grad_(False)) what should not "
        "train"
    )
