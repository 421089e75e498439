"""Which candidate each neuron gets at the end of a dendrite phase.

One object so that a new choice (a budget across layers, a significance test) is a new
class, not a branch in the controller. The default, `BestCandidate`, is the paper's: per
neuron, the candidate with the highest objective, kept only where its |Pearson
correlation| with the neuron's error reaches `install_threshold` and the neuron is below
`max_dendrites`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DendriteConfig
from .layers import DendriticLayer


@dataclass(frozen=True)
class Selection:
    """What one layer installs: `choice` (C,) candidate per neuron (-1: none), the output
    weight each starts with (C,), the candidates' mean outputs (P, C) for the bias
    compensation of a non-zero start, and a summary for the history (empty: none)."""

    choice: torch.Tensor
    output_weight: torch.Tensor
    activation_mean: torch.Tensor
    summary: dict[str, float]

    @property
    def count(self) -> int:
        return int((self.choice >= 0).sum())


@dataclass(frozen=True)
class BestCandidate:
    """The best candidate per neuron by the objective, where it correlates enough."""

    objective: str = "covariance"
    install_threshold: float = 0.0
    max_dendrites: int = 8
    output_weight_init: float = 0.0

    @classmethod
    def from_config(cls, config: DendriteConfig) -> BestCandidate:
        return cls(
            config.objective,
            config.install_threshold,
            config.max_dendrites,
            config.output_weight_init,
        )

    def select(self, layer: DendriticLayer) -> Selection:
        pool = layer.candidates
        if pool is None:
            raise ValueError(f"{layer.path}: no candidates to select from")
        stats = pool.stats
        best = stats.score(self.objective).argmax(0)
        r = stats.pearson().gather(0, best[None]).squeeze(0)
        ok = (r.abs() >= self.install_threshold) & (layer.dendrite_count < self.max_dendrites)
        choice = torch.where(ok.to(best.device), best, torch.full_like(best, -1))
        # A non-zero start points against the error: dL/dv = sum E a, so v0 takes the
        # sign opposite to the correlation of a with E (a first-order descent step).
        start = -torch.where(r >= 0, 1.0, -1.0) * self.output_weight_init
        picked = choice >= 0
        summary: dict[str, float] = {}
        if bool(picked.any()):
            std = pool.output_std().gather(0, choice.clamp_min(0)[None]).squeeze(0)
            summary = {
                "installed": int(picked.sum()),
                "mean_abs_r": float(r.abs()[picked].mean()),
                "mean_output_std": float(std[picked].mean()),
            }
        return Selection(choice, start, stats.mean_v, summary)
