"""Hugging Face Transformers: a TrainerCallback drives Perforated Backpropagation.

    trainer = Trainer(model=model, args=args, train_dataset=..., eval_dataset=...)
    attach(trainer, DendriteConfig(direction="minimize", pair_norms=False), metric="eval_loss")
    trainer.train()

`attach` wraps the model's Linear layers in place (before the Trainer builds its
optimizer), adds a `PerforateTrainerCallback` that reports `metric` after every
evaluation (set `eval_strategy="epoch"` or `"steps"`), has the Trainer build a fresh
optimizer and scheduler whenever the controller restructures the model or changes phase,
and stops training when the controller is done, with the best model loaded. No fork of
Transformers, no change to the model code. Transformer norms follow residual additions,
not a Linear layer, so `pair_norms=False` saves a tracing attempt (and its warning).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..config import DendriteConfig
from ..controller import Perforator
from ..convert import add_dendrites, dendritic_layers
from ..events import Event


class PerforateTrainerCallback(TrainerCallback):
    """Drive a `Perforator` from a `transformers.Trainer` (use `attach` to add it)."""

    def __init__(
        self,
        trainer: Trainer,
        config: DendriteConfig,
        metric: str = "eval_loss",
        seed: int | None = None,
    ) -> None:
        self.trainer = trainer
        self.config = config
        self.metric = metric
        self.seed = seed
        self.controller: Perforator | None = None
        self.events: list[Event] = []
        self._reuse_first = True

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        trainer = self.trainer
        if self._reuse_first:  # the Trainer built it already, over the wrapped model
            self._reuse_first = False
            return trainer.optimizer
        # The Trainer's own recipe (decay groups, only parameters that require grad).
        trainer.optimizer, trainer.lr_scheduler = None, None
        trainer.create_optimizer_and_scheduler(num_training_steps=trainer.state.max_steps)
        trainer.optimizer = trainer.accelerator.prepare(trainer.optimizer)
        return trainer.optimizer

    def on_train_begin(self, args, state, control, **kwargs: Any):
        self._reuse_first = True
        self.controller = Perforator(
            self.trainer.model, self.config, seed=self.seed, optimizer=self._optimizer
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs: Any):
        ctl = self.controller
        if ctl is None or ctl.done:
            return
        if not metrics or self.metric not in metrics:
            raise KeyError(
                f"PerforateTrainerCallback reports {self.metric!r}, missing from "
                f"the evaluation metrics {sorted(metrics or {})}"
            )
        event = ctl.end_epoch(metrics[self.metric])
        self.events.append(event)
        if ctl.done:
            control.should_training_stop = True


def attach(
    trainer: Trainer,
    config: DendriteConfig | None = None,
    metric: str = "eval_loss",
    seed: int | None = None,
) -> PerforateTrainerCallback:
    """Wrap `trainer.model` and add the callback; call before `trainer.train()`."""
    config = (
        config if config is not None else DendriteConfig(direction="minimize", pair_norms=False)
    )
    if not dendritic_layers(trainer.model):
        add_dendrites(trainer.model, config)
    callback = PerforateTrainerCallback(trainer, config, metric=metric, seed=seed)
    trainer.add_callback(callback)
    return callback
