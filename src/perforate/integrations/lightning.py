"""PyTorch Lightning: one callback drives Perforated Backpropagation.

    from perforate.integrations.lightning import PerforateCallback
    trainer = Trainer(callbacks=[PerforateCallback(DendriteConfig(), monitor="val_acc")])

The callback wraps the LightningModule's layers at `setup` (before Lightning builds the
optimizers, so `configure_optimizers` sees the wrapped model), reports the monitored
validation metric to a `Perforator` after every validation run, has Lightning rebuild the
optimizers and schedulers from `configure_optimizers` whenever the controller
restructures the model or changes phase, and stops the Trainer when the controller is
done, with the best model loaded. `configure_optimizers` should optimise
`self.parameters()`: parameters that are frozen in a phase simply get no gradient.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from ..config import DendriteConfig
from ..controller import Perforator
from ..convert import add_dendrites, dendritic_layers
from ..errors import PhaseError
from ..events import Event


class PerforateCallback(pl.Callback):
    """Drive a `Perforator` from a Lightning `Trainer`.

    Args:
        config: dendrite settings (its `direction` must match the metric).
        monitor: the logged validation metric to report, e.g. "val_acc" or "val_loss".
        seed: seeds candidate initialisation.
    """

    def __init__(
        self,
        config: DendriteConfig | None = None,
        monitor: str = "val_loss",
        seed: int | None = None,
    ) -> None:
        self.config = config if config is not None else DendriteConfig()
        self.monitor = monitor
        self.seed = seed
        self.controller: Perforator | None = None
        self.events: list[Event] = []
        self._trainer: pl.Trainer | None = None
        self._reuse_first = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not dendritic_layers(pl_module):
            add_dendrites(pl_module, self.config)

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        trainer = self._trainer
        if self._reuse_first:  # Lightning built it already, over the wrapped model
            self._reuse_first = False
        else:
            trainer.strategy.setup_optimizers(trainer)
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise PhaseError(
                f"PerforateCallback needs configure_optimizers to return one optimizer, "
                f"got {len(optimizers)}"
            )
        return optimizers[0]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self._reuse_first = True
        self.controller = Perforator(
            pl_module, self.config, optimizer=self._optimizer, seed=self.seed
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctl = self.controller
        if ctl is None or trainer.sanity_checking or ctl.done:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"PerforateCallback monitors {self.monitor!r}, which the LightningModule did "
                f"not log; logged: {sorted(trainer.callback_metrics)}"
            )
        event = ctl.end_epoch(trainer.callback_metrics[self.monitor])
        self.events.append(event)
        if ctl.done:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        ctl = self.controller
        return (
            {}
            if ctl is None
            else {"epoch": ctl.epoch, "cycle": ctl.cycle, "phase": ctl.phase.value}
        )
