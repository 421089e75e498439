"""Saved structure checked against its tensors: each problem found, and none where none is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perforate import DendriteConfig, DendriticLayer
from perforate.kinds import KINDS
from perforate.validation import is_count, phase_state_problems, slot_problems


def _layer(dendrite_phase: bool, grown: bool = False) -> DendriticLayer:
    gen = torch.Generator().manual_seed(0)
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    if grown:
        layer.start_dendrite_phase(candidates=2, generator=gen)
        layer.install(torch.tensor([0, 1]))
    if dendrite_phase:
        layer.start_dendrite_phase(candidates=2, generator=gen)
    return layer


def _saved(layer):
    return layer.phase_state_dict(), {f"L.{k}": v for k, v in layer.state_dict().items()}


def test_is_count():
    assert is_count(0) and is_count(3, low=3)
    assert not is_count(2, low=3) and not is_count(-1)
    assert not is_count(True) and not is_count(1.0) and not is_count("1")


@pytest.mark.parametrize(("dendrite_phase", "grown"), [(False, False), (True, False), (True, True)])
def test_a_layers_own_state_has_no_problem(dendrite_phase, grown):
    layer = _layer(dendrite_phase, grown)
    state, tensors = _saved(layer)
    assert phase_state_problems("L", layer, state, tensors) == []


def _problems(change, dendrite_phase=True):
    layer = _layer(dendrite_phase)
    state, tensors = _saved(layer)
    change(state, tensors)
    return phase_state_problems("L", layer, state, tensors)


def _set(**kv):
    def change(state, tensors):
        state.update(kv)

    return change


def test_a_state_that_is_not_a_mapping_or_lacks_keys():
    layer = _layer(True)
    assert phase_state_problems("L", layer, [1], {}) == ["layer 'L': phase state is not a mapping"]
    state, tensors = _saved(layer)
    del state["pool"], state["stats"]
    assert phase_state_problems("L", layer, state, tensors) == [
        "layer 'L': phase state lacks ['pool', 'stats']"
    ]


@pytest.mark.parametrize(
    ("change", "want", "n"),
    [
        (_set(variant="huge"), "unknown candidate pool 'huge'; known: [", 1),
        # The statistics, sized for a pool of 2, do not fit a pool of 3 either.
        (_set(pool=3), "a pool of 3 needs 6 candidate rows, the file has 4", 4),
        (_set(pool=0), "a pool of 0 needs 0 candidate rows, the file has 4", 4),
        (_set(stats=None), "a dendrite phase needs candidate statistics", 1),
        (_set(unit_flags=[True]), "trainability flags are malformed", 1),
        (_set(dendrite_inputs_train=1), "trainability flags are malformed", 1),
    ],
)
def test_each_problem_is_named_first(change, want, n):
    problems = _problems(change)
    assert len(problems) == n and want in problems[0], problems


def test_an_unknown_phase_is_named():
    assert _problems(_set(phase="resting")) == [
        "layer 'L': unknown phase 'resting'",
        "layer 'L': candidates saved outside a dendrite phase",
    ]


def test_a_pool_size_that_is_no_count_stops_the_checks_there():
    problems = _problems(_set(pool="2", phase="resting"))
    assert problems == [
        "layer 'L': unknown phase 'resting'",
        "layer 'L': pool size '2' is not a non-negative integer",
    ]


def test_missing_candidates_are_named():
    def drop(state, tensors):
        del tensors["L.candidates.bank.weight"]

    assert _problems(drop) == ["layer 'L': a pool of 2 needs 4 candidate rows, the file has None"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("m_ve", torch.zeros(2, 3)), ("mean_e", "0"), ("count", None)],
)
def test_statistics_of_the_wrong_shape_or_type_are_named(key, value):
    def change(state, tensors):
        state["stats"] = {**state["stats"], key: value}

    problems = _problems(change)
    assert len(problems) == 1 and f"statistics {key} must have shape" in problems[0]


@pytest.mark.parametrize("skipped", [-1, 1.0, None])
def test_skipped_batches_must_be_a_count(skipped):
    def change(state, tensors):
        state["stats"] = {**state["stats"], "skipped_batches": skipped}

    assert _problems(change) == ["layer 'L': statistics skipped_batches is not a count"]


def test_candidates_outside_a_dendrite_phase_are_named():
    def add(state, tensors):
        tensors["L.candidates.bank.weight"] = torch.zeros(4, 3)

    assert _problems(add, dendrite_phase=False) == [
        "layer 'L': candidates saved outside a dendrite phase"
    ]


def test_slot_problems_by_hand():
    layer = _layer(False, grown=True)  # 1 slot, 2 neurons
    _, tensors = _saved(layer)
    assert slot_problems("L", layer, 1, tensors) == []
    assert slot_problems("L", layer, -1, tensors) == [
        "layer 'L': slot count -1 is not a non-negative integer"
    ]
    assert slot_problems("L", layer, 2, tensors) == [
        "layer 'L': 2 slots of 2 neurons need output weights (2, 2), the file has (1, 2)"
    ]
    assert slot_problems("L", layer, 0, tensors) == [
        "layer 'L': 0 slots saved but an output weight is present",
        "layer 'L': dendrite counts [1, 1] outside [0, 0]",
    ]
    no_out = {k: v for k, v in tensors.items() if k != "L.output_weight"}
    assert slot_problems("L", layer, 1, no_out) == [
        "layer 'L': 1 slots of 2 neurons need output weights (1, 2), the file has None"
    ]
    for bad in (torch.zeros(3, dtype=torch.int64), torch.zeros(2), None):
        counts = {**tensors, "L.dendrite_count": bad}
        if bad is None:
            del counts["L.dendrite_count"]
        assert slot_problems("L", layer, 1, counts) == [
            "layer 'L': dendrite counts must be 2 int64 values"
        ]
    negative = {**tensors, "L.dendrite_count": torch.tensor([-1, 0])}
    assert slot_problems("L", layer, 1, negative) == [
        "layer 'L': dendrite counts [-1, 0] outside [0, 1]"
    ]


def test_a_pool_of_zero_is_refused_even_with_an_empty_bank():
    def empty(state, tensors):
        state["pool"] = 0
        tensors["L.candidates.bank.weight"] = torch.zeros(0, 3)

    problems = _problems(empty)
    assert problems[0] == "layer 'L': a pool of 0 needs 0 candidate rows, the file has 0"
