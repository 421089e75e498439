"""The phase controller: when to switch, install, retry, stop, and restore the best.

The user's loop stays theirs:

    ctl = Perforator(model, config, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    while not ctl.done:
        train_one_epoch(model, ctl.optimizer)
        ctl.end_epoch(validation_score)

The controller owns the optimizer (built from the user's factory) and rebuilds it at every
restructure, so the loop never holds a stale one. It costs a few tensor reductions per
`end_epoch`; it writes nothing to disk.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .accounting import parameter_report
from .config import DendriteConfig
from .convert import add_dendrites, dendritic_layers
from .errors import ConfigError, PerforateError, PerforateWarning, PhaseError
from .layers import DendriticLayer, is_candidate_key

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ScoreError(PerforateError, ValueError):
    """A validation score passed to `end_epoch` is not a finite number."""


class Event(str, enum.Enum):
    """What `end_epoch` did."""

    CONTINUE = "continue"  # same phase goes on
    DENDRITE_PHASE = "dendrite_phase"  # neuron phase ended; candidates created
    INSTALLED = "installed"  # dendrites installed; a new neuron phase started
    RESTARTED = "restarted"  # restart control: best restored, fresh optimizer
    RETRY = "retry"  # cycle did not beat the best: restored it, fresh candidates
    DONE = "done"  # training is over; the model holds the best accepted state


class ControllerPhase(str, enum.Enum):
    NEURON = "neuron"
    DENDRITE = "dendrite"
    DONE = "done"


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
        return dict(self.__dict__)


@dataclass
class _Snapshot:
    score: float
    state: dict[str, torch.Tensor]


class Perforator:
    """Drives Perforated Backpropagation around the user's own training loop.

    Args:
        model: any nn.Module; wrapped with `add_dendrites(model, config)` unless it
            already holds dendritic layers.
        config: settings; `DendriteConfig()` if omitted.
        optimizer: factory `params -> Optimizer`, called at the start and at every
            restructure with the parameters that should train now.
        candidate_optimizer: factory for the dendrite phase; defaults to `optimizer`.
        scheduler: optional factory `optimizer -> scheduler`, rebuilt with the optimizer and
            stepped once per `end_epoch` (with the score, for ReduceLROnPlateau).
        seed: seeds candidate initialisation (a private generator; global RNG untouched).
        checkpoint_path: if given, the full training state is written there (atomically,
            the previous file kept as `.prev`) every `checkpoint_every` epochs; resume with
            `Perforator.resume`. Nothing is written otherwise.
        wrapper: e.g. `lambda m: DistributedDataParallel(m)`. Applied to the model now and
            again after every phase change or restructure (DDP registers only parameters
            that train at its construction); train with `ctl.wrapped`.
        process_group: under torch.distributed, the group whose processes share one run
            ("auto": the default group when initialised with more than one process; None:
            act alone). Candidate statistics and validation scores are reconciled over it.
    """

    def __init__(
        self,
        model: nn.Module,
        config: DendriteConfig | None = None,
        *,
        optimizer: OptimizerFactory,
        candidate_optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        seed: int | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        wrapper: Callable[[nn.Module], nn.Module] | None = None,
        process_group: Any = "auto",
    ) -> None:
        if not callable(optimizer):
            raise TypeError(
                "optimizer must be a factory, e.g. lambda params: torch.optim.Adam(params), "
                f"got {type(optimizer).__name__}; the controller rebuilds it at every restructure"
            )
        existing = dendritic_layers(model)
        if existing:
            config = _adopt_config(existing, config)
        self.config = config if config is not None else DendriteConfig()
        if not existing:
            add_dendrites(model, self.config)
        self.model = model
        self.layers: dict[str, DendriticLayer] = dendritic_layers(model)
        self._optimizer_factory = optimizer
        self._candidate_factory = candidate_optimizer or optimizer
        self._scheduler_factory = scheduler
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed if seed is not None else torch.initial_seed())
        self.phase = ControllerPhase.NEURON
        self.epoch = 0
        self.steps = 0
        self.cycle = 0
        self.retries = 0
        self.history: list[EpochRecord] = []
        self._maximize = self.config.direction == "maximize"
        self._best: _Snapshot | None = None  # best state within the current cycle
        self._accepted: _Snapshot | None = None  # best state of the last accepted cycle
        self._since_improvement = 0
        self._patience_ref: float | None = None
        self._phase_epochs = 0
        self._corr_best: float | None = None
        self._corr_since = 0
        self._frozen: dict[int, bool] = {}
        self._last_time = time.perf_counter()
        self._install_info: dict[str, dict[str, float]] = {}
        self._first_scores: list[float] = []
        self._skipped = 0
        self._steps_since_eval = 0
        if checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        self.optimizer: torch.optim.Optimizer
        self.scheduler: Any = None
        self._wrapper = wrapper
        self.wrapped: nn.Module = model
        self.group = distributed.resolve_group(process_group)
        self.world_size = distributed.world_size(self.group)
        self.rank = distributed.rank(self.group)
        for layer in self.layers.values():
            layer.reduce = distributed.sum_reducer(self.group)
            layer.world_size = self.world_size
        self._build_optimizer()

    # --- public state ------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase == ControllerPhase.DONE

    @property
    def best_score(self) -> float | None:
        """The best score seen so far: of the accepted state or of the cycle in flight."""
        scores = [s.score for s in (self._accepted, self._best) if s is not None]
        if not scores:
            return None
        return max(scores) if self._maximize else min(scores)

    def dendrite_counts(self) -> dict[str, list[int]]:
        return {n: layer.dendrite_count.tolist() for n, layer in self.layers.items()}

    # --- helpers -----------------------------------------------------------------------
    def _better(self, score: float, reference: float | None, margin: bool = True) -> bool:
        if reference is None:
            return True
        gap = max(self.config.improvement_rel * abs(reference), self.config.improvement_abs)
        if not margin:
            gap = 0.0
        return score > reference + gap if self._maximize else score < reference - gap

    def _trainable(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for p in self.model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def _build_optimizer(self) -> None:
        if self.phase == ControllerPhase.DENDRITE:
            params = [p for layer in self.layers.values() for p in layer.candidate_parameters()]
            self.optimizer = self._candidate_factory(params)
        else:
            params = self._trainable()
            if not params:
                raise PhaseError("no trainable parameter in the model: nothing to optimise")
            self.optimizer = self._optimizer_factory(params)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(self.optimizer).__name__}, "
                "not a torch.optim.Optimizer"
            )
        # Count steps on the innermost optimizer: wrappers (accelerate's, Lightning's) call
        # its step, and may not carry hooks of their own.
        inner = self.optimizer
        while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
            inner = inner.optimizer
        self._stepped_optimizer = inner
        inner.register_step_post_hook(self._count_step)
        if self._wrapper is not None:
            self.wrapped = self._wrapper(self.model)
        if self._scheduler_factory is not None:
            self.scheduler = self._scheduler_factory(self.optimizer)

    def _count_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer is self._stepped_optimizer:
            self._steps_since_eval += 1

    def _snapshot(self, score: float) -> _Snapshot:
        state = {
            k: v.detach().clone()
            for k, v in self.model.state_dict().items()
            if not is_candidate_key(k)
        }
        return _Snapshot(score, state)

    def _restore(self, snap: _Snapshot) -> None:
        result = self.model.load_state_dict(snap.state, strict=False)
        bad = [k for k in result.missing_keys if not is_candidate_key(k)]
        if bad or result.unexpected_keys:
            raise PhaseError(
                f"could not restore the best state: missing {bad}, "
                f"unexpected {result.unexpected_keys}"
            )

    def _freeze_outside_layers(self) -> None:
        """Freeze every parameter the dendritic layers do not manage themselves."""
        owned = {id(p) for layer in self.layers.values() for p in layer.parameters()}
        self._frozen = {}
        for p in self.model.parameters():
            if id(p) not in owned:
                self._frozen[id(p)] = p.requires_grad
                p.requires_grad_(False)

    def _unfreeze(self) -> None:
        for p in self.model.parameters():
            if id(p) in self._frozen:
                p.requires_grad_(self._frozen[id(p)])
        self._frozen = {}

    def _can_grow(self) -> bool:
        cap = self.config.max_dendrites
        return any(int(layer.dendrite_count.min()) < cap for layer in self.layers.values())

    def end_step(self) -> bool:
        """Count one training step; True when an evaluation (and `end_epoch`) is due.

        Needs `steps_per_evaluation > 0`: phases are then measured in steps, not epochs.
        """
        n = self.config.steps_per_evaluation
        if n == 0:
            raise PhaseError(
                "end_step needs steps_per_evaluation > 0 in the config; with 0, call "
                "end_epoch once per epoch instead"
            )
        if self.done:
            raise PhaseError("training is done (ctl.done is True)")
        self.steps += 1
        return self.steps % n == 0

    # --- the state machine ---------------------------------------------------------------
    def end_epoch(self, score: float) -> Event:
        """Report the validation score of the epoch just trained; returns what happened."""
        if self.done:
            raise PhaseError("training is done (ctl.done is True); stop calling end_epoch")
        if isinstance(score, torch.Tensor):
            if score.numel() != 1:
                raise ScoreError(f"score must be one number, got a tensor of shape "
                                 f"{tuple(score.shape)}")
            score = score.item()
        try:
            score = float(score)
        except (TypeError, ValueError) as exc:
            raise ScoreError(f"score must be a number, got {score!r}") from exc
        # Every process takes the same decision: on the mean of their scores (a NaN on one
        # process makes the mean NaN, so all of them raise below, none waits forever).
        score = distributed.mean_score(score, self.group)
        if not math.isfinite(score):
            raise ScoreError(
                f"validation score is {score}: the model or the metric produced a non-finite "
                "value; check the learning rate and the data, or resume from a checkpoint"
            )
        if self._steps_since_eval == 0:
            raise PhaseError(
                "end_epoch was called without any ctl.optimizer.step() since the last call: "
                "train between evaluations, and step the optimizer the controller owns "
                "(ctl.optimizer, rebuilt at every restructure), not one made elsewhere"
            )
        self._steps_since_eval = 0
        self.epoch += 1
        self._phase_epochs += 1
        phase, cycle, lr = self.phase, self.cycle, self._current_lr()
        correlation: dict[str, float] = {}
        if phase == ControllerPhase.NEURON:
            event = self._neuron_epoch(score)
        else:
            correlation = self._correlation_summary()
            event = self._dendrite_epoch(correlation)
        if event == Event.CONTINUE and self.epoch >= self.config.max_epochs:
            event = self._finish_by_cap()
        self._record(score, phase, cycle, lr, event, correlation)
        if self.scheduler is not None and event == Event.CONTINUE:
            self._step_scheduler(score)
        if self.checkpoint_path is not None and (
            self.epoch % self.checkpoint_every == 0 or self.done
        ):
            self.save_checkpoint(self.checkpoint_path)
        return event

    # --- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the full training state (call it at an epoch end) so `resume` continues
        exactly: model, candidates, snapshots, statistics, optimizer, scheduler, RNGs."""
        from .state import save_training

        path = Path(path)
        if self.rank == 0:
            save_training(self, path)
        distributed.barrier(self.group)
        return path

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        model: nn.Module,
        *,
        optimizer: OptimizerFactory,
        candidate_optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        wrapper: Callable[[nn.Module], nn.Module] | None = None,
        process_group: Any = "auto",
    ) -> Perforator:
        """Continue a run from `save_checkpoint`. `model` is freshly built, as at the start
        (plain, or wrapped with the same settings); factories as at the start."""
        from .state import config_of, read_training, restore_training

        header, tensors = read_training(path)
        ctl = cls(model, config_of(header), optimizer=optimizer,
                  candidate_optimizer=candidate_optimizer, scheduler=scheduler,
                  checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                  wrapper=wrapper, process_group=process_group)
        restore_training(ctl, header, tensors)
        return ctl

    def _step_scheduler(self, score: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score)
        else:
            self.scheduler.step()

    def _neuron_epoch(self, score: float) -> Event:
        if self._accepted is None:
            self._first_scores.append(score)
        if self._best is None or self._better(score, self._best.score, margin=False):
            self._best = self._snapshot(score)
        if self._better(score, self._patience_ref):
            self._patience_ref = score
            self._since_improvement = 0
        else:
            self._since_improvement += 1
        if self.config.switch_mode == "fixed":
            finished = self._phase_epochs >= self.config.fixed_neuron_epochs
        else:
            finished = self._since_improvement >= self.config.patience
        return self._end_neuron_phase() if finished else Event.CONTINUE

    def _check_direction(self, scores: list[float]) -> None:
        """Warn when every score of the first phase was worse than the one before it."""
        pairs = list(itertools.pairwise(scores))
        if len(scores) >= 3 and all(self._better(a, b, margin=False) for a, b in pairs):
            warnings.warn(
                f"every validation score of the first neuron phase was worse than the one "
                f"before it ({scores[0]:.4g} -> {scores[-1]:.4g}) with "
                f"direction={self.config.direction!r}; if the score is a loss, set "
                "direction='minimize' (an accuracy: 'maximize')",
                PerforateWarning,
                stacklevel=4,
            )

    def _cycle_improved(self) -> bool:
        if self._accepted is None:
            return True  # the first neuron phase has nothing to beat
        return self._better(self._best.score, self._accepted.score)

    def _end_neuron_phase(self) -> Event:
        if self._accepted is None:
            self._check_direction(self._first_scores)
        if self._cycle_improved():
            self._accepted = self._best
            self.retries = 0
        else:
            self.retries += 1
        self._best = None
        self._restore(self._accepted)
        out_of_cycles = self.cycle >= self.config.max_cycles
        if self.retries > self.config.max_retries or out_of_cycles or not self._can_grow():
            return self._finish()
        retry = self.retries > 0
        method = self.config.method
        if method == "restart":
            self._start_neuron_phase()
            return Event.RETRY if retry else Event.RESTARTED
        if method == "gd":
            self._install_untrained()
            return Event.RETRY if retry else Event.INSTALLED
        self._start_dendrite_phase()
        return Event.RETRY if retry else Event.DENDRITE_PHASE

    def _start_neuron_phase(self) -> None:
        self.phase = ControllerPhase.NEURON
        self.cycle += 1
        self._phase_epochs = 0
        self._since_improvement = 0
        self._patience_ref = self._accepted.score
        self._build_optimizer()

    def _start_dendrite_phase(self) -> None:
        for layer in self.layers.values():
            layer.start_dendrite_phase(generator=self._generator)
        self._freeze_outside_layers()
        self.phase = ControllerPhase.DENDRITE
        self._phase_epochs = 0
        self._corr_best = None
        self._corr_since = 0
        self._build_optimizer()

    def _correlation_summary(self) -> dict[str, float]:
        out = {}
        for name, layer in self.layers.items():
            stats = layer.stats
            if stats is None or float(stats.count) == 0:
                raise PhaseError(
                    "no candidate statistics were gathered this epoch: in a dendrite phase "
                    "the loop must run forward passes with gradients enabled and call "
                    "loss.backward() before end_epoch"
                )
            out[name] = float(stats.pearson().abs().max(0).values.mean())
            self._skipped += stats.skipped_batches
            stats.skipped_batches = 0
        return out

    def _dendrite_epoch(self, correlation: dict[str, float]) -> Event:
        mean_corr = sum(correlation.values()) / len(correlation)
        rel = self.config.dendrite_improvement_rel
        if self._corr_best is None or mean_corr > self._corr_best * (1 + rel):
            self._corr_best = mean_corr
            self._corr_since = 0
        else:
            self._corr_since += 1
        if self.config.switch_mode == "fixed":
            finished = self._phase_epochs >= self.config.fixed_dendrite_epochs
        else:
            finished = (self._corr_since >= self.config.dendrite_patience
                        or self._phase_epochs >= self.config.dendrite_max_epochs)
        if not finished:
            for layer in self.layers.values():
                layer.stats.reset()
            return Event.CONTINUE
        return self._install_best()

    def _install_best(self) -> Event:
        cfg = self.config
        choices, starts, means = {}, {}, {}
        for name, layer in self.layers.items():
            stats = layer.stats
            best = stats.score(cfg.objective).argmax(0)
            r = stats.pearson().gather(0, best[None]).squeeze(0)
            ok = (r.abs() >= cfg.install_threshold) & (layer.dendrite_count < cfg.max_dendrites)
            choices[name] = torch.where(ok.to(best.device), best, torch.full_like(best, -1))
            # A non-zero start points against the error: dL/dv = sum E a, so v0 takes the
            # sign opposite to the correlation of a with E (a first-order descent step).
            starts[name] = -torch.where(r >= 0, 1.0, -1.0) * cfg.output_weight_init
            means[name] = stats.mean_v
            picked = choices[name] >= 0
            if bool(picked.any()):
                idx = choices[name].clamp_min(0)[None]
                std = (stats.m_vv / stats.count).sqrt().gather(0, idx).squeeze(0)
                self._install_info[name] = {
                    "installed": int(picked.sum()),
                    "mean_abs_r": float(r.abs()[picked].mean()),
                    "mean_output_std": float(std[picked].mean()),
                }
        # Undo what the dendrite phase changed outside the candidates (norm running stats).
        self._restore(self._accepted)
        self._unfreeze()
        installed = 0
        for name, layer in self.layers.items():
            installed += layer.install(choices[name], output_weight=starts[name],
                                       activation_mean=means[name])
        if installed == 0:
            return self._finish()
        self._start_neuron_phase()
        return Event.INSTALLED

    def _install_untrained(self) -> None:
        cap = self.config.max_dendrites
        for layer in self.layers.values():
            layer.start_dendrite_phase(candidates=1, generator=self._generator, init="default")
            choice = torch.where(layer.dendrite_count < cap, 0, -1)
            layer.install(choice, output_weight=0.0)  # GD dendrites start silent
        self._start_neuron_phase()

    def _finish_by_cap(self) -> Event:
        neuron = self.phase == ControllerPhase.NEURON
        if neuron and self._best is not None and self._cycle_improved():
            self._accepted = self._best
        return self._finish()

    def _finish(self) -> Event:
        if self.phase == ControllerPhase.DENDRITE:
            for layer in self.layers.values():
                layer.start_neuron_phase()
            self._unfreeze()
        self._restore(self._accepted)
        self.phase = ControllerPhase.DONE
        return Event.DONE

    def _current_lr(self) -> float | None:
        groups = self.optimizer.param_groups
        return float(groups[0]["lr"]) if groups and "lr" in groups[0] else None

    def _record(self, score: float, phase: ControllerPhase, cycle: int, lr: float | None,
                event: Event, correlation: dict[str, float]) -> None:
        now = time.perf_counter()
        report = parameter_report(self.model)
        self.history.append(EpochRecord(
            epoch=self.epoch, cycle=cycle,
            phase=phase.value, score=score,
            best_score=self.best_score if self.best_score is not None else score,
            event=event.value, dendrites=sum(r.dendrites for r in report.layers),
            base_params=report.base, dendrite_params=report.dendrite,
            seconds=now - self._last_time, correlation=correlation, lr=lr,
            install=self._install_info, skipped_batches=self._skipped,
        ))
        self._install_info = {}
        self._skipped = 0
        self._last_time = now

    def parameters_in_use(self) -> Iterable[nn.Parameter]:
        """Parameters the current optimizer updates."""
        for group in self.optimizer.param_groups:
            yield from group["params"]


# Settings that fix the structure of wrapped layers; the rest may change between runs.
_STRUCTURAL = ("layer_types", "include", "exclude", "pair_norms", "skip_unsupported",
               "activation", "cascade")


def _adopt_config(layers: dict[str, DendriticLayer],
                  config: DendriteConfig | None) -> DendriteConfig:
    """Config for a model wrapped earlier: its own, or a new one that agrees on structure."""
    current = next(iter(layers.values())).config
    if config is None:
        return current
    clash = [f for f in _STRUCTURAL if getattr(config, f) != getattr(current, f)]
    if clash:
        raise ConfigError(
            f"the model was wrapped with different {', '.join(clash)} "
            f"({', '.join(f'{f}={getattr(current, f)!r}' for f in clash)}); pass the same "
            "values, or no config to reuse the model's own"
        )
    for layer in layers.values():
        layer.config = config
    return config
