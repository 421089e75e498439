"""When a phase ends: switching policies, each keeping its own counters.

A policy sees one number per evaluation (the validation score in a neuron phase, the mean
best candidate correlation in a dendrite phase) and says whether the phase is over. It
saves itself with `state_dict()`, as Lightning's `EarlyStopping` does, so a resumed run
continues its counts. New policies (a time budget, a parameter budget) are new classes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .config import DendriteConfig
from .errors import PerforateWarning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Improvement:
    """Whether a score beats a reference: by more than max(rel * |ref|, abs)."""

    maximize: bool = True
    rel: float = 1e-3
    abs: float = 0.0

    @classmethod
    def from_config(cls, config: DendriteConfig) -> Improvement:
        return cls(config.direction == "maximize", config.improvement_rel, config.improvement_abs)

    def better(self, score: float, reference: float | None, margin: bool = True) -> bool:
        if reference is None:
            return True
        gap = max(self.rel * abs(reference), self.abs) if margin else 0.0
        return score > reference + gap if self.maximize else score < reference - gap

    def best(self, scores: list[float]) -> float:
        return max(scores) if self.maximize else min(scores)


class Switching(ABC):
    """Decides when a neuron phase and a dendrite phase end."""

    @abstractmethod
    def start_neuron_phase(self, reference: float | None) -> None:
        """A neuron phase begins; `reference` is the score it has to beat (None: none)."""

    @abstractmethod
    def neuron_epoch(self, score: float) -> bool:
        """Count one evaluation of a neuron phase; True when the phase is over."""

    @abstractmethod
    def start_dendrite_phase(self) -> None:
        """A dendrite phase begins."""

    @abstractmethod
    def dendrite_epoch(self, correlation: float, samples: int = 0) -> bool:
        """Judge the candidates on the statistics since the last judgement (`correlation`:
        the mean best |r| per neuron, over `samples` patterns); True when they should
        install."""

    # Steps between judgements of a dendrite phase made inside `Perforator.end_step`
    # (0: a dendrite phase is judged only at `end_epoch`).
    check_steps: int = 0

    def spend(self, cost: float) -> None:
        """Count the training cost since the last evaluation, in plain-step units
        (`accounting.step_cost`). Policies without a budget ignore it."""
        return None

    def exhausted(self) -> bool:
        """True when the run's budget is spent: the controller then starts no new cycle
        and ends the run with the best accepted model (a cycle once started runs to its
        own end, so a dendrite phase is never wasted)."""
        return False

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PatienceSwitching(Switching):
    """Neuron phases end after `patience` evaluations without an improvement of the score;
    dendrite phases after `dendrite_patience` evaluations without a relative improvement
    of the correlation by `dendrite_improvement_rel`, or after `dendrite_max_epochs`."""

    def __init__(
        self,
        improvement: Improvement,
        patience: int = 10,
        dendrite_patience: int = 3,
        dendrite_improvement_rel: float = 1e-2,
        dendrite_max_epochs: int = 20,
    ) -> None:
        self.improvement = improvement
        self.patience = patience
        self.dendrite_patience = dendrite_patience
        self.dendrite_improvement_rel = dendrite_improvement_rel
        self.dendrite_max_epochs = dendrite_max_epochs
        self.phase_epochs = 0
        self.since_improvement = 0
        self.reference: float | None = None
        self.best_correlation: float | None = None
        self.since_correlation = 0

    @classmethod
    def from_config(cls, config: DendriteConfig) -> PatienceSwitching:
        return cls(
            Improvement.from_config(config),
            config.patience,
            config.dendrite_patience,
            config.dendrite_improvement_rel,
            config.dendrite_max_epochs,
        )

    def start_neuron_phase(self, reference: float | None) -> None:
        self.since_improvement = 0
        self.reference = reference

    def neuron_epoch(self, score: float) -> bool:
        if self.improvement.better(score, self.reference):
            self.reference = score
            self.since_improvement = 0
        else:
            self.since_improvement += 1
        return self.since_improvement >= self.neuron_patience()

    def neuron_patience(self) -> int:
        """Evaluations without improvement that end the current neuron phase."""
        return self.patience

    def start_dendrite_phase(self) -> None:
        self.phase_epochs = 0
        self.best_correlation = None
        self.since_correlation = 0

    def dendrite_epoch(self, correlation: float, samples: int = 0) -> bool:
        self.phase_epochs += 1
        best = self.best_correlation
        if best is None or correlation > best * (1 + self.dendrite_improvement_rel):
            self.best_correlation = correlation
            self.since_correlation = 0
        else:
            self.since_correlation += 1
        return (
            self.since_correlation >= self.dendrite_patience
            or self.phase_epochs >= self.dendrite_max_epochs
        )

    _STATE = (
        "phase_epochs",
        "since_improvement",
        "reference",
        "best_correlation",
        "since_correlation",
    )

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])


class FixedSwitching(Switching):
    """Phases of fixed length: `neuron_epochs` and `dendrite_epochs` evaluations."""

    def __init__(self, neuron_epochs: int = 20, dendrite_epochs: int = 5) -> None:
        self.neuron_epochs = neuron_epochs
        self.dendrite_epochs = dendrite_epochs
        self.phase_epochs = 0

    @classmethod
    def from_config(cls, config: DendriteConfig) -> FixedSwitching:
        return cls(config.fixed_neuron_epochs, config.fixed_dendrite_epochs)

    def start_neuron_phase(self, reference: float | None) -> None:
        self.phase_epochs = 0

    def neuron_epoch(self, score: float) -> bool:
        self.phase_epochs += 1
        return self.phase_epochs >= self.neuron_epochs

    def start_dendrite_phase(self) -> None:
        self.phase_epochs = 0

    def dendrite_epoch(self, correlation: float, samples: int = 0) -> bool:
        self.phase_epochs += 1
        return self.phase_epochs >= self.dendrite_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"phase_epochs": self.phase_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_epochs = state["phase_epochs"]


def correlation_se(r: float, samples: int) -> float:
    """Standard error of a Pearson correlation estimated from `samples` patterns,
    (1 - r^2) / sqrt(n - 3) (infinite below 4 patterns)."""
    if samples < 4:
        return math.inf
    return (1.0 - min(r * r, 1.0)) / math.sqrt(samples - 3)


class BudgetSwitching(PatienceSwitching):
    """A PB run that costs a bounded multiple of a plain run (the default schedule).

    Why: with whole-epoch dendrite phases and patience-10 neuron phases after every
    install, a run cost 9-28x a plain one, nearly all of it epochs (docs/run_cost.md).
    Here:

    - the first neuron phase is the plain run: it ends after `patience` evaluations
      without an improvement, as early stopping would;
    - later neuron phases end after `cycle_patience` evaluations without beating the best
      score (an installed dendrite starts with output weight 0, so the network resumes
      where it was; a cycle that cannot beat the best soon is not worth more epochs);
    - a dendrite phase is judged every `check_steps` training steps (when the loop calls
      `ctl.end_step()`; at an `end_epoch` after at least half a window, and at every
      `end_epoch` of a loop that does not call it) and installs once the mean best
      correlation stops rising: when a window's gain over the previous one is within
      `settle_z` standard errors of the streamed estimate (or below
      `dendrite_improvement_rel` of it), or after `dendrite_max_epochs` judgements;
    - a new cycle starts only while everything after the first neuron phase has cost
      less than `cost_budget` times that phase (in plain-step units,
      `accounting.step_cost`); otherwise the run ends with the best accepted model. The
      cycle in flight finishes, so a run may pass the budget by at most one cycle.
      0: no budget.
    """

    def __init__(
        self,
        improvement: Improvement,
        patience: int = 10,
        cycle_patience: int = 3,
        check_steps: int = 50,
        settle_z: float = 2.0,
        dendrite_improvement_rel: float = 1e-2,
        dendrite_max_epochs: int = 20,
        cost_budget: float = 2.0,
    ) -> None:
        super().__init__(improvement, patience, 1, dendrite_improvement_rel, dendrite_max_epochs)
        self.cycle_patience = cycle_patience
        self.check_steps = check_steps
        self.settle_z = settle_z
        self.cost_budget = cost_budget
        self.first_phase = True
        self.first_cost = 0.0
        self.spent = 0.0

    @classmethod
    def from_config(cls, config: DendriteConfig) -> BudgetSwitching:
        return cls(
            Improvement.from_config(config),
            patience=config.patience,
            cycle_patience=config.cycle_patience,
            check_steps=config.dendrite_check_steps,
            settle_z=config.settle_z,
            dendrite_improvement_rel=config.dendrite_improvement_rel,
            dendrite_max_epochs=config.dendrite_max_epochs,
            cost_budget=config.cost_budget,
        )

    def start_neuron_phase(self, reference: float | None) -> None:
        self.first_phase = False
        super().start_neuron_phase(reference)

    def neuron_patience(self) -> int:
        return self.patience if self.first_phase else self.cycle_patience

    def start_dendrite_phase(self) -> None:
        self.first_phase = False
        super().start_dendrite_phase()

    def dendrite_epoch(self, correlation: float, samples: int = 0) -> bool:
        self.phase_epochs += 1
        previous, self.best_correlation = self.best_correlation, correlation
        if self.phase_epochs >= self.dendrite_max_epochs:
            return True
        if previous is None:
            return False
        gap = max(
            self.dendrite_improvement_rel * abs(previous),
            self.settle_z * correlation_se(correlation, samples),
        )
        return correlation - previous <= gap

    def spend(self, cost: float) -> None:
        if self.first_phase:
            self.first_cost += cost
        else:
            self.spent += cost

    def exhausted(self) -> bool:
        return (
            not self.first_phase
            and self.cost_budget > 0
            and self.spent >= self.cost_budget * self.first_cost
        )

    _STATE = (*PatienceSwitching._STATE, "first_phase", "first_cost", "spent")


SWITCHING: dict[str, type[Switching]] = {
    "budget": BudgetSwitching,
    "patience": PatienceSwitching,
    "fixed": FixedSwitching,
}


def resolve_switching(config: DendriteConfig) -> Switching:
    """The policy `config.switch_mode` names: the one place that reads it."""
    return SWITCHING[config.switch_mode].from_config(config)


def _user_stacklevel() -> int:
    """The `stacklevel` that points a warning at the first caller outside this package
    (the user's `ctl.end_epoch(...)` line, however deep the controller's calls)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


