"""One-off: the old runners' benchmark records as ledgers of the compare engine.

Until issue 23 each suite wrote `benchmarks/results/<suite>.jsonl`, one JSON line per run
named by the old method registry. The suites took hours of CPU, so their records are
converted, not re-run: each line goes to the ledger of its study
(`benchmarks/results/<study>/runs.jsonl`, `perforate.experiments.suites`), with its arm
named as the engine names it:

    plain at the study's width -> plain        plain at another width -> ladder@W
    pb_epochs (the 0.2 schedule) -> pb_patient  pb_patient (cycle_patience) -> pb_cycle_patience
    head_restart -> restart                     kd / restart_kd / pb_kd -> compression_kd's
                                                plain or ladder@W / restart / pb
    every other method keeps its name

Scores, parameters, epochs and seconds are copied as they are. What the old records did
not hold is marked: no model file, no fork, the end reason only where it is certain
(plain runs: early stopping; any run at the epoch cap: max_epochs). The controller's best
score after each evaluation (`best`, from which the run-cost page reads the accept
decisions) is replayed from the recorded validation scores with the controller's own rule
(`Improvement` of the arm's settings); the old records rounded those scores to 5 digits.
The label-trained arms of the old compression suite were the fashion_mlp study's runs
again (the same test scores) and are not copied twice.

    .venv/bin/python tools/convert_results.py [--old DIR]          # every old file
    .venv/bin/python tools/convert_results.py --quick --out DIR    # a sample (seconds; CI)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from perforate.experiments.arms import Arm
from perforate.experiments.ledger import Ledger
from perforate.experiments.study import Study
from perforate.experiments.suites import SUITES, studies
from perforate.switching import Improvement

ROOT = Path(__file__).resolve().parent.parent
RENAMED = {"pb_epochs": "pb_patient", "pb_patient": "pb_cycle_patience", "head_restart": "restart"}
DISTILLED = {"restart_kd": "restart", "pb_kd": "pb"}
KEPT = ("source_test", "trainable_params", "teacher_test", "teacher_params", "machine")


def arm_of(record: dict[str, Any], study: Study) -> str | None:
    """The study's arm that ran this old record, or None where the record belongs to
    another study (another PB width, the label-trained side of compression)."""
    method, width = record["method"], record["width"]
    if study.name.endswith("_kd"):
        if not record.get("distilled"):
            return None
        method = "plain" if method == "kd" else DISTILLED[method]
    elif record.get("distilled"):
        return None
    if "shots" in record:  # transfer: one study per number of labels
        return RENAMED.get(method, method) if study.name.endswith(f"_{record['shots']}") else None
    if method == "plain":
        return "plain" if width == study.base_width else f"ladder@{width}"
    if width != study.base_width:
        return None
    return RENAMED.get(method, method)


def replay_best(phases: list[list[Any]], arm: Arm, study: Study) -> list[float]:
    """The controller's best score after each evaluation, replayed (see the docstring):
    the best of the accepted state and of the neuron phase in flight."""
    improvement = Improvement.from_config(arm.config(study.base_config().to_dict()))
    accepted: float | None = None
    cycle: float | None = None
    out = []
    for letter, score, event in phases:
        if letter == "n":
            if improvement.better(score, cycle, margin=False):
                cycle = score
            if event != "continue":  # the phase ended: was its best accepted?
                if improvement.better(cycle, accepted):
                    accepted = cycle
                cycle = None
        held = [s for s in (accepted, cycle) if s is not None]
        out.append(improvement.best(held) if held else score)
    return out


def convert(record: dict[str, Any], arm: Arm, study: Study, source: str) -> dict[str, Any]:
    phases = record["phases"]
    seconds = record["epoch_seconds"]
    tests = record.get("test_by_epoch") or [math.nan] * len(phases)
    elapsed, curve = 0.0, []
    for s, (_, score, _), test in zip(seconds, phases, tests, strict=True):
        elapsed += s
        curve.append([round(elapsed, 6), score, test])
    config = arm.config(study.base_config().to_dict())
    end = "not recorded"
    if record["epochs"] >= config.max_epochs:
        end = "max_epochs"
    elif config.max_cycles == 0:
        end = "early_stopping"
    base_width = study.base_width
    return {
        "arm": arm.name,
        "seed": record["seed"],
        "val": record["val"],
        "test": record["test"],
        "best_val": max(s for letter, s, _ in phases if letter == "n"),
        "params": record["base_params"] + record["dendrite_params"],
        "base_params": record["base_params"],
        "dendrite_params": record["dendrite_params"],
        "dendrites": record["dendrites"],
        "dendrites_per_neuron": record["dendrites_per_neuron"],
        "epochs": record["epochs"],
        "seconds": record["seconds"],
        "own_seconds": record["seconds"],
        "wall_seconds": record["seconds"],
        "forked_at": None,
        "prefix_seconds": 0.0,
        "end": end,
        "cycles": max((c["cycle"] for c in record.get("cycles", [])), default=0),
        "curve": curve,
        "phases": [[letter, event] for letter, _, event in phases],
        "best": replay_best(phases, arm, study),
        "eval_seconds": record["eval_seconds"],
        "model": None,
        "fingerprint": study.fingerprint(),
        "width": arm.width if arm.width is not None else base_width,
        "grows": arm.grows,
        "chain": None,
        "device": "cpu",
        "threads": record.get("torch_threads", 1),
        "converted_from": source,
        **{k: record[k] for k in KEPT if k in record},
    }


def convert_file(path: Path, results: Path, log=print) -> dict[str, int]:
    """Every record of one old file into its studies' ledgers under `results`; returns
    the records written per study (a ledger already holding a run keeps it)."""
    suite = path.stem
    if suite not in SUITES:
        raise SystemExit(f"{path}: no suite {suite!r} in perforate.experiments.suites")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    targets = studies(suite, results)
    if suite == "compression":  # the teacher had no records of its own
        targets = [s for s in targets if s.name.endswith("_kd")]
    written: dict[str, int] = {}
    for study in targets:
        arms = {a.name: a for a in study.arms()}
        mine = [(row, arm_of(row, study)) for row in rows]
        mine = [(row, name) for row, name in mine if name is not None]
        if not mine:  # e.g. transfer's source study: its runs were never recorded
            continue
        out = results / study.name / "runs.jsonl"
        ledger = Ledger(out, {"fingerprint": study.fingerprint(), "study": study.to_dict()})
        count = 0
        for row, name in mine:
            if name not in arms:
                raise SystemExit(f"{path}: method {row['method']!r} has no arm in {study.name}")
            count += ledger.append(convert(row, arms[name], study, path.name))
        written[study.name] = count
        log(f"{path.name} -> {out}: {count} runs")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--old", type=Path, default=Path("benchmarks/results"), help="the old <suite>.jsonl"
    )
    # As `perforate bench` names it (the transfer and compression studies hold paths
    # under it, and their fingerprints with them): run from the repository's root.
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="convert a sample of the old records (2 seeds of digits_mlp, kept in "
        "tests/fixtures/old_results/) and report it (seconds)",
    )
    args = parser.parse_args(argv)
    out = args.out
    if args.quick:
        files = [ROOT / "tests" / "fixtures" / "old_results" / "digits_mlp.jsonl"]
    else:
        files = sorted(p for p in args.old.glob("*.jsonl") if p.stem in SUITES)
    for path in files:
        convert_file(path, out)
    if args.quick:
        from perforate.experiments.bench_report import load

        for s in load(out):
            print(f"{s.name}: {s.report['verdict']['sentence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
