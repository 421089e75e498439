"""One run: an arm on a seed, trained on the task until its controller is done.

A run is started fresh, resumed from its own checkpoint (written after every epoch, so a
killed run continues exactly), or forked: started from the checkpoint another arm of the
same seed left at the end of its first neuron phase, with this arm's settings. Forking is
exact because every arm of a chain would have trained that phase identically: same
weights, same batches (the process RNG is in the checkpoint), same stopping rule.

Per-epoch facts the controller does not keep (wall seconds, test scores for the
equal-time comparison) go to a small JSON beside the checkpoint, written before the
epoch's `end_epoch` and cut back to the checkpoint's epoch on resume.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import perforate
from perforate import DendriteConfig, Event, PerforateError, Perforator, training_state
from perforate.files import atomic_write
from perforate.rules import resolve_rule

from . import adapt
from .arms import Arm
from .task import SPLIT_NAMES, Task, TaskError, first_line

log = logging.getLogger(__name__)

OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}


class TrainingError(TaskError):
    """A run cannot go on: its loss or score became non-finite."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run's result."""

    arm: Arm
    seed: int
    config: DendriteConfig
    train: dict[str, Any]
    device: torch.device
    track_test: bool = False  # score the test split every epoch (equal-time comparison)


@dataclass(frozen=True)
class ForkPoint:
    """Where a chain's first arm left its first neuron phase: the checkpoint of the epoch
    before it ended, and that prefix's per-epoch log."""

    checkpoint: Path
    info: Path

    @property
    def ready(self) -> bool:
        return self.info.exists()


