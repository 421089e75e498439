"""The ledger: one append-only JSONL file of run records per study folder.

The first line names the study (its fingerprint and format version); every later line is
one finished run. Appends hold an exclusive `flock` on the file and are fsynced, so
processes and shards sharing a folder never interleave, and a record once written survives
any crash. A line cut short by a kill is ignored when read and removed by the next append.
A record for a run already in the ledger is never written twice.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perforate import ConfigError

VERSION = 1
KIND = "perforate.ledger"


class LedgerError(ConfigError):
    """The output folder holds another study's ledger, or a ledger this version cannot read."""


class Ledger:
    def __init__(self, path: str | os.PathLike, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = {"kind": KIND, "version": VERSION, **header}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as fh:
            lines = _read_lines(fh)
            if not lines:
                fh.seek(0)
                fh.truncate()
                _append(fh, self.header)
            else:
                self._check_header(lines[0])

    def _check_header(self, first: dict[str, Any]) -> None:
        if first.get("kind") != KIND:
            raise LedgerError(f"{self.path} is not a perforate ledger; choose another --out")
        if first.get("version") != VERSION:
            raise LedgerError(
                f"{self.path} is a ledger of format {first.get('version')!r}; this version "
                f"writes {VERSION}: choose another --out"
            )
        mine_data, their_data = self.header.get("data"), first.get("data")
        if mine_data and their_data and mine_data != their_data:
            raise LedgerError(
                f"{self.path} holds runs made on other data (splits {their_data}, now "
                f"{mine_data}); choose another --out, or delete that folder to start again"
            )
        if first.get("fingerprint") != self.header["fingerprint"]:
            theirs, mine = first.get("sections", {}), self.header.get("sections", {})
            differ = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            what = (
                ", ".join(
                    f"[{k}]" if k != "checkpoint" else "the checkpoint's bytes" for k in differ
                )
                if differ
                else "the model, data, task, [train] or [dendrites]"
            )
            raise LedgerError(
                f"{self.path} holds the runs of another study ({what} differ); choose "
                "another --out, or delete that folder to start again"
            )

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def records(self) -> list[dict[str, Any]]:
        """Every complete run record, in the order written."""
        with self._locked() as fh:
            return _read_lines(fh)[1:]

    def done(self) -> set[tuple[str, int]]:
        return {(r["arm"], int(r["seed"])) for r in self.records()}

    def append(self, record: dict[str, Any]) -> bool:
        """Add a run record unless its (arm, seed) is there already; True when written."""
        with self._locked() as fh:
            lines = _read_lines(fh)
            if any(
                r.get("arm") == record["arm"] and r.get("seed") == record["seed"] for r in lines[1:]
            ):
                return False
            _drop_partial_tail(fh)
            _append(fh, record)
            return True


# What every run record holds, and the types the statistics read (a bool is no number).
NUMBER = (int, float)
FIELDS = {"arm": (str,), "seed": (int,), "val": NUMBER, "test": NUMBER, "params": NUMBER}


def _read_lines(fh: Any) -> list[dict[str, Any]]:
    """The header and the records. A last line cut short by a kill is ignored (it never
    happened); any other line that is not a record this code wrote is refused, naming it:
    statistics over a record edited by hand, or dropped silently, would be wrong."""
    fh.seek(0)
    lines = fh.read().split("\n")
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: cut short by a kill
                continue
            raise LedgerError(_bad_line(fh, number, "is not JSON")) from None
        if not isinstance(value, dict):
            raise LedgerError(_bad_line(fh, number, f"is a JSON {type(value).__name__}"))
        if out:  # a run record
            for key, kinds in FIELDS.items():
                field = value.get(key)
                if isinstance(field, bool) or not isinstance(field, kinds):
                    what = "is missing" if key not in value else f"is {field!r}"
                    raise LedgerError(_bad_line(fh, number, f"has {key!r} that {what}"))
        out.append(value)
    return out


def _bad_line(fh: Any, number: int, problem: str) -> str:
    return (
        f"{getattr(fh, 'name', 'the ledger')}, line {number}, {problem}: not a run record "
        "perforate wrote; restore it, or delete that line to train the run again"
    )


def _drop_partial_tail(fh: Any) -> None:
    """Cut a last line that has no newline (its writer was killed mid-line)."""
    fh.seek(0)
    text = fh.read()
    if text and not text.endswith("\n"):
        fh.truncate(text.rfind("\n") + 1)


def _append(fh: Any, record: dict[str, Any]) -> None:
    fh.seek(0, os.SEEK_END)
    fh.write(json.dumps(record, allow_nan=True) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
