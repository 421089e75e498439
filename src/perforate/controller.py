"""The phase controller: the state machine of Perforated Backpropagation.

The user's loop stays theirs:

    ctl = Perforator(model, config, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    while not ctl.done:
        train_one_epoch(model, ctl.optimizer)
        ctl.end_epoch(validation_score)

States: NEURON (the network trains) -> DENDRITE (candidates train, the rest is frozen) ->
NEURON ... -> DONE. The controller decides only the transitions; each other job is an
object it holds, and each saves itself:

    switching   when a phase ends, budgets   (switching.py: budget, patience, fixed)
    rule        what a new cycle does        (rules.py: correlation, GD, restart)
    optimizers  optimizer, scheduler, DDP    (optimizers.py)
    freeze      what a dendrite phase stops  (trainability.py)
    snapshots   best and accepted states     (snapshots.py)
    history     one record per evaluation    (events.py)

`end_epoch` costs a few tensor reductions; nothing is written unless `checkpoint_path`
is set (training_state.py turns `state_dict()` into a file).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed, files, training_state
from .accounting import parameter_report, step_cost
from .checkpoint import layer_set_mismatches, tensor_mismatches
from .config import STRUCTURAL_SETTINGS, DendriteConfig
from .convert import add_dendrites, dendritic_layers, remove_dendrites
from .errors import CheckpointError, CheckpointMismatchError, ConfigError, PhaseError, ScoreError
from .events import EpochRecord, Event, History
from .layers import DendriticLayer, Phase, is_sized_on_load
from .optimizers import OptimizerFactory, OptimizerOwner, SchedulerFactory
from .rules import TrainingRule, resolve_rule
from .snapshots import Snapshot
from .switching import DirectionCheck, Improvement, Switching, resolve_switching
from .trainability import OutsideFreeze
from .validation import is_count, phase_state_problems

STATE_VERSION = 2
log = logging.getLogger(__name__)


def _placement(model: nn.Module, layers: dict[str, DendriticLayer]) -> list[tuple]:
    """(parent, key, child) for every link on the paths from `model` to `layers`, each
    once: the layers are where they were while every link still holds."""
    links: dict[tuple[int, str], tuple[nn.Module, str, nn.Module]] = {}
    for name in layers:
        parent = model
        for key in name.split("."):
            child = parent._modules[key]
            links[(id(parent), key)] = (parent, key, child)
            parent = child
    return list(links.values())


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
        rule: a `TrainingRule` object; default: the one `config.method` names.
        switching: a `Switching` policy; default: the one `config.switch_mode` names.
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
        rule: TrainingRule | None = None,
        switching: Switching | None = None,
    ) -> None:
        seed = _checked_seed(seed)  # before anything changes the model
        self.optimizers = OptimizerOwner(optimizer, candidate_optimizer, scheduler, wrapper)
        if not is_count(checkpoint_every, 1):
            raise ConfigError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
        if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
            raise ConfigError(
                "checkpoint_path must be a str or os.PathLike (a file path such as "
                f"runs/x/ckpt.safetensors), got {type(checkpoint_path).__name__}"
            )
        if checkpoint_path is not None and Path(checkpoint_path).is_dir():
            raise ConfigError(
                f"checkpoint_path {str(checkpoint_path)!r} is a directory; give "
                "a file path such as runs/x/ckpt.safetensors"
            )
        existing = dendritic_layers(model)
        _refuse_a_busy_owner(existing)
        if existing:
            config = _adopt_config(existing, config)
        self.config = config if config is not None else DendriteConfig()
        if not existing:
            add_dendrites(model, self.config)
        self.model = model
        self.layers: dict[str, DendriticLayer] = dendritic_layers(model)
        self._placement = _placement(model, self.layers)
        self.rule = rule if rule is not None else resolve_rule(self.config)
        self.rule.bind(model, self.layers)
        self.switching = switching if switching is not None else resolve_switching(self.config)
        self.improvement = Improvement.from_config(self.config)
        self.direction_check = DirectionCheck(self.improvement, self.config.direction)
        self.freeze = OutsideFreeze(model, self.layers)
        self.recorder = History()
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        self.resumed_from: Path | None = None  # the file `resume` read (path or its .prev)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed if seed is not None else torch.initial_seed())
        self.phase = Phase.NEURON
        self.epoch = 0
        self.steps = 0
        self.cycle = 0
        self.retries = 0
        self._best: Snapshot | None = None  # best state within the current cycle
        self._accepted: Snapshot | None = None  # best state of the last accepted cycle
        # A dendrite phase judged inside end_step: steps since the last judgement, whether
        # the loop calls end_step, and a verdict to act on at the next end_epoch.
        self._window = {"steps": 0, "stepping": False, "install_due": False, "correlation": {}}
        self._undo_point: dict[str, Any] | None = None  # inside end_epoch: how to roll back
        self.group = distributed.resolve_group(process_group)
        self.world_size = distributed.world_size(self.group)
        self.rank = distributed.rank(self.group)
        for layer in self.layers.values():
            layer.share_statistics(distributed.sum_reducer(self.group), self.world_size)
            if layer.phase == Phase.NEURON:
                layer.start_neuron_phase(self.rule.dendrite_inputs_train)
        self._build_optimizer()
        self._claim()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy.deepcopy(ctl): the copy holds its own model and optimizer and drives them.
        self.__dict__.update(state)
        self._claim()

    # --- public state ------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase == Phase.DONE

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer to step now (rebuilt at every restructure: never keep it)."""
        return self.optimizers.optimizer

    @property
    def scheduler(self) -> Any:
        return self.optimizers.scheduler

    @property
    def wrapped(self) -> nn.Module:
        """The model under `wrapper` (the model itself without one): train with this."""
        return self.optimizers.wrapped

    @property
    def history(self) -> list[EpochRecord]:
        return self.recorder.records

    @property
    def best_score(self) -> float | None:
        """The best score seen so far: of the accepted state or of the cycle in flight."""
        scores = [s.score for s in (self._accepted, self._best) if s is not None]
        return self.improvement.best(scores) if scores else None

    @property
    def dendrites_kept(self) -> int:
        """Dendrites installed in the model now, all layers (0: a plain network)."""
        return sum(int(layer.dendrite_count.sum()) for layer in self.layers.values())

    def dendrite_counts(self) -> dict[str, list[int]]:
        return {n: layer.dendrite_count.tolist() for n, layer in self.layers.items()}

    def parameters_in_use(self) -> Iterable[nn.Parameter]:
        """Parameters the current optimizer updates."""
        for group in self.optimizer.param_groups:
            yield from group["params"]

    # --- the loop's calls ----------------------------------------------------------------
    def end_step(self) -> bool:
        """Count one training step; True when the loop should evaluate and call
        `end_epoch` now, before the epoch is over.

        That is every `steps_per_evaluation` steps (when > 0), and in a dendrite phase as
        soon as the switching policy finds the candidates settled (judged every
        `switching.check_steps` steps, a few tensor reductions). A loop that never calls
        it still works: phases are then judged at every `end_epoch`.
        """
        if self.done:
            raise PhaseError("training is done (ctl.done is True)")
        self._check_owner(quick=True)
        self.steps += 1
        window = self._window
        window["stepping"] = True
        every = self.switching.check_steps
        if self.phase == Phase.DENDRITE and every > 0 and not window["install_due"]:
            window["steps"] += 1
            if window["steps"] >= every:
                window["install_due"] = self._judge_candidates()
        n = self.config.steps_per_evaluation
        return window["install_due"] or (n > 0 and self.steps % n == 0)

    def end_epoch(self, score: float) -> Event:
        """Report the validation score of the epoch just trained; returns what happened.

        All or nothing: when anything raises (a checkpoint that cannot be written, a
        scheduler stepped past its end), the controller and the model are as they were
        before the call, so the same call can be made again once the cause is fixed."""
        if self.done:
            raise PhaseError("training is done (ctl.done is True); stop calling end_epoch")
        self._check_owner()
        score = self._checked_score(score)
        if self.optimizers.steps_since_evaluation == 0:
            self._no_steps()
        self._check_checkpoint_target()
        self._undo_point = self._mark()
        try:
            return self._end_epoch(score)
        except BaseException:
            self._undo(self._undo_point)
            raise
        finally:
            self._undo_point = None

    def _end_epoch(self, score: float) -> Event:
        steps = self.optimizers.take_steps()
        self.epoch += 1
        self.switching.spend(steps * self._step_cost())
        phase, cycle, lr = self.phase, self.cycle, self.optimizers.current_lr()
        correlation: dict[str, float] = {}
        if phase == Phase.NEURON:
            event = self._neuron_epoch(score)
        else:
            event = self._dendrite_epoch()
            correlation = self._window["correlation"]
        self._window["stepping"] = False
        if event != Event.DONE and self.epoch >= self.config.max_epochs:  # any event
            log.info("max_epochs=%d reached: the run ends", self.config.max_epochs)
            event = self._finish_by_cap()
        self._record(score, phase, cycle, lr, event, correlation)
        if event == Event.CONTINUE:
            self._step_scheduler(score)
        if self.checkpoint_path is not None and (
            self.epoch % self.checkpoint_every == 0 or self.done
        ):
            self.save_checkpoint(self.checkpoint_path)
        self.optimizers.note_versions()  # after this evaluation's restores and installs
        return event

    def _no_steps(self) -> None:
        """No step counted since the last evaluation: say why, or go on when a GradScaler
        skipped them all (non-finite gradients: the model is unchanged, the score valid)."""
        reason = self.optimizers.no_steps_reason()
        if reason == "skipped":
            log.warning(
                "epoch %d: no optimizer step took effect since the last evaluation: every "
                "step was skipped on non-finite gradients (a GradScaler does so while it "
                "lowers its scale; a loss that is inf or NaN does it every time); the "
                "epoch counts, with the model unchanged",
                self.epoch + 1,
            )
            return
        if reason == "elsewhere":
            raise PhaseError(
                "end_epoch was called without any ctl.optimizer.step() since the last call, "
                "yet the parameters changed: an optimizer made elsewhere stepped them. Step "
                "the optimizer the controller owns (ctl.optimizer, rebuilt at every "
                "restructure), not one made elsewhere"
            )
        raise PhaseError(
            "end_epoch was called without any ctl.optimizer.step() since the last call: "
            "train between evaluations, and step the optimizer the controller owns "
            "(ctl.optimizer, rebuilt at every restructure), not one made elsewhere. Under "
            "AMP, a GradScaler skips the steps whose gradients are inf "
            "or NaN: if it skipped them all, keep the gradients until end_epoch (zero them "
            "before backward, not after the step) so the controller can tell"
        )

    def _step_scheduler(self, score: float) -> None:
        try:
            self.optimizers.step_scheduler(score)
        except Exception as exc:
            raise ConfigError(
                f"the scheduler raised at end_epoch ({type(exc).__name__}: {exc}); the epoch "
                "was not counted and nothing changed. The controller rebuilds the scheduler "
                "at every restructure and steps it once per end_epoch of a phase: a schedule "
                "of fixed length (OneCycleLR's total_steps) must cover the longest phase "
                "(max_epochs), or use one without an end"
            ) from exc

    # --- all or nothing ------------------------------------------------------------------
    def _check_checkpoint_target(self) -> None:
        """Refuse, before anything changes, a checkpoint path that cannot be written."""
        if self.checkpoint_path is None or self.rank != 0:
            return
        path = Path(self.checkpoint_path)
        problem = None
        if path.is_dir():
            problem = "it is a directory"
        else:
            folder = path.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent  # missing folders are created on writing
            if not folder.is_dir():
                problem = f"{str(folder)!r} is a file, not a folder"
            elif not os.access(folder, os.W_OK | os.X_OK):
                problem = f"the folder {str(folder)!r} is not writable"
        if problem is not None:
            raise CheckpointError(
                f"cannot write the checkpoint {str(path)!r}: {problem}. Nothing changed: fix "
                "it (or set ctl.checkpoint_path) and call end_epoch again"
            )
        files.check_file_name(path, keep_previous=True)

    def _mark(self) -> dict[str, Any]:
        """What `_undo` needs to put the controller back as it is now; cheap (no model copy:
        a restructure takes one in `_before_restructure`)."""
        return {
            "values": {
                k: getattr(self, k)
                for k in ("phase", "epoch", "steps", "cycle", "retries", "_best", "_accepted")
            },
            "window": {**self._window, "correlation": dict(self._window["correlation"])},
            "switching": copy.deepcopy(self.switching.state_dict()),
            "direction_check": self.direction_check.state_dict(),
            "history": self.recorder.mark(),
            "optimizers": self.optimizers.mark(),
            "stats": {
                n: layer.candidates.statistics_state_dict()
                for n, layer in self.layers.items()
                if layer.candidates is not None
            },
            "generator": self._generator.get_state(),
            "state": None,
        }

    def _before_restructure(self) -> None:
        """The model is about to change (weights restored, candidates installed or
        attached): inside end_epoch, keep the whole state once, to roll back to."""
        point = self._undo_point
        if point is not None and point["state"] is None:
            state = self.state_dict()
            for key in ("model", "layers"):
                state[key] = _detached(state[key])
            point["state"] = state

    def _undo(self, point: dict[str, Any]) -> None:
        if point["state"] is not None:
            self._apply_state(point["state"])
        for k, v in point["values"].items():
            setattr(self, k, v)
        self._window = point["window"]
        self.switching.load_state_dict(point["switching"])
        self.direction_check.load_state_dict(point["direction_check"])
        self.recorder.undo(point["history"])
        self.optimizers.undo(point["optimizers"])
        for name, stats in point["stats"].items():
            if self.layers[name].candidates is not None:
                self.layers[name].candidates.load_statistics_state_dict(stats)
        self._generator.set_state(point["generator"])

    def _checked_score(self, score: Any) -> float:
        if not isinstance(score, torch.Tensor) and hasattr(score, "__array__"):
            # A numpy scalar or array: judged as the tensor it converts to.
            try:
                score = torch.as_tensor(score)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ScoreError(f"score must be a real number, got {score!r}") from exc
        if isinstance(score, (bool, str, bytes)) or (
            isinstance(score, torch.Tensor) and score.dtype == torch.bool
        ):
            raise ScoreError(f"score must be a real number, got {type(score).__name__} {score!r}")
        if isinstance(score, torch.Tensor):
            if score.numel() != 1:
                raise ScoreError(
                    f"score must be one number, got a tensor of shape {tuple(score.shape)}"
                )
            score = score.item()
        try:
            score = float(score)
        except OverflowError as exc:
            raise ScoreError(  # no repr: an int of over 4300 digits refuses one
                "score is an integer too large for a float (over 1.8e308); pass the metric"
            ) from exc
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
        return score

    # --- transitions ---------------------------------------------------------------------
    def _neuron_epoch(self, score: float) -> Event:
        if self._accepted is None:
            self.direction_check.add(score)
        if self._best is None or self.improvement.better(score, self._best.score, margin=False):
            self._best = Snapshot.take(self.model, score)
        if self.switching.neuron_epoch(score):
            return self._end_neuron_phase()
        return Event.CONTINUE

    def _cycle_improved(self) -> bool:
        if self._accepted is None:
            return True  # the first neuron phase has nothing to beat
        return self.improvement.better(self._best.score, self._accepted.score)

    def _end_neuron_phase(self) -> Event:
        self._before_restructure()
        if self._accepted is None:
            self.direction_check.check()
        if self._cycle_improved():
            self._accepted = self._best
            self.retries = 0
            log.info(
                "epoch %d: cycle %d accepted (best score %.6g, %d dendrites)",
                self.epoch,
                self.cycle,
                self._accepted.score,
                self.dendrites_kept,
            )
        else:
            self.retries += 1
            log.info(
                "epoch %d: cycle %d did not beat %.6g; back to the accepted state (retry %d)",
                self.epoch,
                self.cycle,
                self._accepted.score,
                self.retries,
            )
        self._best = None
        self._accepted.restore(self.model)
        ending = (
            f"{self.retries} cycles in a row did not improve (max_retries="
            f"{self.config.max_retries})"
            if self.retries > self.config.max_retries
            else f"max_cycles={self.config.max_cycles} reached"
            if self.cycle >= self.config.max_cycles
            else "no neuron can take another dendrite (max_dendrites)"
            if not self.rule.can_grow(self.layers)
            else None
        )
        if ending is not None:
            log.info("epoch %d: the run ends: %s", self.epoch, ending)
            return self._finish()
        if self.switching.exhausted():  # a cycle once started runs to its own end
            log.info("the switching policy's cost budget is spent: no new cycle, the run ends")
            return self._finish()
        flags = self.freeze.record()  # before any layer freezes its unit (tied weights)
        event = self.rule.next_cycle(self.layers, self._generator)
        if event == Event.DENDRITE_PHASE:
            self._start_dendrite_phase(flags)
        else:
            self._start_neuron_phase()
        return Event.RETRY if self.retries > 0 else event

    def _start_neuron_phase(self) -> None:
        self.phase = Phase.NEURON
        self.cycle += 1
        self.switching.start_neuron_phase(self._accepted.score)
        self._build_optimizer()

    def _start_dendrite_phase(self, flags: dict[str, bool]) -> None:
        log.info(
            "epoch %d: dendrite phase of cycle %d: candidates attached", self.epoch, self.cycle
        )
        self.freeze.freeze(flags)
        self.phase = Phase.DENDRITE
        self.switching.start_dendrite_phase()
        self._window.update(steps=0, install_due=False, correlation={})
        self._build_optimizer()

    def _step_cost(self) -> float:
        return step_cost(
            self.layers, self.phase == Phase.DENDRITE, self.config.candidates_per_neuron
        )

    def _correlations(self) -> dict[str, float]:
        out = {}
        empty = [n for n, layer in self.layers.items() if _gathered_nothing(layer)]
        for name, layer in self.layers.items():
            stats = layer.stats
            if stats is None:
                raise PhaseError(
                    f"layer {name!r} has no candidates in this dendrite phase: the model was "
                    "changed (re-wrapped, loaded or its phase set by hand) since the phase "
                    "began; resume from a checkpoint or start a new Perforator"
                )
            if float(stats.count) == 0 and stats.skipped_batches:
                raise PhaseError(
                    f"every batch of this dendrite epoch ({stats.skipped_batches}) had a "
                    f"non-finite error at layer {name!r}: the loss is NaN or inf; check the "
                    "data and the learning rate, or resume from a checkpoint"
                )
            if empty:
                raise PhaseError(_no_statistics_message(empty, len(self.layers)))
            out[name] = layer.candidates.best_correlation()
            self.recorder.note_skipped(stats.skipped_batches)
        return out

    def _judge_candidates(self) -> bool:
        """Ask the policy about the statistics since the last judgement; True: install.
        Otherwise the statistics restart, so each judgement sees one window."""
        correlation = self._correlations()
        self._window.update(steps=0, correlation=correlation)
        samples = min(int(layer.stats.count) for layer in self.layers.values())
        mean = sum(correlation.values()) / len(correlation)
        if self.switching.dendrite_epoch(mean, samples):
            return True
        for layer in self.layers.values():
            layer.stats.reset()
        return False

    def _dendrite_epoch(self) -> Event:
        window = self._window
        if not window["install_due"]:
            every = self.switching.check_steps
            partial = every > 0 and window["stepping"] and window["steps"] < max(1, every // 2)
            # A window cut short by the epoch's end is judged at end_epoch if it has half
            # its steps (small data sets: epochs shorter than a window), otherwise it goes
            # on into the next epoch (always when end_step judged the last step); a loop
            # that never calls end_step has its dendrite phase judged once per epoch.
            if partial or not self._judge_candidates():
                return Event.CONTINUE
        window["install_due"] = False
        # Undo what the dendrite phase changed outside the candidates (norm running stats).
        self._before_restructure()
        self._accepted.restore(self.model)
        summary = self.rule.install(self.layers)
        self.freeze.unfreeze()  # after the layers' own restore, which a tied weight fools
        self.recorder.note_install(summary)
        log.info(
            "epoch %d: installed %d dendrites (%s)",
            self.epoch,
            sum(int(v.get("installed", 0)) for v in summary.values()),
            ", ".join(f"{n}: {int(v.get('installed', 0))}" for n, v in summary.items()) or "none",
        )
        if not summary:
            return self._finish()
        self._start_neuron_phase()
        return Event.INSTALLED

    def finish(self) -> Event:
        """End the run now, as `max_epochs` would: for loops stopped from outside (a
        framework's epoch or step limit). A dendrite phase in flight is dropped, and the
        model is restored to the best state seen (the neuron phase in flight counts if it
        beat the accepted one), so the model is never the last epoch's by accident."""
        if self.done:
            return Event.DONE
        self._check_owner()
        if self._accepted is None and self._best is None:
            raise PhaseError(
                "finish() before any end_epoch: there is no evaluated state to keep; "
                "report at least one validation score first"
            )
        log.info("the run was ended from outside in a %s phase", self.phase.value)
        event = self._finish_by_cap()
        if self.checkpoint_path is not None:
            self.save_checkpoint(self.checkpoint_path)
        return event

    def _finish_by_cap(self) -> Event:
        if self.phase == Phase.NEURON and self._best is not None and self._cycle_improved():
            self._accepted = self._best
        return self._finish()

    def _finish(self) -> Event:
        self._before_restructure()
        grew = self.rule.grows and (self.cycle > 0 or self.phase == Phase.DENDRITE)
        if self.phase == Phase.DENDRITE:
            for layer in self.layers.values():
                layer.start_neuron_phase()
            self.freeze.unfreeze()
        self._accepted.restore(self.model)
        self.phase = Phase.DONE
        check = self.direction_check
        if self.cycle == 0 and not check.checked:  # the run ends inside its first phase
            check.check()
        note = check.closing_note(self._accepted.score)
        if grew and self.dendrites_kept == 0:
            log.warning(
                "the run ended with no dendrites (ctl.dendrites_kept == 0), and %s",
                note
                or "no cycle with dendrites beat the best score without them, so the model "
                "is the plain network's best state",
            )
        elif note is not None:
            log.warning("the run ended; %s", note)
        return Event.DONE

    # --- helpers -------------------------------------------------------------------------
    def _claim(self) -> None:
        """Mark this controller as the one that drives its layers (a later one takes over)."""
        me = weakref.ref(self)
        for layer in self.layers.values():
            _OWNERS[layer] = me

    def _check_owner(self, quick: bool = False) -> None:
        """Refuse to go on once another controller took the layers over (`quick`: look at
        one layer only, for end_step; end_epoch looks at them all)."""
        layers = list(self.layers.values())[:1] if quick else self.layers.values()
        if any(_owner(layer) is not self for layer in layers):
            raise PhaseError(
                "another Perforator was created on this model after this one and drives its "
                "layers now: two controllers used in turn would each count and freeze part "
                "of the run. Use the newer one only (or build a fresh model for a second run)"
            )
        self._check_layers_in_place()

    def _check_layers_in_place(self) -> None:
        """Refuse, before anything changes, when a layer this controller drives is no
        longer where it was in the model (replaced by the user): its snapshots, rollbacks
        and optimizer would act on a module the model no longer runs."""
        # Every step: one dict lookup per link from the model down to each layer (about
        # 5 us for 50 layers, against 220 us for get_submodule by name).
        if all(parent._modules.get(key) is child for parent, key, child in self._placement):
            return
        gone = []
        for name, layer in self.layers.items():
            try:
                current = self.model.get_submodule(name)
            except AttributeError:
                current = None
            if current is not layer:
                gone.append(f"{name!r} (now {type(current).__name__})")
        if gone:
            raise PhaseError(
                f"the model's dendritic layer(s) {', '.join(gone)} were replaced after this "
                "Perforator was created; it cannot snapshot or roll back a model whose layers "
                "it no longer holds. Put the DendriticLayer back, or change the model before "
                "creating the Perforator"
            )
        # A container was replaced by one holding the same layers: they are still in place.
        self._placement = _placement(self.model, self.layers)

    def _build_optimizer(self) -> None:
        if self.phase == Phase.DENDRITE:
            params = [p for layer in self.layers.values() for p in layer.candidate_parameters()]
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]  # deduplicated
        self.optimizers.build(self.model, params, candidates=self.phase == Phase.DENDRITE)

    def _record(
        self,
        score: float,
        phase: Phase,
        cycle: int,
        lr: float | None,
        event: Event,
        correlation: dict[str, float],
    ) -> None:
        report = parameter_report(self.model)
        best = self.best_score
        self.recorder.record(
            epoch=self.epoch,
            cycle=cycle,
            phase=phase.value,
            score=score,
            best_score=best if best is not None else score,
            event=event.value,
            dendrites=sum(r.dendrites for r in report.layers),
            base_params=report.base,
            dendrite_params=report.dendrite,
            correlation=correlation,
            lr=lr,
        )

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything `load_state_dict` needs to continue exactly: model (with candidates),
        phase states, counters, snapshots, policies, optimizer, history, generator."""
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "rule": self.rule.name,
            "phase": self.phase.value,
            "epoch": self.epoch,
            "steps": self.steps,
            "cycle": self.cycle,
            "retries": self.retries,
            "model": self.model.state_dict(),
            "requires_grad": {n: p.requires_grad for n, p in self.model.named_parameters()},
            "layers": {n: layer.phase_state_dict() for n, layer in self.layers.items()},
            "best": None if self._best is None else self._best.state_dict(),
            "accepted": None if self._accepted is None else self._accepted.state_dict(),
            "switching": self.switching.state_dict(),
            "window": dict(self._window),
            "direction_check": self.direction_check.state_dict(),
            "freeze": self.freeze.state_dict(),
            "optimizers": self.optimizers.state_dict(),
            "history": self.recorder.state_dict(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`. The model must have the same architecture and
        config: every difference, and any malformed or inconsistent value, raises
        `CheckpointMismatchError` / `CheckpointError` with the model and the controller
        exactly as they were."""
        try:
            self._check_compatible(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"malformed controller state ({type(exc).__name__}: {exc})"
            ) from exc
        backup = _detached(self.state_dict())
        try:
            self._apply_state(state)
        except Exception as exc:
            self._apply_state(backup)
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointMismatchError(
                f"the checkpoint could not be applied ({type(exc).__name__}: {exc}); the "
                "model and the controller are unchanged"
            ) from exc

    @staticmethod
    def restore_model(model: nn.Module, state: dict[str, Any]) -> None:
        """Put the model part of a `state_dict()` into `model` (wrapped with the same
        config): every layer's phase and pool, the weights, and which parameters train.

        For frameworks that build their optimizer before the controller exists (the
        Hugging Face Trainer): after this, an optimizer over the parameters that require
        grad matches the one the state was saved with. `load_state_dict` does the rest."""
        layers = dendritic_layers(model)
        for name, layer_state in state["layers"].items():
            layers[name].load_phase_state_dict(layer_state)
        model.load_state_dict(state["model"], strict=True)
        params = dict(model.named_parameters())
        for n, flag in state["requires_grad"].items():
            params[n].requires_grad_(bool(flag))

    def _apply_state(self, state: dict[str, Any]) -> None:
        self.restore_model(self.model, state)
        self.phase = Phase(state["phase"])
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.cycle, self.retries = int(state["cycle"]), int(state["retries"])
        self._best = Snapshot.from_state_dict(state["best"])
        self._accepted = Snapshot.from_state_dict(state["accepted"])
        self.switching.load_state_dict(state["switching"])
        window = state.get("window", {})  # absent in files written before 0.3
        self._window = {
            "steps": int(window.get("steps", 0)),
            "stepping": bool(window.get("stepping", False)),
            "install_due": bool(window.get("install_due", False)),
            "correlation": {str(k): float(v) for k, v in window.get("correlation", {}).items()},
        }
        self.direction_check.load_state_dict(state["direction_check"])
        self.freeze.load_state_dict(state["freeze"])
        self.recorder.load_state_dict(state["history"])
        self._build_optimizer()
        if not self.done:  # a finished run's optimizer (of its last phase) is not needed
            self.optimizers.load_state_dict(state["optimizers"])
        self._generator.set_state(state["generator"])

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise CheckpointError(
                f"controller state version {version!r}; this perforate "
                f"reads version {STATE_VERSION}"
            )
        problems = [f"setting {d}" for d in self.config.differences(state["config"])]
        if state["rule"] != self.rule.name:
            problems.append(f"training rule {self.rule.name!r} here, {state['rule']!r} saved")
        model = state["model"]
        problems += layer_set_mismatches(self.layers, state["layers"])
        problems += tensor_mismatches(self.model, model)
        for name, layer in self.layers.items():
            if name in state["layers"]:
                problems += phase_state_problems(name, layer, state["layers"][name], model)
        if state["phase"] not in {Phase.NEURON.value, Phase.DENDRITE.value, Phase.DONE.value}:
            problems.append(f"unknown controller phase {state['phase']!r}")
        counters = [state[k] for k in ("epoch", "steps", "cycle", "retries")]
        if not all(is_count(v) for v in counters):
            problems.append(f"counters must be non-negative integers, got {counters}")
        params = dict(self.model.named_parameters())
        unknown = [n for n in state["requires_grad"] if n not in params and not is_sized_on_load(n)]
        if unknown:
            problems.append(f"trainability saved for parameters not in the model: {unknown}")
        if state["phase"] != Phase.DONE.value:  # a finished run builds no optimizer again
            problems += self.optimizers.missing(state["optimizers"])
        if problems:
            raise CheckpointMismatchError(
                f"the checkpoint does not match this model ({len(problems)} difference(s)):"
                "\n  - " + "\n  - ".join(problems)
            )

    # --- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the full training state (call it at an epoch end) so `resume` continues
        exactly: this controller's `state_dict()` and the process RNG states."""
        path = Path(path)
        if self.rank == 0:
            training_state.save(
                path, {"controller": self.state_dict(), "rng": training_state.process_rng_state()}
            )
        distributed.barrier(self.group)
        return path

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        model: nn.Module,
        *,
        optimizer: OptimizerFactory,
        checkpoint_path: str | os.PathLike | None = None,
        **options: Any,
    ) -> Perforator:
        """Continue a run from `save_checkpoint`. `model` is freshly built, as at the start
        (plain, or wrapped with the same settings); the factories and other keyword
        arguments (`candidate_optimizer`, `scheduler`, `checkpoint_every`, `wrapper`,
        `process_group`, `rule`, `switching`) as at the start.

        Reads `path`, or its `.prev` when `path` is missing or damaged (logged). Checkpoints
        keep going to `path` unless `checkpoint_path` says otherwise. On any error the model
        is left as it was given."""
        if "config" in options or "seed" in options:
            raise TypeError(
                "resume takes the config and the candidate generator from the "
                "checkpoint; do not pass config or seed"
            )
        state, found = training_state.load_latest(path)
        try:
            config = DendriteConfig.from_dict(state["controller"]["config"])
        except ConfigError as exc:
            raise CheckpointError(f"{path}: saved config is invalid: {exc}") from exc
        was_wrapped = bool(dendritic_layers(model))
        before = _detached(model.state_dict())
        try:
            ctl = cls(
                model,
                config,
                optimizer=optimizer,
                checkpoint_path=path if checkpoint_path is None else checkpoint_path,
                **options,
            )
            ctl.load_state_dict(state["controller"])
            training_state.set_process_rng_state(state.get("rng"))
        except BaseException:
            if not was_wrapped and dendritic_layers(model):
                for layer in dendritic_layers(model).values():
                    if layer.phase == Phase.DENDRITE:  # remove_dendrites refuses that phase
                        layer.start_neuron_phase()
                remove_dendrites(model)
            model.load_state_dict(before)
            raise
        ctl.resumed_from = found
        return ctl


