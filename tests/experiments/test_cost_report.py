"""The run-cost page's arithmetic, on a hand-made run record of the engine's ledger."""

from __future__ import annotations

import pytest

from perforate.experiments.cost_report import (
    best_so_far,
    breakdown,
    median_curve,
    seconds_per_epoch,
    segments,
)

# A PB run: first phase (3 evaluations), a dendrite phase (1), a kept cycle (2), a
# dendrite phase (1), a cycle that does not beat the best (2, thrown away). Per
# evaluation the curve holds cumulative seconds, validation and test scores; `best` is
# the controller's best score after it (it moves at the end of a kept cycle only).
SECONDS = [1.0, 1.0, 1.0, 4.0, 2.0, 2.0, 4.0, 3.0, 3.0]
VAL = [0.50, 0.60, 0.55, 0.60, 0.70, 0.65, 0.70, 0.70, 0.69]
TEST = [0.40, 0.50, 0.45, 0.50, 0.62, 0.61, 0.62, 0.66, 0.60]
ROW = {
    "phases": [
        ["n", "continue"],
        ["n", "continue"],
        ["n", "dendrite_phase"],
        ["d", "installed"],
        ["n", "continue"],
        ["n", "dendrite_phase"],
        ["d", "installed"],
        ["n", "continue"],
        ["n", "done"],
    ],
    "curve": [
        [sum(SECONDS[: i + 1]), v, t] for i, (v, t) in enumerate(zip(VAL, TEST, strict=True))
    ],
    "best": [0.50, 0.60, 0.60, 0.60, 0.70, 0.70, 0.70, 0.70, 0.70],
}


def test_segments_split_at_every_event():
    assert segments(ROW["phases"]) == [
        ("n", [0, 1, 2]),
        ("d", [3]),
        ("n", [4, 5]),
        ("d", [6]),
        ("n", [7, 8]),
    ]


def test_seconds_per_epoch_undo_the_cumulative_curve():
    assert seconds_per_epoch(ROW) == pytest.approx(SECONDS)


def test_breakdown_by_hand():
    parts = breakdown(ROW)
    assert parts["first neuron phase"] == pytest.approx(3.0)
    # The controller's best moved from 0.60 to 0.70 at the second neuron phase's end:
    # kept, with the dendrite phase before it.
    assert parts["kept: dendrite"] == pytest.approx(4.0)
    assert parts["kept: neuron"] == pytest.approx(4.0)
    # The best stayed 0.70 at the last phase's end: it and its dendrite phase were waste.
    assert parts["discarded cycles"] == pytest.approx(4.0 + 6.0)
    assert sum(parts.values()) == pytest.approx(sum(SECONDS))


def test_breakdown_follows_the_controllers_decision_not_the_scores():
    """A cycle whose best score is higher but not by the controller's margin is thrown
    away: the recorded best does not move, whatever the raw scores say."""
    row = {**ROW, "best": [0.50, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60]}
    parts = breakdown(row)
    assert parts["kept: neuron"] == 0.0 and parts["kept: dendrite"] == 0.0
    assert parts["discarded cycles"] == pytest.approx(4.0 + 4.0 + 4.0 + 6.0)
    # Without `best` (records of an engine before it was recorded) a retry event is the
    # only sign of a thrown-away cycle.
    old = {k: v for k, v in ROW.items() if k != "best"}
    assert breakdown(old)["discarded cycles"] == 0.0


def test_best_so_far_follows_the_best_validation_not_the_best_test():
    times, scores = best_so_far(ROW)
    assert times == pytest.approx([1, 2, 3, 7, 9, 11, 15, 18, 21])
    # The test score is taken where validation was best, so a later test peak (0.66 at a
    # validation tie) is not picked up.
    assert scores == [0.40, 0.50, 0.50, 0.50, 0.62, 0.62, 0.62, 0.62, 0.62]
    # Minimizing: the lowest validation score leads.
    _, low = best_so_far({"curve": [[1, 0.5, 0.1], [2, 0.4, 0.2], [3, 0.45, 0.3]]}, "minimize")
    assert low == [0.1, 0.2, 0.2]


def test_median_curve_waits_for_every_run_and_holds_final_values():
    a = ([1.0, 2.0], [0.1, 0.3])
    b = ([1.5, 4.0], [0.2, 0.6])
    assert median_curve([a, b], [0.5, 1.5, 3.0, 5.0]) == [
        None,
        pytest.approx(0.15),
        pytest.approx(0.25),
        pytest.approx(0.45),
    ]
