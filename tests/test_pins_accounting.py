"""The parameter table, every row checked against a hand count."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig
from perforate.accounting import ParameterReport, step_cost


def test_the_whole_table_by_hand():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1, bias=False))
    perforate.add_dendrites(model, DendriteConfig(include=("0",)))
    layer = model[0]
    layer.start_dendrite_phase(candidates=2)
    layer.install(torch.tensor([0, -1]))
    report = perforate.parameter_report(model)
    # Linear(3, 2): 6 weights + 2 biases = 8. One dendrite: 3 inputs + bias + output
    # weight = 5 (the first dendrite has nothing to cascade from). Other: Linear(2, 1) = 2.
    assert str(report).splitlines() == [
        "layer                       kind     neurons dendrites       base  dendrite",
        "0                           Linear         2         1          8         5",
        "other modules                                                   2         0",
        "total                                                          10         5",
        "all parameters used by the forward pass: 15",
    ]
    (row,) = report.layers
    assert (row.name, row.kind, row.neurons, row.max_per_neuron) == ("0", "Linear", 2, 1)
    assert (report.base, report.dendrite, report.other, report.total) == (10, 5, 2, 15)


def test_a_model_without_dendrites_yet_counts_base_only():
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(4, 3)), DendriteConfig())
    report = perforate.parameter_report(model)
    assert (report.base, report.dendrite, report.other) == (15, 0, 0)
    assert report.layers[0].max_per_neuron == 0 and report.layers[0].dendrites == 0


def test_step_cost_by_hand():
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3)))
    layers = perforate.dendritic_layers(model)
    assert step_cost(layers, False, 4) == 1.0  # no dendrites: a plain step
    assert step_cost(layers, True, 4) == (2 + 2 * 4) / 3
    layers["0"].start_dendrite_phase(candidates=2)
    layers["0"].install(torch.tensor([0, 1, -1]))
    # 2 dendrites over 6 neurons: 1 + (2 / 6) / 3.
    assert abs(step_cost(layers, False, 4) - (1 + 2 / 6 / 3)) < 1e-12
    assert step_cost({}, False, 4) == 1.0


def test_reports_are_values_that_cannot_be_changed():
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(4, 3)), DendriteConfig())
    report = perforate.parameter_report(model)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.base = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.layers[0].dendrite = 5
    assert hash(report) == hash(perforate.parameter_report(model))  # equal values, one hash


def test_a_report_built_by_hand_has_no_other_modules_unless_told():
    report = ParameterReport((), base=10, dendrite=2)
    assert report.other == 0 and report.total == 12
    assert str(report).splitlines()[1:3] == [
        "other modules                                                   0         0",
        "total                                                          10         2",
    ]


def test_a_weight_tied_across_two_layers_counts_once():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    model = perforate.add_dendrites(nn.Sequential(a, b), DendriteConfig())
    report = perforate.parameter_report(model)
    rows = {r.name: r for r in report.layers}
    assert (rows["0"].base, rows["1"].base) == (12, 3)  # 9 + 3, then only b's bias
    assert report.base == 15 == sum(p.numel() for p in model.parameters())


def test_a_weight_tied_inside_one_unit_counts_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    model[1].bias = model[0].bias  # the norm's shift is the layer's bias
    perforate.add_dendrites(model, DendriteConfig())
    assert perforate.dendritic_layers(model)["0"].norm_path == "1"
    report = perforate.parameter_report(model)
    assert report.layers[0].base == 9 + 3 + 3 == report.base