def _gathered_nothing(layer: DendriticLayer) -> bool:
    stats = layer.stats
    return stats is not None and float(stats.count) == 0 and not stats.skipped_batches


def _no_statistics_message(empty: list[str], total: int) -> str:
    causes = (
        "a layer's candidates learn only from the error that loss.backward() sends back "
        "to its output; likely causes: the layer is not used in forward (an unused head), "
        "it runs under torch.no_grad() (a frozen teacher), its output is detached "
        "before the loss, or every backward pass ran inside "
        "perforate.no_candidate_statistics()"
    )
    if len(empty) == total:
        return (
            f"no candidate statistics were gathered this epoch at any layer ({empty}): in a "
            "dendrite phase the loop must run forward passes with gradients enabled and "
            f"call loss.backward() before end_epoch; {causes}"
        )
    return (
        f"layers {empty} received no gradient this epoch ({total - len(empty)} other "
        f"layer(s) did), so their candidates cannot be judged: {causes}. Leave them out "
        "of the wrapping (DendriteConfig(exclude=[...]) with their names) or make the "
        "loss depend on them"
    )


# Which controller drives a dendritic layer: the last one built on it (weak: a dropped
# controller frees its layers).
_OWNERS: weakref.WeakKeyDictionary[DendriticLayer, weakref.ref[Perforator]] = (
    weakref.WeakKeyDictionary()
)


