"""torch.distributed glue: which group a run spans, and the few collectives it needs.

Reconciliation rules (docs/distributed.md): candidate statistics are summed over the
group on every batch, so each process folds in the global batch and all take the same
decisions; the validation score passed to `end_epoch` is averaged over the group; rank 0
alone writes checkpoints, behind a barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def resolve_group(group: Any) -> Any:
    """None when the run is one process; otherwise the group its processes share."""
    if group is None:
        return None
    if group == "auto":
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None
    return group


def world_size(group: Any) -> int:
    return 1 if group is None else dist.get_world_size(group)


def rank(group: Any) -> int:
    return 0 if group is None else dist.get_rank(group)


def sum_reducer(group: Any) -> Callable[[torch.Tensor], None] | None:
    if group is None:
        return None

    def reduce(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    return reduce


def mean_score(score: float, group: Any) -> float:
    if group is None:
        return score
    device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    t = torch.tensor([score], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return float(t.item() / dist.get_world_size(group))


def barrier(group: Any) -> None:
    if group is not None:
        dist.barrier(group=group)