class DirectionCheck:
    """Warns once, at the end of the first neuron phase, when its scores behave like a
    loss under direction='maximize' (or an accuracy under 'minimize').

    Why from the trajectory: `end_epoch` gets a bare number, with no metric name to infer
    the direction from (as Keras' mode="auto" does), and asking for it explicitly (as
    Lightning's EarlyStopping does with its default mode="min") does not stop a wrong
    choice. A wrong direction leaves a clear trace: the phase's best score is its first
    (every later epoch looks worse, so it ends after `patience` evaluations), the scores
    move steadily the "wrong" way (most pairs of epochs, not only neighbours: noise does
    not hide it), and the last ones sit far from the first. An accuracy that plateaus
    early has its best later on and no such trend. Thresholds: docs/controller.md.
    """

    #: Share of ordered pairs (i < j) of first-phase scores where the later one is worse.
    TREND = 0.7
    #: How far the last scores must have moved from the first, as a share of the range.
    MOVED = 0.5

    def __init__(self, improvement: Improvement, direction: str) -> None:
        self.improvement = improvement
        self.direction = direction
        self.scores: list[float] = []
        self.suspicious = False  # the verdict of `check`
        self.checked = False

    def add(self, score: float) -> None:
        self.scores.append(score)

    def worsening(self) -> float:
        """The share of pairs (i < j) whose later score is worse (a Kendall-like trend)."""
        s, better = self.scores, self.improvement.better
        pairs = [(s[i], s[j]) for i in range(len(s)) for j in range(i + 1, len(s))]
        return sum(better(a, b, margin=False) for a, b in pairs) / max(1, len(pairs))

    def looks_wrong(self) -> bool:
        s = self.scores
        if len(s) < 3:
            return False
        best = s.index(self.improvement.best(s))
        tail = s[-max(1, len(s) // 3) :]
        moved = abs(s[0] - sum(tail) / len(tail))
        spread = max(s) - min(s)
        tail_worse = all(self.improvement.better(s[0], t, margin=False) for t in tail)
        return (
            best <= max(1, len(s) // 10)  # the best is the first epoch's, or next to it
            and self.worsening() >= self.TREND
            and tail_worse
            and spread > 0
            and moved >= self.MOVED * spread
        )

    def check(self) -> bool:
        """Judge the first neuron phase (once); True, with a warning, when the scores look
        like the wrong direction."""
        self.checked = True
        self.suspicious = self.looks_wrong()
        if self.suspicious:
            s = self.scores
            other = "minimize" if self.direction == "maximize" else "maximize"
            kind = "a loss or an error" if self.direction == "maximize" else "an accuracy"
            message = (
                f"the validation score moved the wrong way for direction={self.direction!r} "
                f"through the first neuron phase ({s[0]:.4g} -> {s[-1]:.4g}): the best was "
                f"the first epoch's and {self.worsening():.0%} of the pairs of its "
                f"{len(s)} evaluations got worse. If the score is {kind} (MSE, "
                f"cross-entropy, ...), set direction={other!r}: the run keeps the state it "
                "finds best, here the first epoch's"
            )
            log.warning(message)
            warnings.warn(message, PerforateWarning, stacklevel=_user_stacklevel())
        return self.suspicious

    def closing_note(self, best: float) -> str | None:
        """When the run ends with the first epoch's score still best: a clause to say
        instead of blaming the dendrites (the direction may be what went wrong)."""
        s = self.scores
        if not s or best != s[0] or not (self.suspicious or len(s) >= 3):
            return None
        return (
            f"its best score was the first epoch's ({s[0]:.4g}, direction="
            f"{self.direction!r}): no later epoch, with or without dendrites, scored "
            "better, so this is no verdict on the dendrites. If the score is a loss or an "
            "error (an accuracy under 'minimize'), check `direction`: the run would have "
            "kept its worst model"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"scores": list(self.scores), "suspicious": self.suspicious, "checked": self.checked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = [float(s) for s in state["scores"]]
        self.suspicious = bool(state.get("suspicious", False))  # both absent before 0.4
        self.checked = bool(state.get("checked", False))
