"""A study: the user's task, how to train it, which arms to compare and how to judge them.

Read from a TOML file (`Study.from_toml`) or built in Python (`Study(...)` with the same
sections as dicts; callables allowed where the file names "module:function"). Every key is
checked against `SCHEMA`, which is also the one source of the generated page
`docs/study_file.md` (`perforate config --study-file`). Errors name the file, the section
and the key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perforate import ConfigError, DendriteConfig, PerforateError

from . import datasets, runs
from .arms import DEFAULT_ARMS, LADDER, REGISTRY, TRAINED_DEFAULT_ARMS, Arm, resolve_arms
from .task import LOSSES, METRICS, Task, TaskError, resolve_callable, resolve_loss, resolve_metric

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class StudyError(ConfigError):
    """A study file or study object has a wrong section, key or value."""


OPTIMIZERS = tuple(runs.OPTIMIZERS)  # the names the engine builds
MAX_SEED = 2**63 - 1


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _int(low: int, high: int = MAX_SEED) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        top = "2^63 - 1" if high == MAX_SEED else str(high)
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


def _non_negative_number(v: Any) -> str | None:
    value = _as_float(v)
    ok = value is not None and value >= 0
    return None if ok else f"must be a finite number >= 0, got {_short(v)}"


def _weight_decay(v: Any) -> str | None:
    # Above 1 the decay outweighs the gradient at any learning rate (and 1e308 overflows
    # the float32 parameters): a typo, not a setting.
    value = _as_float(v)
    ok = value is not None and 0 <= value <= 1
    return None if ok else f"must be a number from 0 to 1 (typically 1e-5 to 0.1), got {_short(v)}"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {v!r}"


def _callable_or_text(v: Any) -> str | None:
    return None if callable(v) else _text(v)


def _table(v: Any) -> str | None:
    return None if isinstance(v, Mapping) else f"must be a table, got {v!r}"


def _choice(options: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {list(options)}, got {v!r}"

    return check


def _seeds(v: Any) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000):
        return None
    return f'must be an integer from 1 to 1000 or "auto", got {v!r}'


def _names(v: Any) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
    return None if ok else f"must be a non-empty list of names, got {v!r}"


def _arms(v: Any) -> str | None:
    """Arm names; in Python also `Arm` objects (a study's own arms)."""
    ok = (
        isinstance(v, list)
        and v
        and all(isinstance(x, Arm) or (isinstance(x, str) and x) for x in v)
    )
    return None if ok else f"must be a non-empty list of names, got {v!r}"


def _widths(v: Any) -> str | None:
    ok = isinstance(v, list) and v and all(_int(1, 10**7)(x) is None for x in v)
    return None if ok else f"must be a non-empty list of integers >= 1, got {v!r}"


@dataclass(frozen=True)
class Key:
    """One key: whether it is required, how it is checked, what it means (for the docs)."""

    required: bool
    check: Callable[[Any], str | None]
    doc: str


SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "factory": Key(
            True,
            _callable_or_text,
            'import path of a function that builds the model, "module:function"; the '
            "module is looked for on the Python path, then beside the study file, then in "
            "the current folder",
        ),
        "kwargs": Key(False, _table, "keyword arguments for the factory (default: none)"),
        "checkpoint": Key(
            False,
            _text,
            "weights of a trained model to grow into (safetensors, or a torch.save state "
            "dict read weights-only), relative to the study file; keys matching the model "
            "in name and shape load",
        ),
        "trainable": Key(
            False,
            _names,
            'with checkpoint: fnmatch patterns of the parameters that train (e.g. ["fc.*"], '
            "a new head); the rest (the trunk) is frozen, except by finetune and lora",
        ),
        "width": Key(
            False,
            _text,
            'name of the factory\'s width argument (e.g. "hidden"); enables the width '
            "ladder, against which every arm is compared at equal parameters",
        ),
    },
    "data": {
        "name": Key(
            False,
            _choice(sorted(datasets.DATASETS)),
            f"a built-in data set ({', '.join(sorted(datasets.DATASETS))}); or give factory",
        ),
        "factory": Key(
            False,
            _callable_or_text,
            '"module:function" returning a mapping with keys train, val and test, each an '
            "(x, y) pair of tensors, a torch Dataset of (x, y) items or a DataLoader",
        ),
        "kwargs": Key(False, _table, "keyword arguments for the loader or factory"),
        "per_seed": Key(
            False,
            _text,
            "name of the loader's or factory's argument that receives the run's seed: each "
            "seed gets its own draw (a subset, a few-shot sample), shared by its arms",
        ),
    },
    "task": {
        "loss": Key(
            False,
            _callable_or_text,
            f"training loss: {', '.join(LOSSES)} (default cross_entropy) or "
            '"module:function" taking (outputs, targets) and returning a scalar tensor',
        ),
        "metric": Key(
            False,
            _callable_or_text,
            f"validation and test score: {', '.join(METRICS)} (default accuracy; mse is "
            'minimized) or "module:function" taking a split\'s (outputs, targets)',
        ),
        "direction": Key(
            False,
            _choice(("maximize", "minimize")),
            "whether a higher or lower metric is better; fixed by a built-in metric, "
            "required for your own",
        ),
    },
    "train": {
        "optimizer": Key(False, _choice(OPTIMIZERS), "Adam, AdamW or SGD (default Adam)"),
        "lr": Key(False, _positive_number, "learning rate, finite > 0 (default 0.001)"),
        "candidate_lr": Key(
            False, _positive_number, "learning rate of candidate dendrites (default 5 x lr)"
        ),
        "weight_decay": Key(
            False, _weight_decay, "number from 0 to 1 (default: the optimizer's own)"
        ),
        "batch_size": Key(
            False, _int(1), "training batch size, at most the training split's (default 64)"
        ),
        "eval_batch_size": Key(False, _int(1, 10**7), "batch size when scoring (default 1024)"),
        "max_epochs": Key(
            False, _int(1, 10**7), "most evaluations per run (default: [dendrites] max_epochs)"
        ),
        "amp": Key(
            False,
            _choice(("off", "bf16")),
            'mixed precision: "off" (default) or "bf16" (autocast; on CUDA or CPU)',
        ),
        "threads": Key(
            False, _int(1, 1024), "torch threads per run on the CPU, 1 to 1024 (default 1)"
        ),
        "seed": Key(False, _int(0), "seed of a `perforate train` run, 0 to 2^63 - 1 (default 0)"),
    },
    "compare": {
        "arms": Key(
            False,
            _arms,
            f"arms to run (default {', '.join(DEFAULT_ARMS)}, plus ladder with a width; with "
            f"a checkpoint {', '.join(TRAINED_DEFAULT_ARMS)}); "
            f"choose from {', '.join([*REGISTRY, LADDER])}",
        ),
        "seeds": Key(False, _seeds, 'number of paired seeds (default 3), or "auto"'),
        "max_seeds": Key(False, _int(3, 1000), 'seeds "auto" may reach (default 10)'),
        "reference": Key(
            False, _text, "the arm every other arm is compared with (default restart)"
        ),
        "rope": Key(
            False,
            _non_negative_number,
            "the smallest difference in the metric you care about (default 0.005 for "
            "accuracy, else 0): differences inside it count as equivalent",
        ),
        "ladder": Key(
            False, _widths, "widths of the ladder arm (default: half, 2x and 4x the width)"
        ),
        "fork": Key(
            False,
            lambda v: None if isinstance(v, bool) else f"must be true or false, got {v!r}",
            "share the first neuron phase between arms that agree on it (default true)",
        ),
    },
    "run": {"dir": Key(False, _text, "output folder (default runs/<file name>)")},
}
SECTIONS = (*SCHEMA, "dendrites")