def _owner(layer: DendriticLayer) -> Perforator | None:
    ref = _OWNERS.get(layer)
    return None if ref is None else ref()


def _checked_seed(seed: Any) -> int | None:
    """`seed` as an int a torch generator takes (numpy integers included), or ConfigError."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise ConfigError(f"seed must be an integer or None, got {type(seed).__name__} {seed!r}")
    value = seed.__index__()
    if not -(2**63) <= value < 2**64:
        raise ConfigError(
            f"seed must lie in [-2**63, 2**64) (a 64-bit generator seed), got {value}"
        )
    return value


def _refuse_a_busy_owner(layers: dict[str, DendriticLayer]) -> None:
    """A second controller on a model whose controller is in a dendrite phase would see a
    neuron phase and never give back what the first one froze: refused. (One in a neuron
    phase, or finished, is taken over: the older one refuses to go on.)"""
    for layer in layers.values():
        owner = _owner(layer)
        if owner is not None and owner.phase == Phase.DENDRITE:
            raise PhaseError(
                f"the model is in a dendrite phase of another Perforator (epoch "
                f"{owner.epoch}, cycle {owner.cycle}): a second controller would report a "
                "neuron phase and leave frozen what the first one froze. Go on with the "
                "first one, end its phase with ctl.finish(), or resume a checkpoint into a "
                "freshly built model"
            )


def _adopt_config(
    layers: dict[str, DendriticLayer], config: DendriteConfig | None
) -> DendriteConfig:
    """Config for a model wrapped earlier: its own, or a new one that agrees on structure."""
    current = next(iter(layers.values())).config
    if config is None:
        return current
    clash = [f for f in STRUCTURAL_SETTINGS if getattr(config, f) != getattr(current, f)]
    if clash:
        raise ConfigError(
            f"the model was wrapped with different {', '.join(clash)} "
            f"({', '.join(f'{f}={getattr(current, f)!r}' for f in clash)}); pass the same "
            "values, or no config to reuse the model's own"
        )
    for layer in layers.values():
        layer.config = config
    return config


def _detached(state: Any) -> Any:
    """A deep copy of nested state whose tensors no longer share memory with the live ones."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _detached(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_detached(v) for v in state)
    return state
