"""Parameter counts equal hand-computed values."""

from __future__ import annotations

import torch
from torch import nn

import perforate
from perforate import DendriteConfig


def _install(layer, choice):
    layer.start_dendrite_phase(candidates=2)
    layer.install(torch.tensor(choice))


def test_counts_match_hand_computation():
    model = nn.Sequential(
        nn.Linear(10, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Conv1d(1, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 3, 2, bias=False),
    )
    model = perforate.add_dendrites(model, DendriteConfig(include=("0", "3")))
    fc, conv = model[0], model[3]
    _install(fc, [0, 0, 0, 0, 0])
    _install(fc, [1, -1, 1, -1, -1])  # neurons 0 and 2 get a second (cascaded) dendrite
    _install(conv, [0, -1, -1, 1])
    report = perforate.parameter_report(model)
    rows = {r.name: r for r in report.layers}
    # fc: unit = 10*5+5 weights/bias + 2*5 BatchNorm = 65.
    # 7 dendrites * (10 inputs + bias + output weight) + 2 cascade weights = 86.
    assert (rows["0"].base, rows["0"].dendrite, rows["0"].dendrites) == (65, 86, 7)
    assert rows["0"].max_per_neuron == 2
    # conv: unit = 4*1*3 + 4 = 16; 2 dendrites * (3 inputs + bias + output weight) = 10.
    assert (rows["3"].base, rows["3"].dendrite) == (16, 10)
    assert report.other == 12 * 2
    assert report.base == 65 + 16 + 24 and report.dendrite == 96
    # Stored: fc bank 10 rows x 11 + v (2,5) + u (2,2,5) = 140; conv 4 x 4 + 4 + 4 = 24.
    stored = sum(p.numel() for p in model.parameters())
    assert stored == report.base + 140 + 24
    assert report.total == stored - (140 - 86) - (24 - 10)
    assert "all parameters used by the forward pass: 201" in str(report)


def test_cascade_off_counts_no_cascade_weights():
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 2)), DendriteConfig(cascade=False))
    _install(model[0], [0, 0])
    _install(model[0], [0, 1])
    assert model[0].cascade_weight is None
    assert perforate.parameter_report(model).dendrite == 4 * (3 + 2)
