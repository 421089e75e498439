"""What `Perforator.end_epoch` reports: the `Event` it returns, and the history rows.

The history is what users plot and what benchmarks summarise: one `EpochRecord` per
evaluation, with the score, the structure, the time since the last row, and what the
dendrite phase learned. `History` saves itself, so a resumed run's history continues.
"""

from __future__ import annotations

import csv
import enum
import io
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .files import atomic_write


class Event(str, enum.Enum):
    """What `end_epoch` did."""

    CONTINUE = "continue"  # same phase goes on
    DENDRITE_PHASE = "dendrite_phase"  # neuron phase ended; candidates created
    INSTALLED = "installed"  # dendrites installed; a new neuron phase started
    RESTARTED = "restarted"  # restart control: best restored, fresh optimizer
    RETRY = "retry"  # cycle did not beat the best: restored it, fresh candidates
    DONE = "done"  # training is over; the model holds the best accepted state


@dataclass
class EpochRecord:
    """One row of `Perforator.history`."""

    epoch: int
    cycle: int
    phase: str
    score: float
    best_score: float
    event: str
    dendrites: int
    base_params: int
    dendrite_params: int
    seconds: float
    correlation: dict[str, float] = field(default_factory=dict)  # layer -> mean best |r|
    lr: float | None = None
    # At an install: per layer, dendrites installed, their mean |r| and mean output std.
    install: dict[str, dict[str, float]] = field(default_factory=dict)
    # Dendrite phase: batches whose error was not finite (skipped, statistics untouched).
    skipped_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scalars(self) -> dict[str, float]:
        """The row as named numbers, for any logger with `add_scalar(tag, value, step)`
        (TensorBoard's SummaryWriter, and others) or a CSV file (`write_csv`)."""
        out = {
            "score": self.score,
            "best_score": self.best_score,
            "dendrite_phase": float(self.phase == "dendrite"),
            "cycle": float(self.cycle),
            "dendrites": float(self.dendrites),
            "parameters": float(self.base_params + self.dendrite_params),
            "seconds": self.seconds,
        }
        if self.lr is not None:
            out["lr"] = float(self.lr)
        if self.correlation:
            out["correlation"] = sum(self.correlation.values()) / len(self.correlation)
        return out


CSV_COLUMNS = (
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


def write_csv(records: list[EpochRecord], path: str | os.PathLike) -> Path:
    """The history as a CSV file (one row per evaluation), written atomically: call it
    after every `end_epoch` to follow a run from a spreadsheet or a plotting script."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        scalars = r.scalars()
        values = {
            **scalars,
            **r.to_dict(),  # integers stay integers
            "parameters": r.base_params + r.dendrite_params,
            "correlation": scalars.get("correlation"),  # blank outside dendrite phases
        }
        writer.writerow(["" if values.get(c) is None else values[c] for c in CSV_COLUMNS])
    atomic_write(path, buffer.getvalue().encode())
    return Path(path)


class History:
    """The records of a run, and what happened since the last one."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []
        self._last_time = time.perf_counter()
        self._install: dict[str, dict[str, float]] = {}
        self._skipped = 0

    def note_install(self, summary: dict[str, dict[str, float]]) -> None:
        self._install.update(summary)

    def note_skipped(self, batches: int) -> None:
        self._skipped += batches

    def record(self, **values: Any) -> EpochRecord:
        """Append a row; `seconds`, `install` and `skipped_batches` are filled in here."""
        now = time.perf_counter()
        row = EpochRecord(
            **values,
            seconds=now - self._last_time,
            install=self._install,
            skipped_batches=self._skipped,
        )
        self.records.append(row)
        self._install, self._skipped, self._last_time = {}, 0, now
        return row

    def mark(self) -> dict[str, Any]:
        """What `undo` needs to forget everything recorded or noted since (cheap)."""
        return {**vars(self), "records": list(self.records), "_install": dict(self._install)}

    def undo(self, mark: dict[str, Any]) -> None:
        vars(self).update(mark)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [r.to_dict() for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in fields(EpochRecord)}
        self.records = [
            EpochRecord(**{k: v for k, v in r.items() if k in names}) for r in state["records"]
        ]
        self._last_time = time.perf_counter()
