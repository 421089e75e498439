"""PyTorch Lightning: one callback drives Perforated Backpropagation.

    from perforate.integrations.lightning import PerforateCallback
    trainer = Trainer(callbacks=[PerforateCallback(monitor="val_acc", mode="max")])

The callback wraps the LightningModule's layers at `setup` (before Lightning builds the
optimizers, so `configure_optimizers` sees the wrapped model), reports the monitored
validation metric to a `Perforator` after every validation run, has Lightning rebuild the
optimizers and schedulers from `configure_optimizers` whenever the controller
restructures the model or changes phase, and stops the Trainer when the controller is
done, with the best model loaded. `configure_optimizers` should optimise
`self.parameters()`: parameters that are frozen in a phase simply get no gradient.

Saving and resuming: the controller's whole state (structure, phase, candidates and their
statistics, counters, snapshots, generator) rides in Lightning's checkpoint as this
callback's state, so `Trainer.fit(ckpt_path=...)` continues exactly, in any phase. While
Lightning restores the module's weights in `fit`, the module loads non-strictly (its
shape follows the saved structure); the controller then loads the whole state strictly
and checks it, and a checkpoint without the callback's state is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import DendriteConfig
from ..controller import Perforator
from ..convert import add_dendrites, dendritic_layers
from ..errors import ConfigError, PhaseError
from ..events import Event

_MODES = {"min": "minimize", "max": "maximize"}


def resolve_direction(
    config: DendriteConfig | None, mode: str | None, monitor: str = "val_loss"
) -> tuple[DendriteConfig, str]:
    """The config and the mode, made to agree as EarlyStopping's `mode` would.

    No mode: the config's direction decides (no config: "min", for the default "val_loss").
    A mode and a config that disagree raise: one of them is a mistake, and guessing which
    keeps the worst epoch as the best. So does a config that maximizes a monitor named
    like a loss without a mode saying so (DendriteConfig's default is "maximize")."""
    if mode is not None and mode not in _MODES:
        raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
    if config is None:
        mode = mode or "min"
        return DendriteConfig(direction=_MODES[mode]), mode
    if mode is None:
        if monitor.endswith("loss") and config.direction == "maximize":
            raise ConfigError(
                f"monitor {monitor!r} is a loss but the config maximizes it "
                "(DendriteConfig's default direction): pass mode='min' and "
                "DendriteConfig(direction='minimize', ...), or mode='max' if higher is better"
            )
        return config, "min" if config.direction == "minimize" else "max"
    if config.direction != _MODES[mode]:
        raise ConfigError(
            f"mode={mode!r} but the config's direction is {config.direction!r}: pass "
            f"DendriteConfig(direction={_MODES[mode]!r}) or the matching mode"
        )
    return config, mode


class PerforateCallback(pl.Callback):
    """Drive a `Perforator` from a Lightning `Trainer`.

    Args:
        config: dendrite settings (default: `DendriteConfig()` with the mode's direction).
        monitor: the logged validation metric to report, e.g. "val_acc" or "val_loss".
        mode: "min" or "max", as in EarlyStopping; default: the config's direction, or
            "min" without a config. A mode that contradicts the config raises.
        seed: seeds candidate initialisation.
        log: log phase (1 = dendrite phase), cycle, dendrites and the candidates' mean
            best correlation through `pl_module.log` after every training epoch.
    """

    def __init__(
        self,
        config: DendriteConfig | None = None,
        monitor: str = "val_loss",
        mode: str | None = None,
        seed: int | None = None,
        log: bool = True,
    ) -> None:
        self.config, self.mode = resolve_direction(config, mode, monitor)
        self.monitor = monitor
        self.seed = seed
        self.log = log
        self.controller: Perforator | None = None
        self.events: list[Event] = []
        self._trainer: pl.Trainer | None = None
        self._reuse_first = True
        self._pending_state: dict[str, Any] | None = None
        self._strict_loading: bool | None = None

    @property
    def state_key(self) -> str:
        return f"PerforateCallback{{monitor={self.monitor!r}}}"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.strategy.restore_checkpoint_after_setup:
            raise ConfigError(
                f"PerforateCallback does not support {type(trainer.strategy).__name__}: it "
                "restores checkpoints after on_fit_start, too late to rebuild the dendrites; "
                "use a single device, DDP or DDP-spawn"
            )
        if not dendritic_layers(pl_module):
            add_dendrites(pl_module, self.config)
        # If `fit` resumes (Lightning names the checkpoint only after `setup`), the saved
        # module holds dendrites and candidates this one has not grown yet; only the
        # controller rebuilds them (in on_fit_start, from this callback's state, strictly).
        # So Lightning's own weight restore must not reject them; on_fit_start puts the
        # module's setting back and refuses a checkpoint without the controller's state.
        self._strict_loading = pl_module.strict_loading
        pl_module.strict_loading = False

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        trainer = self._trainer
        if self._reuse_first:  # Lightning built it already, over the wrapped model
            self._reuse_first = False
        else:
            self._rewrap_ddp(trainer)
            trainer.strategy.setup_optimizers(trainer)
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise PhaseError(
                f"PerforateCallback needs configure_optimizers to return one optimizer, "
                f"got {len(optimizers)}"
            )
        return optimizers[0]

    @staticmethod
    def _rewrap_ddp(trainer: pl.Trainer) -> None:
        """Under DDP, wrap the module again: DistributedDataParallel registers the
        parameters that train when it is built, so after a restructure or a phase change
        (new candidates, frozen neurons) the old wrapper would leave the new parameters'
        gradients unsynchronised and the processes would drift apart."""
        strategy = trainer.strategy
        configure = getattr(strategy, "configure_ddp", None)
        if configure is None or not isinstance(strategy.model, DistributedDataParallel):
            return  # (even one process under strategy="ddp" has a wrapper to renew)
        strategy.model = trainer.lightning_module
        configure()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self._reuse_first = True
        if self._strict_loading is not None:
            pl_module.strict_loading, self._strict_loading = self._strict_loading, None
        self.controller = Perforator(
            pl_module, self.config, optimizer=self._optimizer, seed=self.seed
        )
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.controller.load_state_dict(state)
        elif trainer.ckpt_path is not None:
            raise ConfigError(
                f"the checkpoint {str(trainer.ckpt_path)!r} holds no PerforateCallback state "
                f"(monitoring {self.monitor!r}): it was not written by a run with this "
                "callback, so its weights cannot be matched to the dendritic model; load "
                "plain weights into the module before fit instead of passing ckpt_path"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctl = self.controller
        if ctl is None or trainer.sanity_checking or ctl.done:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(
                f"PerforateCallback monitors {self.monitor!r}, which the LightningModule did "
                f"not log; logged: {sorted(trainer.callback_metrics)}"
            )
        event = ctl.end_epoch(trainer.callback_metrics[self.monitor])
        self.events.append(event)
        if ctl.done:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctl = self.controller
        if not self.log or ctl is None:
            return
        values = {
            "perforate/phase": float(ctl.phase.value == "dendrite"),
            "perforate/cycle": float(ctl.cycle),
            "perforate/dendrites": float(ctl.dendrites_kept),
        }
        last = ctl.history[-1] if ctl.history else None
        if last is not None and last.correlation:
            values["perforate/correlation"] = sum(last.correlation.values()) / len(last.correlation)
        for name, value in values.items():
            pl_module.log(name, value, prog_bar=name != "perforate/correlation", logger=True)

    # --- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The controller's whole state (empty before the fit starts)."""
        ctl = self.controller
        if ctl is None:
            return {}
        return {
            "controller": ctl.state_dict(),
            "events": [e.value for e in self.events],
            "monitor": self.monitor,
            "mode": self.mode,
            "config": dataclasses.asdict(self.config),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state until `on_fit_start` builds the controller, then load it there."""
        if not state_dict:
            return
        if state_dict.get("monitor") != self.monitor or state_dict.get("mode") != self.mode:
            raise ConfigError(
                f"the checkpoint was written monitoring {state_dict.get('monitor')!r} "
                f"({state_dict.get('mode')}), this callback monitors {self.monitor!r} "
                f"({self.mode}): resume with the same monitor and mode"
            )
        self.events = [Event(e) for e in state_dict.get("events", [])]
        self._pending_state = state_dict["controller"]
