"""`fit_classifier`: one run of a model on built-in `Splits`, as a `RunRecord`.

For `benchmarks/pb_settings.py`, the report of `perforate train` run folders
(`report.cycle_table`) and tests that want one run without a study. It is an adapter: the
training loop is the engine's one loop (`runs.train_run`), so a run here trains exactly as
the same run of a study would.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from perforate import DendriteConfig

from .arms import Arm
from .datasets import Splits, check_splits
from .runs import RunSpec, train_run
from .task import Task


@dataclass
class RunRecord:
    """One training run: what it cost and what it scored at the best validation epoch."""

    label: str
    method: str
    seed: int
    val: float
    test: float
    base_params: int
    dendrite_params: int
    dendrites_per_neuron: float
    epochs: int
    seconds: float
    best_val: float = float("nan")  # the controller's best accepted score
    dendrites: int = 0  # installed in the final model (0: the run kept none)
    history: list[dict[str, Any]] = field(default_factory=list)
    test_by_epoch: list[float] = field(default_factory=list)
    # Per evaluation: wall seconds (training, validation, controller; not the test-set
    # scoring done for the tables) and the validation pass's share of them.
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.base_params + self.dendrite_params

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        """From `to_dict()` output, ignoring extra keys a caller added (width, dataset)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        values.setdefault("label", values.get("method", ""))
        return cls(**values)

    def cycles(self) -> list[dict[str, Any]]:
        """Per cycle: best validation epoch of its neuron phase, with test, params, dendrites
        (test is NaN where the run did not score the test set every epoch)."""
        tests = self.test_by_epoch or [float("nan")] * len(self.history)
        rows: dict[int, dict[str, Any]] = {}
        for rec, test in zip(self.history, tests, strict=True):
            if rec["phase"] != "neuron":
                continue
            best = rows.get(rec["cycle"])
            if best is None or rec["score"] > best["val"]:
                rows[rec["cycle"]] = {
                    "cycle": rec["cycle"],
                    "val": rec["score"],
                    "test": test,
                    "params": rec["base_params"] + rec["dendrite_params"],
                    "dendrites": rec["dendrites"],
                    "epoch": rec["epoch"],
                }
        return [rows[c] for c in sorted(rows)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_classifier(
    model: nn.Module,
    data: Splits,
    config: DendriteConfig,
    *,
    seed: int,
    lr: float = 1e-2,
    candidate_lr: float | None = None,
    batch_size: int = 64,
    optimizer: str = "Adam",
    weight_decay: float | None = None,
    label: str | None = None,
    track_test: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
) -> RunRecord:
    """Train `model` on `data` under a Perforator with `config` until it is done, on the
    engine's one loop (`runs.train_run`), and return a `RunRecord`.

    With `checkpoint_path` the training state is written there every epoch and `resume=True`
    continues from it; without, the run's files go to a temporary folder. `track_test`
    scores the test set after every epoch (for per-cycle tables; it decides nothing)."""
    check_splits(data)
    train = {
        "lr": lr,
        "candidate_lr": lr if candidate_lr is None else candidate_lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        **({} if weight_decay is None else {"weight_decay": weight_decay}),
    }
    task = Task(
        model_factory=lambda: model,
        data_factory=lambda: data,
        model_name=label or type(model).__name__,
        data_name=data.name,
    )
    spec = RunSpec(
        arm=Arm(label or config.method, "a run of fit_classifier"),
        seed=seed,
        config=config,
        train=train,
        device=next(model.parameters()).device,
        track_test=track_test,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) if checkpoint_path is None else Path(checkpoint_path).parent
        if checkpoint_path is not None and not resume:
            for stale in (run_dir / "ckpt.safetensors", run_dir / "ckpt.safetensors.prev"):
                stale.unlink(missing_ok=True)
        record = train_run(spec, task, run_dir, keep_history=True)
    seconds = [c[0] for c in record["curve"]]
    return RunRecord(
        label=label or config.method,
        method=config.method,
        seed=seed,
        val=record["val"],
        test=record["test"],
        base_params=record["base_params"],
        dendrite_params=record["dendrite_params"],
        dendrites_per_neuron=record["dendrites_per_neuron"],
        epochs=record["epochs"],
        seconds=record["seconds"],
        best_val=record["best_val"],
        dendrites=record["dendrites"],
        history=record["history"],
        test_by_epoch=[c[2] for c in record["curve"]] if track_test else [],
        epoch_seconds=[b - a for a, b in zip([0.0, *seconds], seconds, strict=False)],
    )
