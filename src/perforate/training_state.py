"""Training checkpoints: a run's state as a file and back. Knows nothing of the controller.

The file holds `{"controller": Perforator.state_dict(), "rng": process RNG states}` as
one safetensors file (tensors) with a JSON header (everything else), written through
`files.atomic_write`: at every instant `<name>` is a complete file and `<name>.prev` the
complete one before it. `load_latest` takes the newest readable of the two and says when
it fell back. The controller turns itself into a dict and back (`state_dict` /
`load_state_dict`) and validates it; this module only stores it.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import files
from .errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "perforate.training/2"
_OLDER = {"perforate.training/1": "perforate 0.1.0"}


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write nested `state` to `path` atomically; the file it replaces becomes `.prev`."""
    tensors: dict[str, torch.Tensor] = {}
    header = {"format": FORMAT, "state": files.flatten(state, "s", tensors)}
    files.atomic_write(path, files.encode(header, tensors), keep_previous=True)
    return Path(path)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The state `save` wrote; `CheckpointError` for anything else."""
    header, tensors = files.read(path, expect=FORMAT)
    fmt = header.get("format")
    if fmt in _OLDER:
        raise CheckpointError(
            f"{path} is a training checkpoint of {_OLDER[fmt]} ({fmt!r}), whose layout this "
            f"version ({FORMAT!r}) does not resume; finish the run with that version, or "
            "start again (a model file written by perforate.save still loads)"
        )
    if fmt != FORMAT:
        raise CheckpointError(
            f"{path}: format {fmt!r} is not a training checkpoint ({FORMAT!r}); a model "
            "file written by perforate.save loads with perforate.load"
        )
    try:
        state = files.unflatten(header["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise CheckpointError(
            f"{path}: malformed training state ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("controller"), dict):
        raise CheckpointError(f"{path}: the training state holds no controller state")
    return state


def previous(path: str | os.PathLike) -> Path:
    """Where `save` keeps the file before the newest."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def load_latest(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The newest readable state of `path` or its `.prev`, and the file it came from.

    Falls back to `.prev` (logging a warning that says why) when `path` is missing or
    damaged; raises `CheckpointError` naming both files when neither can be read.
    Temporary files of a writer killed mid-write are removed.
    """
    path = Path(path)
    for stale in files.temp_files(path):
        stale.unlink(missing_ok=True)
    try:
        return load(path), path
    except CheckpointError as first:
        prev = previous(path)
        if not prev.exists():
            raise
        try:
            state = load(prev)
        except CheckpointError as second:
            raise CheckpointError(
                f"neither checkpoint can be read:\n  - {first}\n  - {second}"
            ) from second
        log.warning("%s; resuming from %s, one checkpoint older", first, prev)
        return state, prev


def process_rng_state() -> dict[str, Any]:
    """The process-wide RNG states a training loop draws from (torch, Python, NumPy, CUDA)."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_process_rng_state(state: dict[str, Any]) -> None:
    """Restore `process_rng_state()`; `CheckpointError` (nothing changed) if malformed."""
    try:
        torch_state = torch.as_tensor(state["torch"], dtype=torch.uint8)
        python_state = _tuples(state["python"])
        numpy_state = tuple(state["numpy"])
        current = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        try:
            torch.set_rng_state(torch_state)
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        except BaseException:
            torch.set_rng_state(current[0])
            random.setstate(current[1])
            np.random.set_state(current[2])
            raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError) as exc:
        raise CheckpointError(
            f"malformed RNG state in the checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
