"""`perforate train CONFIG.toml`: a whole run described by one file.

    [model]                      # any factory, by import path
    factory = "perforate.experiments.models:mlp"
    kwargs = { inputs = 64, hidden = 8, classes = 10 }

    [data]                       # a built-in dataset and its loader's arguments
    name = "digits"

    [train]
    optimizer = "Adam"           # Adam, AdamW or SGD
    lr = 0.01
    candidate_lr = 0.05
    batch_size = 64
    seed = 0

    [dendrites]                  # any DendriteConfig setting
    patience = 10

    [run]
    dir = "runs/digits_mlp"

The run directory receives `results.json` (scores, parameters, the full history),
`model.safetensors` (the best model, `perforate.load`), `ckpt.safetensors` (the training
state after every epoch: `perforate train CONFIG --resume` continues there) and
`demo.png`; `perforate report RUN_DIR` redraws the figure. The loop is `loop.fit_classifier`,
the same as the demo's and the benchmarks'.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import perforate
from perforate import ConfigError, DendriteConfig, Event, Perforator, training_state
from perforate.files import atomic_write

from . import datasets
from .imports import import_object
from .loop import OPTIMIZERS, fit_classifier
from .report import plot_runs, run_title

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ExperimentError(ConfigError):
    """A `perforate train` file is unreadable or has a wrong section, key or value."""


def _int(low: int, high: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        top = "2^63 - 1" if high == 2**63 - 1 else str(high)
        return None if ok else f"must be an integer from {low} to {top}, got {_short(v)}"

    return check


def _as_float(v: Any) -> float | None:
    """`v` as a finite float, or None: a bool, a string, NaN, an infinity, or an integer
    too large for a float (TOML integers may have 400 digits) is no number here."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        value = float(v)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _positive_number(v: Any) -> str | None:
    value = _as_float(v)
    ok = value is not None and value > 0
    return None if ok else f"must be a finite number > 0, got {_short(v)}"


def _weight_decay(v: Any) -> str | None:
    # Above 1 the decay outweighs the gradient at any learning rate (and 1e308 overflows
    # the float32 parameters): a typo, not a setting.
    value = _as_float(v)
    ok = value is not None and 0 <= value <= 1
    return None if ok else f"must be a number from 0 to 1 (typically 1e-5 to 0.1), got {_short(v)}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {v!r}"


def _table(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"must be a table, got {v!r}"


def _choice(options: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {sorted(options)}, got {v!r}"

    return check


@dataclass(frozen=True)
class Key:
    """One key of a `perforate train` file: whether it is required, how it is checked,
    and what it means (the generated page `docs/train_file.md` shows `doc`)."""

    required: bool
    check: Callable[[Any], str | None]
    doc: str


MAX_THREADS = 1024  # torch takes a C int; more threads than this is a typo

# section -> key -> Key. [dendrites] is checked by DendriteConfig.
SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "factory": Key(
            True,
            _text,
            'import path of a function that builds the model, "module:name"; the module is '
            "imported from the Python path, else from the TOML file's folder, else from the "
            "current folder (a `mymodel.py` beside the file needs no PYTHONPATH)",
        ),
        "kwargs": Key(False, _table, "keyword arguments for the factory (default: none)"),
    },
    "data": {
        "name": Key(
            True,
            _choice(datasets.DATASETS),
            f"a built-in data set: {', '.join(sorted(datasets.DATASETS))}",
        ),
        "kwargs": Key(False, _table, "keyword arguments for its loader (default: none)"),
    },
    "train": {
        "optimizer": Key(
            False, _choice(OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)} (default Adam)"
        ),
        "lr": Key(
            False, _positive_number, "learning rate of the network, finite > 0 (default 0.001)"
        ),
        "candidate_lr": Key(
            False, _positive_number, "learning rate of the candidates, finite > 0 (default 5 x lr)"
        ),
        "batch_size": Key(
            False,
            _int(1, 2**63 - 1),
            "integer >= 1, at most the training split's size (default 64)",
        ),
        "seed": Key(False, _int(0, 2**63 - 1), "integer from 0 to 2^63 - 1 (default 0)"),
        "weight_decay": Key(
            False, _weight_decay, "number from 0 to 1 (default: the optimizer's own)"
        ),
        "threads": Key(
            False, _int(1, MAX_THREADS), f"torch threads, 1 to {MAX_THREADS} (default: torch's)"
        ),
    },
    "run": {
        "dir": Key(
            True,
            _text,
            "the run directory (leave out [run] for runs/<file name>): results.json, "
            "model.safetensors, ckpt.safetensors, demo.png",
        )
    },
}


