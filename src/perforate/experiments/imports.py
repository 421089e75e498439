"""Objects named by import path ("package.module:name") in files the user writes.

A `perforate train` file names its model factory as `"mymodel:flat_mlp"`; the module
usually sits beside the file, not on the Python path. `import_object` tries a normal
import first (an installed package always wins), then each folder of `search` in turn
(the file's folder, the current folder), the way `python script.py` finds modules beside
the script. A folder is on `sys.path` only while its module imports; the module then stays
in `sys.modules`, so pickling and later imports of it work.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from perforate import ConfigError

# module name -> the search folder it was imported from (not found on the Python path)
_FROM_FOLDER: dict[str, Path] = {}


class ImportObjectError(ConfigError):
    """An import path is malformed, or its module or attribute cannot be imported."""


def import_object(path: str, search: Iterable[str | os.PathLike] = (), what: str = "object") -> Any:
    """The object `path` ("package.module:attr", attr may be dotted) names.

    `search`: folders to look in, in order, when a normal import does not find the module.
    `what` names the object in error messages ("model factory"). Raises ImportObjectError
    saying where it looked; an exception raised by the module while importing is named too.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ImportObjectError(f"{what} {path!r} must look like 'package.module:function'")
    module_name, attr = path.split(":")
    folders = _unique_folders(search)
    module = _import_module(module_name, folders, path, what)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = getattr(module, "__file__", None) or module_name
            raise ImportObjectError(
                f"cannot import {what} {path!r}: {where} has no {attr!r}"
            ) from None
    return obj


def _unique_folders(search: Iterable[str | os.PathLike]) -> list[Path]:
    folders: list[Path] = []
    for folder in search:
        resolved = Path(folder).resolve()
        if resolved not in folders:
            folders.append(resolved)
    return folders


def _has_module(folder: Path, module_name: str) -> bool:
    top = module_name.split(".")[0]
    return (folder / f"{top}.py").is_file() or (folder / top).is_dir()


def _forget(module_name: str) -> None:
    """Drop a module imported from another search folder (and its submodules)."""
    top = module_name.split(".")[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
        _FROM_FOLDER.pop(name, None)


def _not_found(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when the module itself (or a parent package) is missing, not one it imports."""
    missing = exc.name or ""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_module(module_name: str, folders: list[Path], path: str, what: str) -> ModuleType:
    top = module_name.split(".")[0]
    if top in _FROM_FOLDER:
        # Imported from a search folder before: reuse it only if the same folder is still
        # the first to hold it (two TOML files in two folders may each have a mymodel.py).
        first = next((f for f in folders if _has_module(f, module_name)), None)
        if first != _FROM_FOLDER[top]:
            _forget(module_name)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _not_found(exc, module_name):
            raise _failed(path, what, exc) from exc
    except (Exception, SystemExit) as exc:  # the user's module may raise anything while importing
        raise _failed(path, what, exc) from exc
    for folder in folders:
        if not _has_module(folder, module_name):
            continue
        sys.path.insert(0, str(folder))
        try:
            importlib.invalidate_caches()
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:
            raise _failed(path, what, exc, folder) from exc
        finally:
            sys.path.remove(str(folder))
        _FROM_FOLDER[top] = folder
        return module
    places = ", ".join(str(f) for f in folders)
    raise ImportObjectError(
        f"cannot import {what} {path!r}: no module {module_name!r} on the Python path"
        + (f" nor in {places}" if places else "")
        + f"; put {top}.py beside the TOML file or in the current folder, or set PYTHONPATH"
    )


def _failed(path: str, what: str, exc: BaseException, folder: Path | None = None) -> ConfigError:
    where = f" (from {folder})" if folder is not None else ""
    return ImportObjectError(f"cannot import {what} {path!r}{where}: {type(exc).__name__}: {exc}")
