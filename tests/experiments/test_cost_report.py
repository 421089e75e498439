"""The run-cost page's arithmetic, on hand-made records."""

from __future__ import annotations

import pytest

from perforate.experiments.cost_report import best_so_far, breakdown, median_curve, segments

# A PB run: first phase (3 evaluations), a dendrite phase (1), a kept cycle (2), a
# dendrite phase (1), a cycle that does not beat the best (2, discarded).
ROW = {
    "phases": [
        ["n", 0.50, "continue"],
        ["n", 0.60, "continue"],
        ["n", 0.55, "dendrite_phase"],
        ["d", 0.60, "installed"],
        ["n", 0.70, "continue"],
        ["n", 0.65, "dendrite_phase"],
        ["d", 0.70, "installed"],
        ["n", 0.70, "continue"],
        ["n", 0.69, "done"],
    ],
    "epoch_seconds": [1.0, 1.0, 1.0, 4.0, 2.0, 2.0, 4.0, 3.0, 3.0],
    "eval_seconds": [0.1] * 9,
    "test_by_epoch": [0.40, 0.50, 0.45, 0.50, 0.62, 0.61, 0.62, 0.66, 0.60],
}


def test_segments_split_at_every_event():
    assert segments(ROW["phases"]) == [
        ("n", [0, 1, 2]),
        ("d", [3]),
        ("n", [4, 5]),
        ("d", [6]),
        ("n", [7, 8]),
    ]


def test_breakdown_by_hand():
    parts = breakdown(ROW)
    assert parts["first neuron phase"] == pytest.approx(3 * 0.9)
    assert parts["kept: dendrite"] == pytest.approx(3.9)
    assert parts["kept: neuron"] == pytest.approx(2 * 1.9)
    # 0.70 does not beat the accepted 0.70: its dendrite phase and neuron phase are waste.
    assert parts["discarded cycles"] == pytest.approx(3.9 + 2 * 2.9)
    assert parts["evaluation"] == pytest.approx(0.9)
    assert sum(parts.values()) == pytest.approx(sum(ROW["epoch_seconds"]))
    assert breakdown({**ROW, "epoch_seconds": []}) is None


def test_best_so_far_follows_the_best_validation_not_the_best_test():
    times, accs = best_so_far(ROW)
    assert times == pytest.approx([1, 2, 3, 7, 9, 11, 15, 18, 21])
    # The test score is taken where validation was best, so a later test peak (0.66 at a
    # validation tie) is not picked up.
    assert accs == [0.40, 0.50, 0.50, 0.50, 0.62, 0.62, 0.62, 0.62, 0.62]


def test_median_curve_waits_for_every_run_and_holds_final_values():
    a = ([1.0, 2.0], [0.1, 0.3])
    b = ([1.5, 4.0], [0.2, 0.6])
    assert median_curve([a, b], [0.5, 1.5, 3.0, 5.0]) == [
        None,
        pytest.approx(0.15),
        pytest.approx(0.25),
        pytest.approx(0.45),
    ]