def schema_markdown() -> str:
    """The file format as the tables of docs/train_file.md, from `SCHEMA`."""
    lines = [
        "# `perforate train` files",
        "",
        "Generated by `perforate config --train-file` from "
        "`perforate.experiments.train_config.SCHEMA`; do not edit by hand. "
        "`perforate examples` lists bundled files to start from.",
        "",
    ]
    for section, keys in SCHEMA.items():
        lines += [f"## [{section}]", "", "| key | required | what it is |", "|---|---|---|"]
        lines += [
            f"| `{name}` | {'yes' if key.required else 'no'} | {key.doc} |"
            for name, key in keys.items()
        ]
        lines.append("")
    lines += [
        "## [dendrites]",
        "",
        "Any `DendriteConfig` setting, with its name and type (`docs/settings.md`; "
        "`perforate config`). Unknown sections, unknown keys and wrong values are refused with "
        "the file, section and key named.",
        "",
    ]
    return "\n".join(lines)


SECTIONS = (*SCHEMA, "dendrites")


def read_experiment(path: str | Path) -> dict[str, Any]:
    """The validated contents of a `perforate train` file; `ExperimentError` names the
    file, the section and the key of the first problem found."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ExperimentError(f"cannot read {path}: {exc}") from exc
    for section, values in spec.items():
        if section not in SECTIONS:
            raise ExperimentError(f"{path}: unknown section [{section}]; use {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ExperimentError(f"{path}: [{section}] must be a table")
    spec.setdefault("train", {})
    spec.setdefault("run", {"dir": f"runs/{path.stem}"})
    for section, keys in SCHEMA.items():
        if section not in spec:
            raise ExperimentError(f"{path}: missing section [{section}]")
        values = spec[section]
        unknown = [k for k in values if k not in keys]
        if unknown:
            raise ExperimentError(
                f"{path}: unknown key(s) {unknown} in [{section}]; allowed: {sorted(keys)}"
            )
        for key, spec_key in keys.items():
            if key not in values:
                if spec_key.required:
                    raise ExperimentError(f"{path}: [{section}] needs {key} = ...")
                continue
            problem = spec_key.check(values[key])
            if problem:
                raise ExperimentError(f"{path}: [{section}] {key} {problem}")
    try:
        spec["config"] = DendriteConfig.from_dict(spec.get("dendrites", {}))
    except ConfigError as exc:
        raise ExperimentError(f"{path}: [dendrites] {exc}") from exc
    return spec


def import_factory(path: str, search: Sequence[str | os.PathLike] = ()) -> Callable[..., nn.Module]:
    """The model factory `path` names ("module:function"): a normal import first, then
    each folder of `search` (the TOML file's folder, the current folder)."""
    factory = import_object(path, search, what="model factory")
    if not callable(factory):
        raise ExperimentError(f"model factory {path!r} is not callable")
    return factory


def build_model(
    path: str, kwargs: dict[str, Any], search: Sequence[str | os.PathLike] = ()
) -> nn.Module:
    """Call the factory; anything it raises, or a non-module result, names the factory."""
    factory = import_factory(path, search)
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ExperimentError(
            f"model factory {path!r} failed with kwargs {kwargs}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ExperimentError(
            f"model factory {path!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def search_folders(path: str | Path) -> tuple[Path, Path]:
    """Where a file's factories are looked for after the Python path: the file's folder,
    then the current folder."""
    return Path(path).resolve().parent, Path.cwd()


def progress_bar(name: str) -> Any:
    """A `tqdm.auto` bar over epochs (a widget in notebooks), or None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(desc=name, unit="epoch", dynamic_ncols=True)


def run_experiment(
    path: str | Path, resume: bool | str = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train as the file says. `resume=True` continues from the run's checkpoint and fails
    when there is none; `resume="if-present"` starts afresh when there is none."""
    spec = read_experiment(path)
    train = spec["train"]
    torch.set_num_threads(int(train.get("threads", torch.get_num_threads())))
    seed = int(train.get("seed", 0))
    lr = float(train.get("lr", 1e-3))
    batch_size = int(train.get("batch_size", 64))
    run_dir = Path(spec["run"]["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "ckpt.safetensors"
    has_checkpoint = ckpt.exists() or training_state.previous(ckpt).exists()
    if resume is True and not has_checkpoint:
        raise ExperimentError(
            f"--resume: no checkpoint at {ckpt}; start the run without "
            "--resume, or use --resume-if-present"
        )
    try:
        data = datasets.load(spec["data"]["name"], **spec["data"].get("kwargs", {}))
    except TypeError as exc:
        raise ExperimentError(f"{path}: [data] kwargs: {exc}") from exc
    except datasets.DatasetError as exc:
        raise datasets.DatasetError(f"{path}: [data] {exc}") from exc
    try:
        datasets.check_splits(data, batch_size)
    except datasets.DatasetError as exc:
        raise ExperimentError(f"{path}: [train] batch_size: {exc}") from exc
    torch.manual_seed(seed)
    model = build_model(
        spec["model"]["factory"], spec["model"].get("kwargs", {}), search_folders(path)
    )

    bar = progress_bar(Path(path).stem) if log is print else None
    say = log if bar is None else bar.write  # a line printed beside the bar would glue to it

    def started(ctl: Perforator) -> None:
        if ctl.resumed_from is not None:
            say(f"resumed {ctl.resumed_from} at epoch {ctl.epoch}")

    def progress(ctl: Perforator, event: Event, val: float) -> None:
        total = perforate.parameter_report(model).total
        line = (
            f"epoch {ctl.epoch:>4}  {ctl.history[-1].phase:<8} val {100 * val:6.2f}%  "
            f"params {total:>8,}  {event.value}"
        )
        if bar is None:
            log(line)
            return
        bar.update(1)
        bar.set_postfix(
            phase=ctl.history[-1].phase, val=f"{100 * val:.2f}%", dendrites=ctl.dendrites_kept
        )
        if event != Event.CONTINUE:  # decisions stay on screen; plain epochs only tick
            bar.write(line)

    try:
        record = fit_classifier(
            model,
            data,
            spec["config"],
            seed=seed,
            lr=lr,
            candidate_lr=float(train.get("candidate_lr", 5 * lr)),
            batch_size=batch_size,
            optimizer=train.get("optimizer", "Adam"),
            weight_decay=float(train["weight_decay"]) if "weight_decay" in train else None,
            label=Path(path).stem,
            track_test=False,
            checkpoint_path=ckpt,
            resume=bool(resume) and has_checkpoint,
            started=started,
            progress=progress,
        ).to_dict()
    finally:
        if bar is not None:
            # Closing ends the bar's line, so an error message after it (the CLI's one
            # line) starts on a line of its own.
            bar.close()
    record["dataset"] = spec["data"]["name"]
    perforate.save(model, run_dir / "model.safetensors")
    atomic_write(run_dir / "results.json", json.dumps([record]).encode())
    plot_runs([record], run_dir / "demo.png", run_title(run_dir, [record]), [record["label"]])
    total = record["base_params"] + record["dendrite_params"]
    log(
        f"test {100 * record['test']:.2f}% at the best validation epoch; {total:,} parameters "
        f"({record['dendrite_params']:,} in dendrites)\nresults: {run_dir}"
    )
    return record
