"""Checks of saved structure against the tensors that came with it, before anything is
allocated from it or any model changes.

Why: a header is text anyone can edit. A slot count or pool size read from it decides how
much memory a load allocates, and a dendrite count decides which slots a forward pass
uses. Every such number must be of the right type, in range, and agree with the shapes of
the tensors in the same file, so a load allocates at most what the file itself holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .candidate_variants import POOL_VARIANTS
from .layers import DendriticLayer, Phase

_PHASES = {p.value for p in (Phase.NEURON, Phase.DENDRITE, Phase.INFERENCE)}


def is_count(value: Any, low: int = 0) -> bool:
    """An int (not a bool) >= low."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def slot_problems(
    name: str, layer: DendriticLayer, slots: Any, tensors: Mapping[str, torch.Tensor]
) -> list[str]:
    """Whether `slots` and the layer's slot tensors in `tensors` agree with each other and
    with this layer's neuron count; the dendrite counts must lie in [0, slots]."""
    if not is_count(slots):
        return [f"layer {name!r}: slot count {slots!r} is not a non-negative integer"]
    c = layer.neurons
    out = tensors.get(f"{name}.output_weight")
    problems = []
    if slots == 0:
        if out is not None:
            problems.append(f"layer {name!r}: 0 slots saved but an output weight is present")
    elif out is None or tuple(out.shape) != (slots, c):
        shape = None if out is None else tuple(out.shape)
        problems.append(
            f"layer {name!r}: {slots} slots of {c} neurons need output weights "
            f"({slots}, {c}), the file has {shape}"
        )
    count = tensors.get(f"{name}.dendrite_count")
    if count is None or tuple(count.shape) != (c,) or count.dtype != torch.int64:
        problems.append(f"layer {name!r}: dendrite counts must be {c} int64 values")
    elif bool(((count < 0) | (count > slots)).any()):
        problems.append(f"layer {name!r}: dendrite counts {count.tolist()} outside [0, {slots}]")
    return problems


def phase_state_problems(
    name: str, layer: DendriticLayer, state: Any, tensors: Mapping[str, torch.Tensor]
) -> list[str]:
    """A layer's `phase_state_dict()` against the model tensors saved with it."""
    if not isinstance(state, Mapping):
        return [f"layer {name!r}: phase state is not a mapping"]
    missing = [
        k
        for k in ("phase", "slots", "pool", "dendrite_inputs_train", "unit_flags", "stats")
        if k not in state
    ]
    if missing:
        return [f"layer {name!r}: phase state lacks {missing}"]
    problems = slot_problems(name, layer, state["slots"], tensors)
    phase, pool = state["phase"], state["pool"]
    variant = state.get("variant", "normal")
    if variant not in POOL_VARIANTS:
        problems.append(
            f"layer {name!r}: unknown candidate pool {variant!r}; known: {sorted(POOL_VARIANTS)}"
        )
    if phase not in _PHASES:
        problems.append(f"layer {name!r}: unknown phase {phase!r}")
    if not is_count(pool):
        return [*problems, f"layer {name!r}: pool size {pool!r} is not a non-negative integer"]
    bank = tensors.get(f"{name}.candidates.bank.weight")
    if phase == Phase.DENDRITE.value:
        rows = None if bank is None else bank.shape[0]
        if pool < 1 or rows != pool * layer.neurons:
            problems.append(
                f"layer {name!r}: a pool of {pool} needs {pool * layer.neurons} "
                f"candidate rows, the file has {rows}"
            )
        stats = state["stats"]
        if not isinstance(stats, Mapping):
            problems.append(f"layer {name!r}: a dendrite phase needs candidate statistics")
        else:
            pool_class = POOL_VARIANTS.get(variant, POOL_VARIANTS["normal"])
            want = pool_class.statistics_shapes(pool, layer.neurons, stats)
            for key, shape in want.items():
                t = stats.get(key)
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                    problems.append(f"layer {name!r}: statistics {key} must have shape {shape}")
            if not is_count(stats.get("skipped_batches")):
                problems.append(f"layer {name!r}: statistics skipped_batches is not a count")
    elif bank is not None:
        problems.append(f"layer {name!r}: candidates saved outside a dendrite phase")
    if not isinstance(state["unit_flags"], Mapping) or not isinstance(
        state["dendrite_inputs_train"], bool
    ):
        problems.append(f"layer {name!r}: trainability flags are malformed")
    return problems
