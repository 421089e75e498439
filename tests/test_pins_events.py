"""History rows: what a row holds, its numbers for loggers, the CSV file, save and load."""

from __future__ import annotations

import pytest

from perforate.events import CSV_COLUMNS, EpochRecord, Event, History, write_csv


def _row(**changes) -> dict:
    values = dict(
        epoch=3,
        cycle=1,
        phase="dendrite",
        score=0.5,
        best_score=0.75,
        event="continue",
        dendrites=4,
        base_params=100,
        dendrite_params=20,
    )
    return {**values, **changes}


def test_events_have_their_documented_values():
    assert [e.value for e in Event] == [
        "continue",
        "dendrite_phase",
        "installed",
        "restarted",
        "retry",
        "done",
    ]
    assert Event.INSTALLED == "installed"


def test_scalars_by_hand():
    rec = EpochRecord(**_row(), seconds=1.5, correlation={"a": 0.2, "b": 0.4}, lr=0.01)
    assert rec.scalars() == {
        "score": 0.5,
        "best_score": 0.75,
        "dendrite_phase": 1.0,
        "cycle": 1.0,
        "dendrites": 4.0,
        "parameters": 120.0,
        "seconds": 1.5,
        "lr": 0.01,
        "correlation": pytest.approx(0.3),
    }
    plain = EpochRecord(**_row(phase="neuron"), seconds=0.0)
    s = plain.scalars()
    assert s["dendrite_phase"] == 0.0 and "lr" not in s and "correlation" not in s
    assert EpochRecord(**_row(), seconds=0.0, lr=0).scalars()["lr"] == 0.0  # 0 is a rate


def test_csv_by_hand(tmp_path):
    rows = [
        EpochRecord(**_row(phase="neuron"), seconds=2.0, lr=0.1),
        EpochRecord(**_row(epoch=4), seconds=0.25, correlation={"x": 0.5}),
    ]
    path = write_csv(rows, tmp_path / "h.csv")
    assert path == tmp_path / "h.csv"
    assert path.read_text().splitlines() == [
        ",".join(CSV_COLUMNS),
        "3,1,neuron,continue,0.5,0.75,4,120,,0.1,2.0",
        "4,1,dendrite,continue,0.5,0.75,4,120,0.5,,0.25",
    ]
    assert CSV_COLUMNS == (
        "epoch",
        "cycle",
        "phase",
        "event",
        "score",
        "best_score",
        "dendrites",
        "parameters",
        "correlation",
        "lr",
        "seconds",
    )


def test_history_fills_in_installs_skips_and_time_then_starts_afresh(monkeypatch):
    clock = iter([10.0, 12.5, 13.0])
    monkeypatch.setattr("perforate.events.time.perf_counter", lambda: next(clock))
    h = History()  # t = 10
    h.note_install({"0": {"installed": 2}})
    h.note_install({"3": {"installed": 1}})
    h.note_skipped(2)
    h.note_skipped(3)
    first = h.record(**_row())  # t = 12.5
    assert first.seconds == 2.5 and first.skipped_batches == 5
    assert first.install == {"0": {"installed": 2}, "3": {"installed": 1}}
    second = h.record(**_row(epoch=4))  # t = 13
    assert second.seconds == 0.5 and second.skipped_batches == 0 and second.install == {}
    assert h.records == [first, second]


def test_history_round_trips_and_ignores_unknown_fields():
    h = History()
    h.record(**_row())
    state = h.state_dict()
    state["records"][0]["from_the_future"] = 1
    back = History()
    back.load_state_dict(state)
    assert back.records[0].to_dict() == h.records[0].to_dict()
    old = {k: v for k, v in h.records[0].to_dict().items() if k != "skipped_batches"}
    back.load_state_dict({"records": [old]})
    assert back.records[0].skipped_batches == 0


def test_undo_forgets_what_was_recorded_and_noted_since_the_mark():
    h = History()
    h.record(**_row())
    mark = h.mark()
    h.note_install({"0": {"installed": 1}})
    h.note_skipped(4)
    h.record(**_row(epoch=4))
    h.note_skipped(1)
    h.undo(mark)
    assert [r.epoch for r in h.records] == [3]
    row = h.record(**_row(epoch=4))
    assert row.install == {} and row.skipped_batches == 0


def test_after_a_load_the_next_row_times_from_the_load(monkeypatch):
    clock = iter([0.0, 100.0, 101.5])
    monkeypatch.setattr("perforate.events.time.perf_counter", lambda: next(clock))
    h = History()  # t = 0
    h.load_state_dict({"records": []})  # t = 100: a resumed run
    assert h.record(**_row()).seconds == 1.5
