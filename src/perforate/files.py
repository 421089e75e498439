"""Files: atomic, durable writes and one-read, validated reads of safetensors files whose
JSON header (in the safetensors metadata) says what they hold.

Why this shape: one file carries the tensors and the JSON describing them, so one atomic
rename publishes both; the file is read once, so a concurrent writer can never pair one
version's header with another's tensors; nothing is ever unpickled. Nested state (dicts,
lists, tuples, numbers, strings, tensors) becomes JSON plus named tensors with `flatten`.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .errors import CheckpointError

META_KEY = "perforate"


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def encode(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """A safetensors file's bytes with `header` as JSON in its metadata."""
    return save_bytes(tensors, metadata={META_KEY: json.dumps(header)})


def write(
    path: str | os.PathLike, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    atomic_write(path, encode(header, tensors))


def _metadata(data: bytes) -> dict[str, str]:
    """The metadata of safetensors bytes, parsed from the same bytes as the tensors."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"header of {size} bytes in a file of {len(data)}")
    meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return meta


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and tensors of any perforate file; `CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    try:
        tensors = load_bytes(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated, corrupted, or another "
            f"format; perforate never unpickles): {exc}"
        ) from exc
    if META_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a perforate checkpoint")
    try:
        header = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupted structure header: {exc}") from exc
    if not isinstance(header, dict) or "format" not in header:
        raise CheckpointError(f"{path}: structure header has no format field")
    return header, tensors


# --- nested state <-> (JSON, tensors) ---------------------------------------------------
def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; its tensors go to `tensors` under dotted keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [k, flatten(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())
            ]
        }
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
    """Inverse of `flatten`."""
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
