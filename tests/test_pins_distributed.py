"""The torch.distributed glue, against a stand-in for a second process.

A real two-process run is tests/test_distributed.py (slow: two interpreters). Here
`torch.distributed`'s calls are replaced by ones that act as if a second rank held known
values, so each rule (sum statistics, average the score, rank 0 writes) is checked by hand
in one process.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from perforate import distributed


class _TwoRanks:
    """dist as seen from rank 1 of 2, the other rank holding `other` in every reduction."""

    def __init__(self, other: float, backend: str = "gloo") -> None:
        self.other, self.backend, self.calls = other, backend, []

    def get_world_size(self, group=None):
        return 2

    def get_rank(self, group=None):
        return 1

    def get_backend(self, group=None):
        return self.backend

    def all_reduce(self, t, op=None, group=None):
        self.calls.append(("all_reduce", op, group, t.device.type))
        t.add_(self.other)

    def barrier(self, group=None):
        self.calls.append(("barrier", group))

    def is_available(self):
        return True

    def is_initialized(self):
        return True


@pytest.fixture
def two(monkeypatch):
    fake = _TwoRanks(other=0.25)
    for name in ("get_world_size", "get_rank", "get_backend", "all_reduce", "barrier"):
        monkeypatch.setattr(distributed.dist, name, getattr(fake, name))
    monkeypatch.setattr(distributed.dist, "is_available", fake.is_available)
    monkeypatch.setattr(distributed.dist, "is_initialized", fake.is_initialized)
    return fake


def test_one_process_needs_no_collective():
    assert distributed.resolve_group(None) is None
    assert distributed.world_size(None) == 1 and distributed.rank(None) == 0
    assert distributed.sum_reducer(None) is None
    assert distributed.mean_score(0.7, None) == 0.7
    distributed.barrier(None)  # nothing to wait for


def test_auto_is_one_process_unless_a_group_of_several_is_running(monkeypatch):
    world = object()  # dist.group.WORLD is None until a process group starts
    monkeypatch.setattr(distributed.dist, "group", SimpleNamespace(WORLD=world))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 2)
    assert distributed.resolve_group("auto") is None
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 1)
    assert distributed.resolve_group("auto") is None
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 2)
    assert distributed.resolve_group("auto") is world
    monkeypatch.setattr(distributed.dist, "is_available", lambda: False)
    assert distributed.resolve_group("auto") is None
    group = object()
    assert distributed.resolve_group(group) is group


def test_statistics_are_summed_and_the_score_averaged_over_the_group(two):
    group = object()
    assert distributed.world_size(group) == 2 and distributed.rank(group) == 1
    reduce = distributed.sum_reducer(group)
    t = torch.tensor([1.0, 2.0])
    reduce(t)
    assert t.tolist() == [1.25, 2.25]  # summed in place
    assert two.calls[-1][:3] == ("all_reduce", distributed.dist.ReduceOp.SUM, group)
    assert distributed.mean_score(0.75, group) == 0.5  # (0.75 + 0.25) / 2
    assert two.calls[-1][3] == "cpu"
    distributed.barrier(group)
    assert two.calls[-1] == ("barrier", group)


def test_the_score_reduction_runs_where_the_backend_can(two, monkeypatch):
    seen = []
    monkeypatch.setattr(
        distributed.torch, "tensor", lambda v, dtype, device: seen.append(device) or torch.zeros(1)
    )
    two.backend = "nccl"
    distributed.mean_score(1.0, object())
    two.backend = "gloo"
    distributed.mean_score(1.0, object())
    assert seen == ["cuda", "cpu"]