def optimizer_factories(train: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    cls = OPTIMIZERS[train.get("optimizer", "Adam")]
    lr = float(train.get("lr", 1e-3))
    cand_lr = float(train.get("candidate_lr", 5 * lr))
    extra = {"weight_decay": float(train["weight_decay"])} if "weight_decay" in train else {}
    return {
        "optimizer": _Factory(cls, lr, extra),
        "candidate_optimizer": _Factory(cls, cand_lr, extra),
    }


@dataclass(frozen=True)
class _Factory:
    """`params -> optimizer`, picklable (worker processes)."""

    cls: type
    lr: float
    extra: dict[str, Any]

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        return self.cls(params, lr=self.lr, **self.extra)


def autocast_for(spec: RunSpec) -> Callable[[], Any]:
    if spec.train.get("amp", "off") == "bf16":
        return lambda: torch.autocast(spec.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _link_or_copy(src: Path, dst: Path) -> None:
    """`dst` becomes a snapshot of `src` (a hard link: the next atomic write of `src`
    replaces its name, not this inode)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _read_log(path: Path) -> dict[str, list[float]]:
    if not path.exists():
        return {"seconds": [], "test": []}
    return json.loads(path.read_text())


def _write_log(path: Path, values: dict[str, list[float]]) -> None:
    """Replaced whole by rename, not fsynced: the checkpoint is the durable record, and a
    resume cuts this log back to it (or pads what a power cut lost with NaN)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


def fork_checkpoint(point: ForkPoint, config: DendriteConfig, rule_name: str, to: Path) -> None:
    """Write the fork point's training state as this arm's first checkpoint: the same
    state with this arm's settings (which agree on everything the prefix used)."""
    state, _ = training_state.load_latest(point.checkpoint)
    state["controller"]["config"] = config.to_dict()
    state["controller"]["rule"] = rule_name
    training_state.save(to, state)


def preflight(task: Task, arms: Sequence[Arm]) -> None:
    """Build and prepare the model once per (width, preparation) before any run, so a
    factory that rejects a width, a checkpoint that does not fit or a `trainable` that
    matches nothing is one error before anything is written."""
    matching = [a.name for a in arms if a.matches is not None]
    if matching and task.checkpoint is not None:
        raise TaskError(
            f"arm {matching[0]} trains the model from scratch at another width, which "
            "[model] checkpoint (a trained model) does not fit; in a study of a trained "
            "model compare with finetune, lora or an arm of your own"
        )
    sizes: dict[int, int] = {}
    sample = None
    for width, how in sorted({(a.width or 0, a.adapt) for a in arms}):
        model, _ = adapt.prepare(
            task.build_model(width or None), how, task.checkpoint, task.trainable
        )
        sizes.setdefault(
            width or (task.base_width or 0), sum(p.numel() for p in model.parameters())
        )
        if width and width != task.base_width:  # a ladder width: does the model still run?
            sample = _sample_input(task) if sample is None else sample
            _check_runs_at(model, width, task, sample)
    if len(sizes) > 1 and len(set(sizes.values())) == 1:
        raise TaskError(
            f"the model factory gives {next(iter(sizes.values())):,} parameters at every "
            f"width ({', '.join(map(str, sorted(sizes)))}): it ignores its width argument "
            f"{task.width_arg!r}, so the ladder would train one model several times"
        )


def _sample_input(task: Task) -> Any:
    """A few rows of the training split (the first batch a loader gives)."""
    for x, _ in task.data().train.batches(4, False, torch.device("cpu")):
        return x
    return None


def _check_runs_at(model: torch.nn.Module, width: int, task: Task, x: Any) -> None:
    """The factory's model at another width on a few training rows: a width argument
    that sets some other size (the inputs) fails here, before any run, not after the
    arms at the factory's own width have trained."""
    if x is None:
        return
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise TaskError(
            f"the model at width {width} ([model] width = {task.width_arg!r} set to {width}) "
            f"fails on a training batch ({type(exc).__name__}: {first_line(exc)}): does "
            f"{task.width_arg!r} set the hidden size? The ladder and wider change only it"
        ) from exc


def parameter_count(task: Task, width: int) -> int:
    """Parameters of the factory's model at `width` (built on the meta device where the
    factory allows: no memory, no initialisation)."""
    try:
        with torch.device("meta"):
            model = task.build_model(width)
    except Exception:  # a factory that needs real tensors (loads, numpy): build it
        model = task.build_model(width)
    return sum(p.numel() for p in model.parameters())


def matched_width(task: Task, target: int, limit: int = 1 << 20) -> int:
    """The width whose model has the parameter count nearest `target` (the larger of two
    as near): counts grow with the width, so double, then bisect."""
    count = functools.cache(lambda width: parameter_count(task, width))  # a build each
    low, high = 1, max(1, task.base_width or 1)
    if count(low) >= target:
        return low
    while count(high) < target:
        low, high = high, 2 * high
        if high > limit:
            raise TaskError(
                f"no width up to {limit} gives the model {target:,} parameters: does the "
                f"factory's {task.width_arg!r} set its size?"
            )
    while high - low > 1:  # count(low) < target <= count(high)
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    return low if target - count(low) < count(high) - target else high


def train_run(
    spec: RunSpec,
    task: Task,
    run_dir: Path,
    fork: ForkPoint | None = None,
    make_fork: ForkPoint | None = None,
    model_path: Path | None = None,
    on_start: Callable[[Perforator], None] | None = None,
    on_epoch: Callable[[Perforator, Event, float], None] | None = None,
    keep_history: bool = False,
) -> dict[str, Any]:
    """Train one run to its end and return its record (see the module docstring).

    `fork`: start from that fork point (when no checkpoint of this run exists yet).
    `make_fork`: this run is its chain's first: keep the fork point up to date until its
    first neuron phase ends."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "ckpt.safetensors"
    log_path = run_dir / "epochs.json"
    device = spec.device
    factories = optimizer_factories(spec.train)
    autocast = autocast_for(spec)
    batch = int(spec.train.get("batch_size", 64))
    eval_batch = int(spec.train.get("eval_batch_size", 1024))
    task = task.for_seed(spec.seed)  # data drawn for this seed, its checkpoint
    data = task.data()
    data.check_sizes(batch)
    prefix_seconds = 0.0
    forked_at: int | None = None

    torch.manual_seed(spec.seed)
    model, overrides = adapt.prepare(
        task.build_model(spec.arm.width), spec.arm.adapt, task.checkpoint, task.trainable
    )
    model = model.to(device)
    config = spec.config
    if overrides:  # e.g. LoRA: wrap only the head, not the adapters
        config = DendriteConfig.from_dict({**config.to_dict(), **overrides})
    has_ckpt = ckpt.is_file() or training_state.previous(ckpt).is_file()
    if not has_ckpt and fork is not None:
        # The checkpoint is written last: its existence is what makes the fork happen.
        info = json.loads(fork.info.read_text())
        _write_log(log_path, {"seconds": info["seconds"], "test": info["test"]})
        atomic_write(run_dir / "forked.json", json.dumps({"epoch": info["epoch"]}).encode())
        fork_checkpoint(fork, config, resolve_rule(config).name, ckpt)
        has_ckpt = True
    if has_ckpt:
        ctl = Perforator.resume(ckpt, model, **factories)
        differ = config.differences(ctl.config.to_dict())
        if differ:  # the checkpoint's own settings would silently win
            raise TaskError(
                f"{ckpt} was written by a run with other settings ({'; '.join(differ[:3])}"
                f"{'; ...' if len(differ) > 3 else ''}): continue it with the arm and "
                "settings it started with, or start afresh"
            )
        epochs = _read_log(log_path)
        epochs = {k: (v + [math.nan] * ctl.epoch)[: ctl.epoch] for k, v in epochs.items()}
        if (run_dir / "forked.json").exists():
            forked_at = int(json.loads((run_dir / "forked.json").read_text())["epoch"])
    else:
        ctl = Perforator(model, config, seed=spec.seed, checkpoint_path=ckpt, **factories)
        epochs = {"seconds": [], "test": []}
        ctl.save_checkpoint(ckpt)  # epoch 0: a fork point even if the first phase is 1 epoch
    if forked_at is not None:
        prefix_seconds = sum(epochs["seconds"][:forked_at])
    first_phase_open = make_fork is not None and not make_fork.ready
    if first_phase_open and _first_phase_ended(ctl):
        _finish_fork(make_fork, ctl, epochs)  # killed between end_epoch and this
        first_phase_open = False

    def score(split: str) -> float:
        """The metric over a split; a model or metric that fails there is one line."""
        try:
            return task.score(model, split, device, eval_batch, autocast)
        except PerforateError as exc:  # a clear error already: say where
            raise TrainingError(f"arm {spec.arm.name}, seed {spec.seed}: {exc}") from exc
        except (Exception, SystemExit) as exc:  # the user's eval-mode model or metric
            raise TrainingError(
                f"arm {spec.arm.name}, seed {spec.seed}: scoring the {SPLIT_NAMES[split]} "
                f"split failed ({type(exc).__name__}: {first_line(exc)}); check the model "
                "in eval mode and [task] metric"
            ) from exc

    if on_start is not None:
        on_start(ctl)
    own_start = time.perf_counter()
    while not ctl.done:
        if first_phase_open:
            _link_or_copy(ckpt, make_fork.checkpoint)
        began = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for x, y in data.train.batches(batch, True, device):
            ctl.optimizer.zero_grad(set_to_none=True)
            try:
                with autocast():
                    out = ctl.wrapped(x)
                    loss = task.batch_loss(out, y)
                loss.backward()
            except TaskError:
                raise
            except PerforateError as exc:  # e.g. a wrapped layer's input shape: say where
                raise TrainingError(
                    f"arm {spec.arm.name}, seed {spec.seed}, a training batch: {exc}"
                ) from exc
            except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
                raise TrainingError(
                    f"arm {spec.arm.name}, seed {spec.seed}: the model or the loss failed on "
                    f"a training batch ({type(exc).__name__}: {first_line(exc)}); "
                    "check [task] loss against the data's shapes and dtypes"
                ) from exc
            ctl.optimizer.step()
            loss_sum += loss.detach().float()
            if ctl.end_step():
                break
        if not math.isfinite(float(loss_sum)):
            raise TrainingError(
                f"arm {spec.arm.name}, seed {spec.seed}: the training loss became non-finite "
                f"in epoch {ctl.epoch + 1}; lower [train] lr, check the data for NaN/inf, or "
                'try amp = "off"'
            )
        val = score("val")
        seconds = time.perf_counter() - began
        test = score("test") if spec.track_test else math.nan
        epochs["seconds"].append(seconds)
        epochs["test"].append(test)
        _write_log(log_path, epochs)  # before end_epoch: a resume cuts it back
        event = ctl.end_epoch(val)
        if first_phase_open and event != Event.CONTINUE:
            _finish_fork(make_fork, ctl, epochs)
            first_phase_open = False
        if on_epoch is not None:
            on_epoch(ctl, event, val)
    wall_seconds = time.perf_counter() - own_start

    report = perforate.parameter_report(model)
    neurons = sum(r.neurons for r in report.layers)
    val, test = score("val"), score("test")
    if not math.isfinite(test):
        raise TrainingError(
            f"arm {spec.arm.name}, seed {spec.seed}: the test split's score is {test} (NaN "
            "or inf in its inputs or targets?); the validation score was finite"
        )
    if model_path is not None:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        perforate.save(model, model_path)
    history = [r.to_dict() for r in ctl.history]
    return {
        "arm": spec.arm.name,
        "seed": spec.seed,
        "val": val,
        "test": test,
        "best_val": ctl.best_score,
        "params": report.total,
        "base_params": report.base,
        "dendrite_params": report.dendrite,
        "dendrites": ctl.dendrites_kept,
        "dendrites_per_neuron": sum(r.dendrites for r in report.layers) / max(neurons, 1),
        "epochs": ctl.epoch,
        "seconds": sum(epochs["seconds"]),
        "own_seconds": sum(epochs["seconds"][forked_at or 0 :]),
        "wall_seconds": wall_seconds,
        "forked_at": forked_at,
        "prefix_seconds": prefix_seconds,
        "end": _end_reason(ctl, history),
        # The first epoch's score still best at the end: the direction may be wrong.
        "first_epoch_best": ctl.direction_check.closing_note(ctl.best_score) is not None,
        "cycles": ctl.cycle,
        "curve": [
            [round(t, 6), h["score"], te]
            for t, h, te in zip(
                _cumulative(epochs["seconds"]), history, epochs["test"], strict=False
            )
        ],
        "phases": [[h["phase"][0], h["event"]] for h in history],
        "best": [h["best_score"] for h in history],  # the controller's: its accept decisions
        "model": None if model_path is None else str(model_path),
        **({"history": history} if keep_history else {}),
    }


def _first_phase_ended(ctl: Perforator) -> bool:
    return any(h.event != Event.CONTINUE.value for h in ctl.history)


def _finish_fork(point: ForkPoint, ctl: Perforator, epochs: dict[str, list[float]]) -> None:
    """The first neuron phase ended at this epoch: the fork point (the state one epoch
    earlier) is final; record the prefix's per-epoch log up to it."""
    ended = next(h.epoch for h in ctl.history if h.event != Event.CONTINUE.value)
    at = ended - 1
    info = {
        "epoch": at,
        "seconds": epochs["seconds"][:at],
        "test": epochs["test"][:at],
    }
    atomic_write(point.info, json.dumps(info).encode())


def _cumulative(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def _end_reason(ctl: Perforator, history: list[dict[str, Any]]) -> str:
    """Why the run ended, as far as the controller's own counters tell."""
    if ctl.epoch >= ctl.config.max_epochs:
        return "max_epochs"
    if ctl.config.max_cycles == 0:
        return "early_stopping"
    if ctl.retries > ctl.config.max_retries:
        return "retries"
    if ctl.cycle >= ctl.config.max_cycles:
        return "max_cycles"
    if ctl.switching.exhausted():
        return "cost_budget"
    return "max_dendrites"
