"""Hugging Face Transformers: a TrainerCallback drives Perforated Backpropagation.

    trainer = Trainer(model=model, args=args, train_dataset=..., eval_dataset=...)
    attach(trainer)  # metric and direction from args.metric_for_best_model, else eval_loss
    trainer.train()
    save_pretrained(model, "grown/")                    # HF config + perforate weights
    model = from_pretrained(BertForSequenceClassification, "grown/")

`attach` wraps the model's Linear layers in place (before the Trainer builds its
optimizer), adds a `PerforateTrainerCallback` that reports `metric` after every
evaluation (set `eval_strategy="epoch"` or `"steps"`), has the Trainer build a fresh
optimizer and scheduler whenever the controller restructures the model or changes phase,
and stops training when the controller is done, with the best model loaded. No fork of
Transformers, no change to the model code. Transformer norms follow residual additions,
not a Linear layer, so `pair_norms=False` saves a tracing attempt (and its warning).

Tied weights: a Linear whose weight is shared with another module (a language-model head
tied to the embeddings) is left unwrapped by `attach`: a dendrite would untie nothing,
but the head is the embedding matrix, which the Trainer and `save_pretrained` treat as one
tensor.

Saving a grown model: HF's own `model.save_pretrained` writes the dendritic weights under
keys a plain `from_pretrained` does not know (it would re-initialise those layers with a
warning). `save_pretrained(model, directory)` here writes the model's HF config and one
perforate file (structure and weights); `from_pretrained(model_class, directory)` builds
the model from that config, rebuilds the dendrites and loads the weights bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .. import training_state
from ..checkpoint import layer_set_mismatches, load, save
from ..config import SUPPORTED_LAYER_TYPES, DendriteConfig
from ..controller import Perforator
from ..convert import add_dendrites, dendritic_layers
from ..errors import CheckpointError, CheckpointMismatchError, ConfigError, PhaseError
from ..events import Event
from ..layers import Phase

log = logging.getLogger(__name__)

WEIGHTS_NAME = "perforate.safetensors"
STATE_NAME = "perforate_state.safetensors"  # the controller's state in each checkpoint


class PerforateTrainerCallback(TrainerCallback):
    """Drive a `Perforator` from a `transformers.Trainer` (use `attach` to add it)."""

    def __init__(
        self,
        trainer: Trainer,
        config: DendriteConfig,
        metric: str = "eval_loss",
        seed: int | None = None,
        resume_state: dict[str, Any] | None = None,
    ) -> None:
        self.trainer = trainer
        self.config = config
        self.metric = metric
        self.seed = seed
        self.controller: Perforator | None = None
        self.events: list[Event] = []
        self._reuse_first = True
        self._resume_state = resume_state

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        trainer = self.trainer
        if self._reuse_first:  # the Trainer built it already, over the wrapped model
            self._reuse_first = False
            return trainer.optimizer
        # The Trainer's own recipe (decay groups, only parameters that require grad).
        trainer.optimizer, trainer.lr_scheduler = None, None
        trainer.create_optimizer_and_scheduler(num_training_steps=trainer.state.max_steps)
        trainer.optimizer = trainer.accelerator.prepare(trainer.optimizer)
        continue_schedule(trainer.lr_scheduler, trainer.state.global_step)
        return trainer.optimizer

    def on_train_begin(self, args, state, control, **kwargs: Any):
        if args.world_size > 1:
            raise ConfigError(
                f"PerforateTrainerCallback runs in one process (world size {args.world_size} "
                "here): the Trainer keeps its DistributedDataParallel wrapper for the whole "
                "run, so candidates added later would train apart on each process. Use "
                "Lightning's callback or a plain loop (docs/distributed.md) for DDP"
            )
        self._reuse_first = True
        self.controller = Perforator(
            self.trainer.model, self.config, seed=self.seed, optimizer=self._optimizer
        )
        if self._resume_state is not None:
            saved, self._resume_state = self._resume_state, None
            step = saved.pop("global_step", None)
            if step is not None and step != state.global_step:
                raise ConfigError(
                    f"attach restored the dendrites of step {step}, the Trainer resumes at "
                    f"step {state.global_step}: pass the same checkpoint to both"
                )
            self.controller.load_state_dict(saved)
        elif state.global_step > 0:
            raise ConfigError(
                "the Trainer resumes from a checkpoint but the dendrites were not restored: "
                "pass the same checkpoint to attach(trainer, resume_from_checkpoint=...) "
                "before trainer.train(resume_from_checkpoint=...)"
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs: Any):
        ctl = self.controller
        if ctl is None or ctl.done:
            return
        if not metrics or self.metric not in metrics:
            raise ConfigError(
                f"PerforateTrainerCallback reports {self.metric!r}, missing from "
                f"the evaluation metrics {sorted(metrics or {})}"
            )
        event = ctl.end_epoch(metrics[self.metric])
        self.events.append(event)
        if ctl.done:
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs: Any):
        """Write the controller's state into the checkpoint folder the Trainer just wrote."""
        ctl = self.controller
        if ctl is None or not args.should_save:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            raise ConfigError(
                f"the Trainer saved no checkpoint at {folder}: perforate's state goes beside "
                "it there (hyperparameter search writes run-* folders, which is not supported)"
            )
        saved = {**ctl.state_dict(), "global_step": state.global_step}
        training_state.save(folder / STATE_NAME, {"controller": saved})

    def on_train_end(self, args, state, control, **kwargs: Any):
        """The Trainer's own limit (epochs or steps) ended the run: keep the best state."""
        ctl = self.controller
        if ctl is not None and not ctl.done and ctl.history:
            log.info("the Trainer's limit ended the run; restoring the best state seen")
            self.events.append(ctl.finish())


