"""No host synchronisation in the training hot path (issue 24).

On a GPU, `.item()`, `bool(t)`, `float(t)` and ops whose output size depends on values
(nonzero, masked_select, unique, boolean indexing) make the host wait for the device. On
CPU they all dispatch through ops a TorchDispatchMode sees: `aten._local_scalar_dense` for
the reads, the data-dependent ops by name. Before issue 24 a dendrite-phase forward +
backward of the model below made 6 reads (two per wrapped layer, from the non-finite check
of the candidate statistics); neuron phases made 0.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from perforate import CandidateStats, DendriteConfig, Event, Perforator, surrogate_gradient
from perforate.layers import Phase


def _gpu_check():
    """benchmarks/gpu_check.py, whose counter measures the same on a GPU: one definition."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_for_syncs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Counts host reads (`aten._local_scalar_dense`), data-dependent ops (nonzero,
# masked_select, unique, ...) and boolean-mask indexing dispatched while active, by op name.
SyncCounter = _gpu_check().SyncCounter


def conv_linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))


class Loop:
    """A Perforator on `conv_linear` with judgements every 3 steps, counting syncs."""

    def __init__(self, build=conv_linear, **cfg) -> None:
        self.model = build()
        config = DendriteConfig(
            **{"switch_mode": "budget", "patience": 1, "dendrite_check_steps": 3, **cfg}
        )
        self.ctl = Perforator(
            self.model, config, optimizer=lambda p: torch.optim.SGD(p, lr=0.01), seed=0
        )
        self.gen = torch.Generator().manual_seed(1)

    def step(self, scale: float = 1.0) -> tuple[int, int, bool]:
        """One training step: (syncs in forward+backward, syncs in end_step, judged)."""
        x = torch.randn(8, 1, 6, 6, generator=self.gen)
        t = torch.randint(0, 3, (8,), generator=self.gen)
        ctl = self.ctl
        ctl.optimizer.zero_grad()
        with SyncCounter() as train:
            loss = nn.functional.cross_entropy(ctl.wrapped(x), t) * scale
            loss.backward()
        ctl.optimizer.step()
        every = ctl.switching.check_steps
        judged = ctl.phase == Phase.DENDRITE and ctl._window["steps"] + 1 >= every
        with SyncCounter() as end:
            ctl.end_step()
        return train.count, end.count, judged

    def to_dendrite_phase(self) -> None:
        self.step()
        assert self.ctl.end_epoch(0.5) == Event.CONTINUE
        self.step()
        assert self.ctl.end_epoch(0.4) == Event.DENDRITE_PHASE


def test_the_counter_sees_reads_and_data_dependent_ops():
    t = torch.tensor([1.0, -2.0, 3.0])
    with SyncCounter() as c:
        t.sum().item()
        bool(t.all())
        t.nonzero()
        t[t > 0]
        torch.unique(t)
        t.add(1).mul(2)  # neither a read nor data-dependent
    assert c.ops == [
        "aten._local_scalar_dense.default",
        "aten._local_scalar_dense.default",
        "aten.nonzero.default",
        "aten.index.Tensor",
        "aten._unique2.default",
    ]


def test_no_host_syncs_per_step_in_neuron_and_dendrite_phases():
    loop = Loop()
    assert loop.step()[:2] == (0, 0)  # first neuron phase, no dendrites
    loop.to_dendrite_phase()
    judged_syncs, between = [], []
    for _ in range(7):
        train, end, judged = loop.step()
        assert train == 0  # 6 before issue 24
        (judged_syncs if judged else between).append(end)
    assert between and set(between) == {0}
    # A judgement reads the statistics (count, skipped batches, correlations): a few reads
    # per layer there (15 for 3 layers when written), never per step.
    assert judged_syncs and all(0 < n <= 10 * len(loop.ctl.layers) for n in judged_syncs)
    while loop.ctl.phase == Phase.DENDRITE:  # install at the next end_epoch
        loop.step()
        loop.ctl.end_epoch(0.45)
    assert loop.ctl.dendrites_kept > 0
    assert loop.step()[:2] == (0, 0)  # a neuron phase with dendrites installed


@pytest.mark.parametrize("method", ["sparse", "output_error"])
def test_variant_pools_make_no_host_syncs_per_step(method):
    loop = Loop(method=method)
    loop.to_dendrite_phase()
    assert [loop.step()[0] for _ in range(4)] == [0, 0, 0, 0]


def test_closed_form_pool_reads_its_warm_up_count_once():
    loop = Loop(mlp, method="closed_form", closed_form_batches=3, dendrite_check_steps=50)
    loop.to_dendrite_phase()
    # Per layer: the warm-up's count at its last batch, and the ridge scale then.
    assert [loop.step()[0] for _ in range(5)] == [0, 0, 2 * 2, 0, 0]


def _stats_of(batches, objective="pearson", reduce=None):
    stats = CandidateStats(2, 3)
    grads = [surrogate_gradient(v, e, stats, objective, reduce=reduce) for v, e in batches]
    return stats, grads


@pytest.mark.parametrize("objective", ["pearson", "covariance"])
def test_a_non_finite_batch_leaves_statistics_exactly_as_unseen(objective):
    g = torch.Generator().manual_seed(3)

    def batch(n, bad=None):
        v, e = torch.rand(n, 2, 3, generator=g), torch.randn(n, 3, generator=g)
        if bad is not None:
            e[1, 2] = bad
        return v, e

    a, b = batch(5), batch(7)
    for bad in (float("nan"), float("inf"), -float("inf")):
        seen, seen_grads = _stats_of([a, batch(4, bad), b], objective)
        clean, _ = _stats_of([a, b], objective)
        for name in CandidateStats.FIELDS:  # bit for bit, count included
            assert torch.equal(getattr(seen, name), getattr(clean, name)), name
        assert seen.skipped_batches == 1 and clean.skipped_batches == 0
        assert torch.equal(seen_grads[1], torch.zeros(4, 2, 3))  # no step from it
        assert torch.isfinite(seen_grads[2]).all()


def test_an_empty_global_batch_under_a_process_group_folds_and_skips_nothing():
    g = torch.Generator().manual_seed(4)
    v, e = torch.rand(6, 2, 3, generator=g), torch.randn(6, 3, generator=g)

    def alone(t: torch.Tensor) -> None:  # a group of one process: the sum is the tensor
        pass

    with SyncCounter() as c:
        stats, grads = _stats_of([(v, e), (v[:0], e[:0])], reduce=alone)
    assert c.count == 0  # the global count stays on the device too
    plain, _ = _stats_of([(v, e)])
    for name in CandidateStats.FIELDS:
        assert torch.equal(getattr(stats, name), getattr(plain, name)), name
    assert stats.skipped_batches == 0 and grads[1].shape == (0, 2, 3)
