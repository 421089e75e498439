"""Training checkpoints: a run's state as a file and back. Knows nothing of the controller.

The file holds `{"controller": Perforator.state_dict(), "rng": process RNG states}` as
one safetensors file (tensors) with a JSON header (everything else), written through
`files.atomic_write`; the file it replaces is kept as `<name>.prev`. The controller turns
itself into a dict and back (`state_dict` / `load_state_dict`); this module only stores it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import files
from .errors import CheckpointError

FORMAT = "perforate.training/2"
_OLDER = {"perforate.training/1": "perforate 0.1.0"}


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write nested `state` to `path` atomically; the file it replaces becomes `.prev`."""
    tensors: dict[str, torch.Tensor] = {}
    header = {"format": FORMAT, "state": files.flatten(state, "s", tensors)}
    data = files.encode(header, tensors)
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    files.atomic_write(path, data)
    return path


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The state `save` wrote; `CheckpointError` for anything else."""
    header, tensors = files.read(path)
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
    return files.unflatten(header["state"], tensors)


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
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
