"""A complete classification run on tensors: the loop a user writes, plus bookkeeping.

Used by the demo and the benchmarks. The loop body is exactly the documented pattern:
train one epoch with `ctl.optimizer`, then `ctl.end_epoch(validation_score)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .accounting import parameter_report
from .config import DendriteConfig
from .controller import Event, Perforator
from .data import Splits
from .models import mlp  # noqa: F401  (re-exported for the demo)


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
class RunResult:
    """One training run: what it cost and what it scored at the best validation epoch."""

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
    history: list[dict[str, Any]] = field(default_factory=list)
    test_by_epoch: list[float] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.base_params + self.dendrite_params

    def cycles(self) -> list[dict[str, Any]]:
        """Per cycle: best validation epoch of its neuron phase, with test, params, dendrites."""
        rows: dict[int, dict[str, Any]] = {}
        for rec, test in zip(self.history, self.test_by_epoch, strict=True):
            if rec["phase"] != "neuron":
                continue
            best = rows.get(rec["cycle"])
            if best is None or rec["score"] > best["val"]:
                rows[rec["cycle"]] = {
                    "cycle": rec["cycle"], "val": rec["score"], "test": test,
                    "params": rec["base_params"] + rec["dendrite_params"],
                    "dendrites": rec["dendrites"], "epoch": rec["epoch"],
                }
        return [rows[c] for c in sorted(rows)]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fit_classifier(
    model: nn.Module,
    data: Splits,
    config: DendriteConfig,
    *,
    seed: int,
    lr: float = 1e-2,
    candidate_lr: float | None = None,
    batch_size: int = 64,
    method_name: str | None = None,
    progress: Callable[[int, Event, float], None] | None = None,
) -> RunResult:
    """Train `model` on `data` under a Perforator until it is done; evaluate at the best."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    cand_lr = lr if candidate_lr is None else candidate_lr
    ctl = Perforator(
        model, config, seed=seed,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        candidate_optimizer=lambda params: torch.optim.Adam(params, lr=cand_lr),
    )
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    tests = []
    while not ctl.done:
        model.train()
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            ctl.optimizer.zero_grad(set_to_none=True)
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            ctl.optimizer.step()
        val = accuracy(model, data.x_val, data.y_val)
        tests.append(accuracy(model, data.x_test, data.y_test))
        event = ctl.end_epoch(val)
        if progress is not None:
            progress(ctl.epoch, event, val)
    report = parameter_report(model)
    neurons = sum(r.neurons for r in report.layers)
    return RunResult(
        method=method_name or config.method, seed=seed,
        val=accuracy(model, data.x_val, data.y_val), test=accuracy(model, data.x_test, data.y_test),
        base_params=report.base, dendrite_params=report.dendrite,
        dendrites_per_neuron=sum(r.dendrites for r in report.layers) / max(neurons, 1),
        epochs=ctl.epoch, seconds=time.perf_counter() - start, best_val=ctl.best_score,
        history=[r.to_dict() for r in ctl.history], test_by_epoch=tests,
    )

