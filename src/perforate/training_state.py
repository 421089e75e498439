"""Training checkpoints: a run's state as a file and back. Knows nothing of the controller.

The file holds `{"controller": Perforator.state_dict(), "rng": process RNG states}` as
one safetensors file (tensors) with a JSON header (everything else), written through
`files.atomic_write`: at every instant `<name>` is a complete file and `<name>.prev` the
complete one before it. `load_latest` takes the newest readable of the two and says when
it fell back. The controller turns itself into a dict and back (`state_dict` /
`load_state_dict`) and validates it; this module only stores it.

Devices: safetensors stores no device (tensors on a GPU are copied to the host as they are
written), so a file written on a GPU is the same file as one written on a CPU, and its
tensors load on the CPU; resuming copies each one into the model, optimizer or statistics
tensor it belongs to, on that tensor's device. Only the CUDA RNG states need a decision:
restored where CUDA is (as many devices as both sides have), skipped where it is not, and
seeded from the checkpoint's CPU RNG state when the file has none (written on a CPU); each
case is logged at INFO.
"""

from __future__ import annotations

import hashlib
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
    """The state `save` wrote, tensors on the CPU; `CheckpointError` for anything else."""
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
    """Restore `process_rng_state()`; `CheckpointError` (nothing changed) if malformed.

    The CUDA states are restored only where CUDA is available: a checkpoint written on a
    GPU resumes on a CPU without them, and one written on a CPU (no CUDA states) resumes
    on a GPU with CUDA generators seeded from its CPU RNG state, so that resume is
    repeatable too. Both are logged at INFO."""
    try:
        torch_state = torch.as_tensor(state["torch"], dtype=torch.uint8)
        python_state = _tuples(state["python"])
        numpy_state = tuple(state["numpy"])
        cuda_states = _cuda_states(state.get("cuda"))
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
    _set_cuda_states(cuda_states, torch_state)


def _cuda_states(saved: Any) -> list[torch.Tensor] | None:
    """The saved CUDA RNG states as uint8 tensors (None: the file has none), checked
    before anything is restored."""
    if saved is None:
        return None
    if not isinstance(saved, (list, tuple)):
        raise TypeError(f"CUDA RNG states must be a list, got {type(saved).__name__}")
    states = [torch.as_tensor(t) for t in saved]
    for t in states:
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise ValueError(f"a CUDA RNG state must be a 1-d uint8 tensor, got {t.dtype}")
    return states


def _set_cuda_states(states: list[torch.Tensor] | None, cpu_state: torch.Tensor) -> None:
    if not torch.cuda.is_available():
        if states:
            log.info(
                "the checkpoint holds CUDA RNG states of %d device(s); CUDA is not available "
                "here, so they are not restored (CPU, Python and NumPy RNG states are)",
                len(states),
            )
        return
    devices = torch.cuda.device_count()
    if states is None:
        # Written without CUDA: seed every device from the checkpoint, not from whatever
        # this process drew before, so that resuming the same file twice agrees.
        seed = int.from_bytes(hashlib.sha256(cpu_state.numpy().tobytes()).digest()[:8], "little")
        torch.cuda.manual_seed_all(seed)
        log.info(
            "the checkpoint holds no CUDA RNG state (written without CUDA): the CUDA "
            "generators start fresh, seeded from the checkpoint's CPU RNG state"
        )
        return
    for i, t in enumerate(states[:devices]):
        torch.cuda.set_rng_state(t, i)
    if len(states) != devices:
        log.info(
            "the checkpoint holds CUDA RNG states of %d device(s) and %d are here: the "
            "first %d restored, the others keep their own state",
            len(states),
            devices,
            min(len(states), devices),
        )


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