def continue_schedule(scheduler: Any, steps: int) -> None:
    """Put a freshly built step-based schedule at step `steps`, so warmup and decay run
    once over the whole run instead of restarting with every rebuilt optimizer."""
    if steps <= 0 or not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    with warnings.catch_warnings():  # stepping before the new optimizer's first step
        warnings.simplefilter("ignore", UserWarning)
        scheduler.last_epoch = steps - 1
        scheduler.step()


def resolve_metric(
    args: Any, config: DendriteConfig | None, metric: str | None
) -> tuple[str, DendriteConfig]:
    """The reported metric and a config whose direction agrees with the Trainer's.

    The metric is `metric`, else `args.metric_for_best_model`, else "eval_loss" ("eval_"
    is prefixed as the Trainer does). Its direction is `args.greater_is_better` when the
    arguments name the same metric, else the config's, else the Trainer's rule (lower is
    better for names ending in "loss"). A config that contradicts the arguments, or that
    maximizes a loss the arguments say nothing about, raises. Without a config, the
    default one also wraps GPT-2's Conv1D layers."""

    def prefixed(name: str) -> str:
        return name if name.startswith("eval_") else f"eval_{name}"

    named = getattr(args, "metric_for_best_model", None)
    name = prefixed(metric or named or "eval_loss")
    greater = getattr(args, "greater_is_better", None)
    if named is None or prefixed(named) != name:
        greater = None
    if greater is None and config is None:
        greater = not name.endswith("loss")
    if config is None:
        return name, DendriteConfig(
            direction="maximize" if greater else "minimize",
            pair_norms=False,
            layer_types=SUPPORTED_LAYER_TYPES,  # with GPT-2's Conv1D
        )
    if greater is not None and config.direction != ("maximize" if greater else "minimize"):
        raise ConfigError(
            f"the TrainingArguments say greater_is_better={greater} for {name!r}, the config "
            f"says direction={config.direction!r}: make them agree"
        )
    if greater is None and name.endswith("loss") and config.direction == "maximize":
        raise ConfigError(
            f"{name!r} is a loss but the config maximizes it (DendriteConfig's default "
            "direction): pass DendriteConfig(direction='minimize', ...), or set "
            "greater_is_better=True in the TrainingArguments if higher really is better"
        )
    return name, config