def schema_markdown() -> str:
    """The study file format as the tables of docs/study_file.md, from `SCHEMA`."""
    lines = [
        "# Study files (`perforate compare`, `perforate train`)",
        "",
        "Generated by `perforate config --study-file` from "
        "`perforate.experiments.study.SCHEMA`; do not edit by hand. `docs/compare.md` "
        "walks through a first study.",
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
        "[data] needs exactly one of `name` and `factory`.",
        "",
        "## [dendrites]",
        "",
        "Any `DendriteConfig` setting (`docs/settings.md`, `perforate config`), for every "
        "arm; each arm lays its own settings over them (`perforate compare --list-arms`). "
        "Unknown sections, unknown keys and wrong values are refused with the file, section "
        "and key named.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Study:
    """The validated sections of a study (see `SCHEMA`)."""

    model: dict[str, Any]
    data: dict[str, Any]
    task: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    dendrites: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file it came from (factories are looked for beside it)
    name: str = "study"

    def __post_init__(self) -> None:
        where = str(self.source) if self.source is not None else "study"
        for section, keys in SCHEMA.items():
            values = getattr(self, section)
            if not isinstance(values, Mapping):
                raise StudyError(f"{where}: [{section}] must be a table")
            unknown = [k for k in values if k not in keys]
            if unknown:
                hint = _did_you_mean(unknown, keys)
                raise StudyError(
                    f"{where}: unknown key(s) {unknown} in [{section}]{hint}; "
                    f"allowed: {sorted(keys)}"
                )
            for key, spec in keys.items():
                if key not in values:
                    if spec.required:
                        raise StudyError(f"{where}: [{section}] needs {key} = ...")
                    continue
                problem = spec.check(values[key])
                if problem:
                    raise StudyError(f"{where}: [{section}] {key} {problem}")
        if ("name" in self.data) == ("factory" in self.data):
            raise StudyError(
                f"{where}: [data] needs exactly one of name (a built-in data set) and "
                'factory (your own, "module:function")'
            )
        width = self.model.get("width")
        if width is not None:
            value = self.model.get("kwargs", {}).get(width)
            if _int(1, 10**7)(value) is not None:
                raise StudyError(
                    f"{where}: [model] width = {width!r}, so [model] kwargs needs "
                    f"{width} = <an integer from 1 to 10,000,000>, got {value!r} (kwargs has "
                    f"{', '.join(self.model.get('kwargs', {})) or 'nothing'})"
                )
        if "ladder" in self.compare and width is None:
            raise StudyError(
                f"{where}: [compare] ladder needs [model] width = \"<the factory's width "
                'argument>"; without it there is no ladder to train'
            )
        try:
            self.base_config()
        except ConfigError as exc:
            raise StudyError(f"{where}: [dendrites] {exc}") from exc
        names = self.arm_names
        ref = self.reference
        if ref not in names and not (ref == "plain" or ref in REGISTRY):
            raise StudyError(f"{where}: [compare] reference {ref!r} is not an arm")
        try:
            arms = self.arms()
        except ConfigError as exc:
            raise StudyError(f"{where}: [compare] arms: {exc}") from exc
        needs = [a.name for a in arms if a.adapt != "default"]
        if needs and not self.model.get("checkpoint"):
            raise StudyError(
                f"{where}: arm(s) {needs} adapt a trained model: set [model] checkpoint "
                "(and trainable)"
            )
        if self.model.get("checkpoint") and not self.model.get("trainable"):
            raise StudyError(
                f"{where}: [model] checkpoint needs trainable = [patterns] naming what trains "
                'on the frozen trunk (e.g. ["fc.*"] for a new head)'
            )
        if ref not in {a.name for a in arms}:
            raise StudyError(
                f"{where}: [compare] reference {ref!r} is not among the arms "
                f"{[a.name for a in arms]}; add it to arms or choose another"
            )

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Study:
        path = Path(path)
        try:
            spec = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise StudyError(f"cannot read {path}: {exc}") from exc
        for section, values in spec.items():
            if section not in SECTIONS:
                raise StudyError(f"{path}: unknown section [{section}]; use {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise StudyError(f"{path}: [{section}] must be a table")
        for section in ("model", "data"):
            if section not in spec:
                raise StudyError(f"{path}: missing section [{section}]")
        return cls(**spec, source=path.resolve(), name=path.stem)

    # --- derived values ----------------------------------------------------------------
    @property
    def checkpoint(self) -> str | None:
        """The trained model's file, resolved beside the study file."""
        path = self.model.get("checkpoint")
        if path is None:
            return None
        base = self.source.parent if self.source is not None else Path.cwd()
        return str((base / path).resolve())

    @property
    def arm_names(self) -> list[str]:
        return [a.name if isinstance(a, Arm) else a for a in self._arm_specs]

    @property
    def _arm_specs(self) -> list[str | Arm]:
        if self.model.get("checkpoint"):
            return list(self.compare.get("arms", TRAINED_DEFAULT_ARMS))
        default = [*DEFAULT_ARMS, *([LADDER] if self.model.get("width") else [])]
        return list(self.compare.get("arms", default))

    @property
    def reference(self) -> str:
        return self.compare.get("reference", "restart")

    @property
    def base_width(self) -> int | None:
        width = self.model.get("width")
        return None if width is None else int(self.model["kwargs"][width])

    def arms(self, only: list[str] | None = None) -> list[Arm]:
        arms = resolve_arms(self._arm_specs, self.base_width, self.compare.get("ladder"))
        if only is not None:
            known = {a.name for a in arms} | {LADDER}
            unknown = [n for n in only if n not in known]
            if unknown:
                raise StudyError(
                    f"--arms {','.join(unknown)}: not arms of this study "
                    f"({', '.join(a.name for a in arms)})"
                )
            keep = set(only)
            arms = [a for a in arms if a.name in keep or (LADDER in keep and a.width)]
            if not arms:
                raise StudyError(f"--arms {','.join(only) or '(empty)'}: selects no arm to run")
        return arms

    def base_config(self) -> DendriteConfig:
        values = dict(self.dendrites)
        if "max_epochs" in self.train:
            values["max_epochs"] = self.train["max_epochs"]
        if values.get("direction", self.direction) != self.direction:
            raise ConfigError(
                f"direction = {values['direction']!r}, but the metric is better when "
                f"{self.direction[:-1]}ed: leave direction out of [dendrites] (the metric "
                "decides it; for your own metric set [task] direction)"
            )
        values["direction"] = self.direction
        return DendriteConfig.from_dict(values)

    @property
    def direction(self) -> str:
        metric = self.task.get("metric", "accuracy")
        if isinstance(metric, str) and metric in METRICS:
            return METRICS[metric].direction or "maximize"
        return self.task.get("direction", "maximize")

    @property
    def rope(self) -> float:
        if "rope" in self.compare:
            return float(self.compare["rope"])
        return 0.005 if self.task.get("metric", "accuracy") == "accuracy" else 0.0

    @property
    def search(self) -> list[Path]:
        from .task import search_path

        return search_path(self.source)

    def build_task(self) -> Task:
        """The task in this process: factories imported, loss and metric resolved."""
        search = self.search
        model_fn, model_name = resolve_callable(self.model["factory"], search, "model factory")
        if "factory" in self.data:
            data_fn, data_name = resolve_callable(self.data["factory"], search, "data factory")
        else:
            data_fn, data_name = datasets.DATASETS[self.data["name"]], self.data["name"]
        width = self.model.get("width")
        if width is not None:
            _check_accepts(model_fn, width, model_name)
        metric, direction = resolve_metric(
            self.task.get("metric", "accuracy"), self.task.get("direction"), search
        )
        return Task(
            model_factory=model_fn,
            data_factory=data_fn,
            model_kwargs=dict(self.model.get("kwargs", {})),
            data_kwargs=dict(self.data.get("kwargs", {})),
            data_seed_arg=self.data.get("per_seed"),
            width_arg=width,
            checkpoint=self.checkpoint,
            trainable=list(self.model.get("trainable", [])) or None,
            loss=resolve_loss(self.task.get("loss", "cross_entropy"), search),
            metric=metric,
            direction=direction,
            model_name=model_name,
            data_name=data_name,
        )

    def load_data(self, task: Task) -> None:
        """Load the task's data now and check its splits, naming the file and [data]."""
        try:
            task.data().check_sizes(int(self.train.get("batch_size", 64)))
            task.check_targets()
        except PerforateError as exc:
            where = self.source if self.source is not None else "study"
            raise StudyError(f"{where}: [data] {exc}") from exc

    def fingerprint(self) -> str:
        """What fixes the runs' results (not the arms or seeds chosen): a ledger written
        under another fingerprint belongs to another study."""
        return hashlib.sha256(
            json.dumps(self.identity(), sort_keys=True, default=_name_of).encode()
        ).hexdigest()[:16]

    def section_hashes(self) -> dict[str, str]:
        """Per part of `identity`, a short hash: says which part differs from a ledger's."""
        return {
            ("checkpoint" if k == "checkpoint_sha256" else k): hashlib.sha256(
                json.dumps(v, sort_keys=True, default=_name_of).encode()
            ).hexdigest()[:12]
            for k, v in self.identity().items()
        }

    def identity(self) -> dict[str, Any]:
        train = {k: v for k, v in self.train.items() if k not in ("threads",)}
        weights = None
        if self.checkpoint is not None and Path(self.checkpoint).is_file():
            digest = hashlib.sha256()
            with open(self.checkpoint, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            weights = digest.hexdigest()[:16]  # a retrained checkpoint is another study
        model = dict(self.model)
        if "checkpoint" in model and self.checkpoint is not None:
            # Its bytes name it; a per-seed pattern, its path relative to the study's folder
            # (or the current one): the same on every machine and however it was spelled.
            base = self.source.parent if self.source is not None else Path.cwd()
            model["checkpoint"] = None if weights else os.path.relpath(self.checkpoint, base)
        return {
            "checkpoint_sha256": weights,
            "model": model,
            "data": self.data,
            "task": self.task,
            "train": train,
            "dendrites": self.dendrites,
        }

    def to_dict(self) -> dict[str, Any]:
        return json.loads(
            json.dumps(
                {
                    "name": self.name,
                    "source": None if self.source is None else str(self.source),
                    **self.identity(),
                    "model": self.model,  # as written: `report_folder` rebuilds from it
                    "compare": self.compare,
                },
                default=_name_of,
            )
        )


def _name_of(obj: Any) -> Any:
    """Callables given in Python appear in fingerprints and files by their import path,
    a study's own arms by what they are."""
    if isinstance(obj, Arm):
        return obj.describe()
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _did_you_mean(unknown: list[str], keys: Any) -> str:
    import difflib

    hints = [
        f"{u!r} -> {m[0]!r}"
        for u in unknown
        for m in [difflib.get_close_matches(u, list(keys), n=1)]
        if m
    ]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _check_accepts(fn: Callable[..., Any], arg: str, name: str) -> None:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if arg in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    raise TaskError(
        f"[model] width = {arg!r}, but model factory {name} takes no argument {arg!r} "
        f"(it takes {', '.join(params) or 'nothing'})"
    )
