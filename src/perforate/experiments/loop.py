"""The training loop of the runners before `perforate compare`: `fit_classifier` trains one
model under a Perforator and returns a `RunRecord`.

Kept for `benchmarks/pb_settings.py` and the tests that still call it; the application's
own loop is `runs.train_run` (one run of a study's arm on the compare engine). The loop
body is the documented pattern: train one epoch with `ctl.optimizer`, then
`ctl.end_epoch(validation_score)`. Batches are shuffled with the process RNG, seeded
once at the start, so a resumed run (the checkpoint holds that RNG) continues exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perforate import DendriteConfig, Event, Perforator, parameter_report, training_state

from .datasets import Splits, check_splits

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "SGD": torch.optim.SGD,
}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += (model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum().item()
    model.train(was_training)
    return correct / len(y)


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

    def summary(self) -> dict[str, Any]:
        """The compact form a benchmark keeps: scores, cost, phases, cycles, installs."""
        return {
            "base_params": self.base_params,
            "dendrite_params": self.dendrite_params,
            "dendrites_per_neuron": self.dendrites_per_neuron,
            "dendrites": self.dendrites,
            "val": self.val,
            "test": self.test,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "phases": [[h["phase"][0], round(h["score"], 5), h["event"]] for h in self.history],
            "epoch_seconds": [round(t, 4) for t in self.epoch_seconds],
            "eval_seconds": [round(t, 4) for t in self.eval_seconds],
            "test_by_epoch": [round(t, 5) for t in self.test_by_epoch],
            "cycles": self.cycles(),
            "installs": [h["install"] for h in self.history if h["install"]],
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[Perforator, Event, float], None]


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
    progress: Progress | None = None,
    started: Callable[[Perforator], None] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> RunRecord:
    """Train `model` on `data` under a Perforator until it is done; evaluate at the best.

    With `checkpoint_path`, the training state is written there after every epoch, and
    `resume=True` continues from it (or its `.prev`) when one exists. `started(ctl)` is
    called once the controller exists. `track_test` scores the test set after
    every epoch (for per-cycle tables; it does not influence training). `loss(logits,
    idx)` replaces the cross-entropy with the batch's training indices `idx` (e.g. a
    distillation loss against a teacher's logits for those examples).
    """
    check_splits(data)  # an empty split would fail epochs later under another name
    start = time.perf_counter()
    opt_cls = OPTIMIZERS[optimizer]
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    cand_lr = lr if candidate_lr is None else candidate_lr
    factories = {
        "optimizer": lambda p: opt_cls(p, lr=lr, **extra),
        "candidate_optimizer": lambda p: opt_cls(p, lr=cand_lr, **extra),
    }
    tests: list[float] = []
    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []
    test_seconds = 0.0
    if (
        resume
        and checkpoint_path is not None
        and (Path(checkpoint_path).exists() or training_state.previous(checkpoint_path).exists())
    ):
        ctl = Perforator.resume(
            checkpoint_path, model, checkpoint_path=checkpoint_path, **factories
        )
        tests = [float("nan")] * ctl.epoch if track_test else []
    else:
        torch.manual_seed(seed)
        ctl = Perforator(model, config, seed=seed, checkpoint_path=checkpoint_path, **factories)
    if started is not None:
        started(ctl)
    cross_entropy = nn.CrossEntropyLoss()

    def batch_loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, data.y_train[idx]) if loss is None else loss(logits, idx)

    n = len(data.y_train)
    while not ctl.done:
        began = time.perf_counter()
        model.train()
        for idx in torch.randperm(n).split(batch_size):
            ctl.optimizer.zero_grad(set_to_none=True)
            batch_loss(model(data.x_train[idx]), idx).backward()
            ctl.optimizer.step()
            if ctl.end_step():  # evaluate now: e.g. the candidates have settled
                break
        trained = time.perf_counter()
        val = accuracy(model, data.x_val, data.y_val)
        evaluated = time.perf_counter()
        scoring_test = 0.0
        if track_test:
            tests.append(accuracy(model, data.x_test, data.y_test))
            scoring_test = time.perf_counter() - evaluated
        event = ctl.end_epoch(val)
        test_seconds += scoring_test
        epoch_seconds.append(time.perf_counter() - began - scoring_test)
        eval_seconds.append(evaluated - trained)
        if progress is not None:
            progress(ctl, event, val)
    report = parameter_report(model)
    neurons = sum(r.neurons for r in report.layers)
    return RunRecord(
        label=label or ctl.config.method,
        method=ctl.config.method,
        seed=seed,
        val=accuracy(model, data.x_val, data.y_val),
        test=accuracy(model, data.x_test, data.y_test),
        base_params=report.base,
        dendrite_params=report.dendrite,
        dendrites_per_neuron=sum(r.dendrites for r in report.layers) / max(neurons, 1),
        epochs=ctl.epoch,
        seconds=time.perf_counter() - start - test_seconds,
        best_val=ctl.best_score,
        dendrites=ctl.dendrites_kept,
        history=[r.to_dict() for r in ctl.history],
        test_by_epoch=tests,
        epoch_seconds=epoch_seconds,
        eval_seconds=eval_seconds,
    )
