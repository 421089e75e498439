"""Full training state of a Perforator: save at any epoch end, resume bit for bit.

One safetensors file: tensors (model with candidates, best and accepted snapshots,
candidate statistics, optimizer and scheduler tensors, RNG states) and a JSON header with
everything else (phase, counters, history, per-parameter trainability). Written through
`atomic_write`; the file it replaces is kept as `<name>.prev`, so a checkpoint damaged
after the fact never leaves a run without a good one. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save as save_bytes

from .checkpoint import atomic_write, layer_set_mismatches, read_file, tensor_mismatches
from .config import DendriteConfig
from .errors import CheckpointError, CheckpointMismatchError

if TYPE_CHECKING:
    from .controller import Perforator

FORMAT = "perforate.training/1"


# --- nested state <-> (JSON, tensors) ---------------------------------------------------
def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; its tensors go to `tensors` under dotted keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(
        f"cannot store a {type(obj).__name__} at {prefix!r} in a checkpoint (only tensors, "
        "numbers, strings, lists, tuples and dicts); a scheduler or optimizer holding "
        "callables cannot be checkpointed"
    )


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    return obj


# --- save ----------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def training_state(ctl: Perforator) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    model = ctl.model
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    layers = {}
    for name, layer in ctl.layers.items():
        stats = None
        if layer.stats is not None:
            stats = flatten(layer.stats.state_tensors(), f"stats.{name}", tensors)
        layers[name] = {
            "phase": layer.phase.value, "slots": layer.slots, "pool": layer.pool_size,
            "frozen_flags": layer._frozen_flags, "stats": stats,
            "skipped_batches": 0 if layer.stats is None else layer.stats.skipped_batches,
        }
    snapshots = {}
    for label in ("_best", "_accepted"):
        snap = getattr(ctl, label)
        snapshots[label] = None if snap is None else {
            "score": snap.score, "state": flatten(snap.state, f"snap{label}", tensors)}
    header = {
        "format": FORMAT,
        "config": ctl.config.to_dict(),
        "model": flatten(model.state_dict(), "model", tensors),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "layers": layers,
        "controller": {
            "phase": ctl.phase.value, "epoch": ctl.epoch, "steps": ctl.steps,
            "cycle": ctl.cycle, "retries": ctl.retries,
            "since_improvement": ctl._since_improvement, "patience_ref": ctl._patience_ref,
            "phase_epochs": ctl._phase_epochs, "corr_best": ctl._corr_best,
            "corr_since": ctl._corr_since, "steps_since_eval": ctl._steps_since_eval,
            "frozen": {names[i]: flag for i, flag in ctl._frozen.items() if i in names},
            "first_scores": ctl._first_scores,
            "history": [r.to_dict() for r in ctl.history],
        },
        "snapshots": snapshots,
        "optimizer": flatten(ctl.optimizer.state_dict(), "optimizer", tensors),
        "scheduler": None if ctl.scheduler is None
        else flatten(ctl.scheduler.state_dict(), "scheduler", tensors),
        "generator": flatten(ctl._generator.get_state(), "generator", tensors),
        "rng": flatten(_rng_state(), "rng", tensors),
    }
    return header, tensors


def save_training(ctl: Perforator, path: str | os.PathLike) -> Path:
    header, tensors = training_state(ctl)
    data = save_bytes(tensors, metadata={"perforate": json.dumps(header)})
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    atomic_write(path, data)
    return path


# --- resume --------------------------------------------------------------------------------
def read_training(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    header, tensors = read_file(path)
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: format {header.get('format')!r} is not a training checkpoint "
            f"({FORMAT!r}); a model file written by perforate.save loads with perforate.load"
        )
    return header, tensors


def check_structure(ctl: Perforator, header: dict[str, Any],
                    model_state: dict[str, torch.Tensor]) -> None:
    problems = (layer_set_mismatches(ctl.layers, header["layers"])
                + tensor_mismatches(ctl.model, model_state))
    if problems:
        raise CheckpointMismatchError(
            f"the checkpoint does not match this model ({len(problems)} difference(s)):\n  - "
            + "\n  - ".join(problems)
        )


def restore_training(ctl: Perforator, header: dict[str, Any],
                     tensors: dict[str, torch.Tensor]) -> None:
    from .controller import ControllerPhase, EpochRecord, _Snapshot
    from .layers import Phase

    model_state = unflatten(header["model"], tensors)
    check_structure(ctl, header, model_state)
    for name, info in header["layers"].items():
        layer = ctl.layers[name]
        layer.set_slots(info["slots"])
        if info["phase"] == Phase.DENDRITE.value:
            layer.start_dendrite_phase(candidates=info["pool"])
            layer._frozen_flags = dict(info["frozen_flags"])
            if info["stats"] is not None:
                for field, value in unflatten(info["stats"], tensors).items():
                    getattr(layer.stats, field).copy_(value)
                layer.stats.skipped_batches = info["skipped_batches"]
        elif info["phase"] == Phase.INFERENCE.value:
            layer.start_inference()
    ctl.model.load_state_dict(model_state, strict=True)
    params = dict(ctl.model.named_parameters())
    for n, flag in header["requires_grad"].items():
        params[n].requires_grad_(flag)
    c = header["controller"]
    ctl.phase = ControllerPhase(c["phase"])
    ctl.epoch, ctl.steps, ctl.cycle, ctl.retries = c["epoch"], c["steps"], c["cycle"], c["retries"]
    ctl._since_improvement, ctl._patience_ref = c["since_improvement"], c["patience_ref"]
    ctl._phase_epochs, ctl._corr_best, ctl._corr_since = (c["phase_epochs"], c["corr_best"],
                                                          c["corr_since"])
    ctl._steps_since_eval = c["steps_since_eval"]
    ctl._frozen = {id(params[n]): flag for n, flag in c["frozen"].items()}
    ctl._first_scores = list(c["first_scores"])
    ctl.history = [EpochRecord(**r) for r in c["history"]]
    for label, snap in header["snapshots"].items():
        setattr(ctl, label, None if snap is None
                else _Snapshot(snap["score"], unflatten(snap["state"], tensors)))
    ctl._build_optimizer()
    ctl.optimizer.load_state_dict(unflatten(header["optimizer"], tensors))
    if ctl.scheduler is not None and header["scheduler"] is not None:
        ctl.scheduler.load_state_dict(unflatten(header["scheduler"], tensors))
    ctl._generator.set_state(unflatten(header["generator"], tensors))
    _set_rng_state(unflatten(header["rng"], tensors))
    ctl._steps_since_eval = c["steps_since_eval"]


def config_of(header: dict[str, Any]) -> DendriteConfig:
    return DendriteConfig.from_dict(header["config"])
