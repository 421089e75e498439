"""Freezing what a dendrite phase must not train, and giving it back afterwards.

In a dendrite phase only candidates learn. The layers freeze their own units; this object
freezes every other parameter of the model (so backward computes no gradient for them)
and remembers each one's trainability by name, so a resumed run restores it too.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import DendriticLayer


class OutsideFreeze:
    """Freezes the parameters of `model` that no dendritic layer owns."""

    def __init__(self, model: nn.Module, layers: dict[str, DendriticLayer]) -> None:
        self.model = model
        self.layers = layers
        self.flags: dict[str, bool] = {}  # parameter name -> trainable before freezing

    def _outside(self) -> dict[str, nn.Parameter]:
        owned = {id(p) for layer in self.layers.values() for p in layer.parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) not in owned}

    def freeze(self) -> None:
        outside = self._outside()
        self.flags = {n: p.requires_grad for n, p in outside.items()}
        for p in outside.values():
            p.requires_grad_(False)

    def unfreeze(self) -> None:
        params = dict(self.model.named_parameters())
        for n, flag in self.flags.items():
            params[n].requires_grad_(flag)
        self.flags = {}

    def state_dict(self) -> dict[str, Any]:
        return {"flags": dict(self.flags)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = dict(self.model.named_parameters())
        unknown = [n for n in state["flags"] if n not in params]
        if unknown:
            raise KeyError(f"frozen parameters not in the model: {unknown}")
        self.flags = {n: bool(f) for n, f in state["flags"].items()}
