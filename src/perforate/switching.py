"""When a phase ends: switching policies, each keeping its own counters.

A policy sees one number per evaluation (the validation score in a neuron phase, the mean
best candidate correlation in a dendrite phase) and says whether the phase is over. It
saves itself with `state_dict()`, as Lightning's `EarlyStopping` does, so a resumed run
continues its counts. New policies (a time budget, a parameter budget) are new classes.
"""

from __future__ import annotations

import itertools
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .config import DendriteConfig
from .errors import PerforateWarning


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
    def dendrite_epoch(self, correlation: float) -> bool:
        """Count one evaluation of a dendrite phase; True when candidates should install."""

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
        return self.since_improvement >= self.patience

    def start_dendrite_phase(self) -> None:
        self.phase_epochs = 0
        self.best_correlation = None
        self.since_correlation = 0

    def dendrite_epoch(self, correlation: float) -> bool:
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

    def dendrite_epoch(self, correlation: float) -> bool:
        self.phase_epochs += 1
        return self.phase_epochs >= self.dendrite_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"phase_epochs": self.phase_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_epochs = state["phase_epochs"]


SWITCHING: dict[str, type[Switching]] = {"patience": PatienceSwitching, "fixed": FixedSwitching}


def resolve_switching(config: DendriteConfig) -> Switching:
    """The policy `config.switch_mode` names: the one place that reads it."""
    return SWITCHING[config.switch_mode].from_config(config)


class DirectionCheck:
    """Warns once when every score of the first neuron phase was worse than the one
    before it: the usual sign of a loss reported with direction='maximize'."""

    def __init__(self, improvement: Improvement, direction: str) -> None:
        self.improvement = improvement
        self.direction = direction
        self.scores: list[float] = []

    def add(self, score: float) -> None:
        self.scores.append(score)

    def check(self) -> None:
        scores = self.scores
        pairs = list(itertools.pairwise(scores))
        if len(scores) >= 3 and all(self.improvement.better(a, b, margin=False) for a, b in pairs):
            warnings.warn(
                f"every validation score of the first neuron phase was worse than the one "
                f"before it ({scores[0]:.4g} -> {scores[-1]:.4g}) with "
                f"direction={self.direction!r}; if the score is a loss, set "
                "direction='minimize' (an accuracy: 'maximize')",
                PerforateWarning,
                stacklevel=5,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"scores": list(self.scores)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = [float(s) for s in state["scores"]]
