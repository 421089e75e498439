"""Files: atomic, durable writes and one-read, validated reads of safetensors files whose
JSON header (in the safetensors metadata) says what they hold.

Why this shape: one file carries the tensors and the JSON describing them, so one atomic
rename publishes both; the file is read once, so a concurrent writer can never pair one
version's header with another's tensors; nothing is ever unpickled. Nested state (dicts,
lists, tuples, numbers, strings, tensors) becomes JSON plus named tensors with `flatten`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
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


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
# What a temporary adds to its prefix: mkstemp's 8 characters and ".tmp", or the
# previous file's link "<pid>.<id>.prev.tmp" (pid <= 10 digits, id <= 20).
_TEMP_ROOM = 40


def _name_max(directory: Path) -> int:
    """The longest file name, in bytes, of `directory`'s file system (of its nearest
    existing ancestor: the folder may not exist yet)."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf here (Windows)
        return NAME_MAX


def check_file_name(path: str | os.PathLike, keep_previous: bool = False) -> None:
    """`CheckpointError` now, before anything is written, if `path`'s name (or, with
    `keep_previous`, `<name>.prev` beside it) is longer than its file system allows."""
    path = Path(path)
    limit = _name_max(path.parent)
    size = len(os.fsencode(path.name))
    if size > limit or (keep_previous and size + len(".prev") > limit):
        kept = (
            f"; the previous checkpoint is kept beside it as <name>.prev, so the name may "
            f"have {limit - len('.prev')} bytes at most"
            if keep_previous
            else ""
        )
        raise CheckpointError(
            f"the file name {path.name[:40]!r}... is {size} bytes long and this file system "
            f"allows {limit} bytes per name{kept}: choose a shorter name"
        )


def _temp_prefix(path: Path) -> str:
    """The start of the names of `path`'s temporaries: `.<name>.`, or a hash of the name
    where that would make them longer than a file name may be."""
    prefix = f".{path.name}."
    if len(os.fsencode(prefix)) + _TEMP_ROOM <= _name_max(path.parent):
        return prefix
    return f".perforate-{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:24]}."


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files `atomic_write` left beside `path` (a writer killed mid-write)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"))


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: str | os.PathLike, data: bytes, keep_previous: bool = False) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    The new bytes go to a temporary file in the same directory, are fsynced, and replace
    `path` with one rename; the directory is fsynced after. With `keep_previous`, the file
    being replaced is first hard-linked to `<name>.prev` (itself by an atomic rename), so
    at every instant `path` holds a complete file and `.prev` a complete older one: a kill
    or a full disk at any point loses at most the write in flight. Files get the usual
    permissions (0666 less the umask), not mkstemp's 0600. Temporaries never have a longer
    name than the file system allows (hashed names for long ones); a name that is itself
    too long (with `.prev`, when kept) is refused before anything is written.
    """
    path = Path(path)
    check_file_name(path, keep_previous)  # first: a stat of a too long name fails raw
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a file path for the checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = _temp_prefix(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    link = None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.is_file():
            link = path.parent / f"{prefix}{os.getpid()}.{id(data)}.prev.tmp"
            try:
                os.link(path, link)
            except FileNotFoundError:  # another writer replaced it this instant
                link = None
            except OSError:  # no hard links here: copy, fsynced, then publish
                shutil.copyfile(path, link)
                with open(link, "rb+") as fh:
                    os.fsync(fh.fileno())
            if link is not None:
                os.replace(link, path.with_name(path.name + ".prev"))
                link = None
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, link):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
        raise
    _fsync_dir(path.parent)


def encode(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """A safetensors file's bytes with `header` as JSON in its metadata."""
    return save_bytes(tensors, metadata={META_KEY: json.dumps(header)})


def write(
    path: str | os.PathLike, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    atomic_write(path, encode(header, tensors))


MAX_HEADER_BYTES = 64 * 1024 * 1024  # safetensors' JSON header, metadata included


def _read_once(path: Path, expect: str | None) -> tuple[dict[str, Any], bytes | None]:
    """The perforate header and the file's bytes, from one open file: a concurrent writer
    replaces the file by rename, so these bytes are one version. The header is parsed and
    its format checked before the tensor bytes are read (None when `expect` differs)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header of {n} bytes in a file of {size}")
        header_bytes = fh.read(n)
        st_header = json.loads(header_bytes)
        if not isinstance(st_header, dict):
            raise ValueError("header is not a mapping")
        meta = st_header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a mapping")
        if META_KEY not in meta:
            raise CheckpointError(f"{path} is a safetensors file but not a perforate checkpoint")
        header = json.loads(meta[META_KEY])
        if not isinstance(header, dict) or not isinstance(header.get("format"), str):
            raise CheckpointError(f"{path}: structure header has no format field")
        if expect is not None and header["format"] != expect:
            return header, None
        return header, head + header_bytes + fh.read()


def read(
    path: str | os.PathLike,
    expect: str | None = None,
    device: torch.device | str | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and tensors of any perforate file; `CheckpointError` if it is not one.

    The JSON header is parsed and its format checked (against `expect`, when given: no
    tensor is read for another format) before the tensors are decoded; the caller
    validates the rest of the header against the tensors before allocating from it.
    Files store no device (safetensors writes tensors from the host): the tensors come
    back on `device`, the CPU by default; loading them into a model copies each one onto
    the device of the tensor it replaces, whatever machine wrote the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        header, data = _read_once(path, expect)
        tensors = {} if data is None else load_bytes(data)
    except CheckpointError:
        raise
    except (
        SafetensorError,
        ValueError,
        TypeError,
        OSError,
        RuntimeError,
        RecursionError,
        MemoryError,
        OverflowError,
    ) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated, corrupted, or another "
            f"format; perforate never unpickles): {type(exc).__name__}: {exc}"
        ) from exc
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
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