def tied_linears(model: nn.Module) -> list[str]:
    """Qualified names of Linear layers whose weight another module shares (tied heads)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if pname == "weight":
                owners.setdefault(id(param), []).append(name)
    return sorted(
        name
        for names in owners.values()
        if len(names) > 1
        for name in names
        if isinstance(model.get_submodule(name), nn.Linear)
    )


def attach(
    trainer: Trainer,
    config: DendriteConfig | None = None,
    metric: str | None = None,
    seed: int | None = None,
    resume_from_checkpoint: str | os.PathLike | bool | None = None,
) -> PerforateTrainerCallback:
    """Wrap `trainer.model` and add the callback; call before `trainer.train()`.

    Layers tied to another module's weight are excluded (see the module docstring). To
    resume, pass the checkpoint here too (True: the last one in `args.output_dir`; default:
    `args.resume_from_checkpoint`), then `trainer.train(resume_from_checkpoint=...)`: the
    dendrites, the phase and which parameters train are restored now, before the Trainer
    builds its optimizer, and the controller continues exactly at the start of training.
    Without it, a checkpoint from a neuron phase is refused with a `ConfigError`; one
    from a dendrite phase fails earlier, inside the Trainer, on the optimizer's groups."""
    _check_arguments(trainer)
    metric, config = resolve_metric(trainer.args, config, metric)
    tied = tied_linears(trainer.model)
    if tied:
        config = dataclasses.replace(config, exclude=(*config.exclude, *tied))
    if not dendritic_layers(trainer.model):
        add_dendrites(trainer.model, config)
    resume_state = None
    if resume_from_checkpoint is None:  # scripts pass it through the arguments
        resume_from_checkpoint = getattr(trainer.args, "resume_from_checkpoint", None)
    if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
        resume_state = _resume_state(trainer, config, resume_from_checkpoint)
        Perforator.restore_model(trainer.model, resume_state)
    callback = PerforateTrainerCallback(
        trainer, config, metric=metric, seed=seed, resume_state=resume_state
    )
    trainer.add_callback(callback)
    return callback


def _check_arguments(trainer: Trainer) -> None:
    """Refuse Trainer settings the controller cannot work with, before wrapping."""
    args = trainer.args
    if getattr(trainer, "model_init", None) is not None:
        raise ConfigError(
            "attach does not support a Trainer with model_init (hyperparameter search): each "
            "trial builds a fresh, unwrapped model"
        )
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        raise ConfigError(
            "the Trainer never evaluates (eval_strategy='no'), so the controller would never "
            "see a score: set eval_strategy='epoch' or 'steps' in the TrainingArguments"
        )
    if getattr(args, "load_best_model_at_end", False):
        raise ConfigError(
            "load_best_model_at_end=True would load a checkpoint over the model the "
            "controller restores at the end (possibly one with other dendrites): set it to "
            "False; the controller keeps the best state itself"
        )


def _resume_state(trainer: Trainer, config: DendriteConfig, folder: Any) -> dict[str, Any]:
    """The controller state saved in a checkpoint folder (True: the last one), checked
    against this model and config before anything in the model changes."""
    if folder is True:
        out = Path(trainer.args.output_dir)
        folder = get_last_checkpoint(str(out)) if out.is_dir() else None
        if folder is None:
            raise CheckpointError(f"no checkpoint in {str(out)!r} to resume from")
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: the checkpoint was not written by a run with perforate's "
            "callback attached, or the run stopped between the Trainer's save and perforate's"
        )
    state = training_state.load(path)["controller"]
    problems = layer_set_mismatches(dendritic_layers(trainer.model), state.get("layers", {}))
    problems += [f"setting {d}" for d in config.differences(state.get("config", {}))]
    if problems:
        raise CheckpointMismatchError(
            f"{path} does not match this model and config; nothing was changed:\n  - "
            + "\n  - ".join(problems)
        )
    return state


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write `model.config` (HF's config.json) and the grown model (structure and weights,
    one atomic safetensors file) to `directory`; returns the weights' path.

    Refused inside a dendrite phase: the candidates are not part of the model; save after
    the phase (or use the training checkpoints to resume a run)."""
    layers = dendritic_layers(model)
    busy = [n for n, layer in layers.items() if layer.phase == Phase.DENDRITE]
    if busy:
        raise PhaseError(
            f"layers {busy} are in a dendrite phase: save_pretrained writes a finished "
            "model; save after the phase ends or write a training checkpoint"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save(model, out / WEIGHTS_NAME)
    return out / WEIGHTS_NAME


def from_pretrained(model_class: type, directory: str | os.PathLike, **config_kwargs: Any):
    """The model `save_pretrained` wrote: built from its config (`config_kwargs` override
    config fields), dendrites rebuilt, weights loaded bit for bit, in eval mode."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: `from_pretrained` reads what perforate's `save_pretrained` "
            "wrote; a directory from HF's own save_pretrained holds no dendrite structure"
        )
    config = model_class.config_class.from_pretrained(directory, **config_kwargs)
    model = model_class(config)
    load(model, path)
    return model.eval()
