"""Freezing what a dendrite phase must not train, and giving it back afterwards.

In a dendrite phase only candidates learn. The layers freeze their own units; this object
freezes every other parameter of the model (so backward computes no gradient for them)
and remembers, by name, the trainability every parameter had before the phase (the
layers' units included), so a resumed run restores it too.

Why it records the units as well: a parameter shared by two wrapped layers (a tied weight,
`b.weight = a.weight`) is frozen by the first layer before the second one looks at it, so
the second layer alone would remember it as frozen and freeze it for good when the phase
ends. The flags are therefore taken once, before any layer freezes anything (`record`),
and put back after every layer has ended its phase (`unfreeze`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import DendriticLayer

# A layer's own unit (its base layer and paired norm); the rest of what it holds
# (installed dendrites, candidates) is sized and set by the layer and the training rule.
_UNIT_PREFIXES = ("base.", "norm.")


class OutsideFreeze:
    """Freezes the parameters of `model` that no dendritic layer owns, and restores the
    trainability of those and of the layers' units after a dendrite phase."""

    def __init__(self, model: nn.Module, layers: dict[str, DendriticLayer]) -> None:
        self.model = model
        self.layers = layers
        self.flags: dict[str, bool] = {}  # parameter name -> trainable before the phase

    def _owned(self) -> tuple[set[int], set[int]]:
        """ids of every parameter a layer holds, and of those in a layer's unit."""
        owned, units = set(), set()
        for layer in self.layers.values():
            for n, p in layer.named_parameters():
                owned.add(id(p))
                if n.startswith(_UNIT_PREFIXES):
                    units.add(id(p))
        return owned, units

    def record(self, units: bool = True) -> dict[str, bool]:
        """Trainability of every parameter outside the layers and (`units`) in their
        units, by name (a shared parameter once): call it before any layer starts a
        dendrite phase."""
        owned, unit_ids = self._owned()
        return {
            n: p.requires_grad
            for n, p in self.model.named_parameters()
            if (units and id(p) in unit_ids) or id(p) not in owned
        }

    def freeze(self, flags: dict[str, bool] | None = None) -> None:
        """Freeze what no layer owns; keep `flags` (from `record`, taken before the
        layers froze their units) to restore at `unfreeze`."""
        self.flags = dict(flags) if flags is not None else self.record(units=False)
        owned, _ = self._owned()
        for p in self.model.parameters():
            if id(p) not in owned:
                p.requires_grad_(False)

    def unfreeze(self) -> None:
        """Give back the recorded trainability; call it after every layer has ended its
        dendrite phase (a layer's own restore could undo it otherwise)."""
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
