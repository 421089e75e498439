"""Copies of a model's state: the best of the cycle in flight and the last accepted one.

Candidates are never part of a snapshot: restoring one puts back the network (including
norm running statistics a dendrite phase moved) and leaves a candidate pool alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import PhaseError
from .layers import is_candidate_key


@dataclass
class Snapshot:
    score: float
    state: dict[str, torch.Tensor]

    @classmethod
    def take(cls, model: nn.Module, score: float) -> Snapshot:
        state = {
            k: v.detach().clone() for k, v in model.state_dict().items() if not is_candidate_key(k)
        }
        return cls(score, state)

    def restore(self, model: nn.Module) -> None:
        result = model.load_state_dict(self.state, strict=False)
        bad = [k for k in result.missing_keys if not is_candidate_key(k)]
        if bad or result.unexpected_keys:
            raise PhaseError(
                f"could not restore the best state: missing {bad}, "
                f"unexpected {result.unexpected_keys}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "state": self.state}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any] | None) -> Snapshot | None:
        return None if state is None else cls(float(state["score"]), dict(state["state"]))
