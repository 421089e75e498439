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

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import perforate
from perforate import ConfigError, DendriteConfig, Event, Perforator, training_state
from perforate.files import atomic_write

from . import datasets
from .loop import OPTIMIZERS, fit_classifier
from .report import plot_runs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = {
    "model": {"factory", "kwargs"},
    "data": {"name", "kwargs"},
    "train": {"optimizer", "lr", "candidate_lr", "batch_size", "seed", "weight_decay", "threads"},
    "dendrites": None,  # validated by DendriteConfig
    "run": {"dir"},
}


def read_experiment(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for section, values in spec.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; use {', '.join(SECTIONS)}")
        allowed = SECTIONS[section]
        unknown = [] if allowed is None else [k for k in values if k not in allowed]
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {unknown} in [{section}]; allowed: {sorted(allowed)}"
            )
    for required in ("model", "data"):
        if required not in spec:
            raise ConfigError(f"{path}: missing section [{required}]")
    spec.setdefault("train", {})
    spec.setdefault("run", {"dir": f"runs/{path.stem}"})
    spec["config"] = DendriteConfig.from_dict(spec.get("dendrites", {}))
    opt = spec["train"].get("optimizer", "Adam")
    if opt not in OPTIMIZERS:
        raise ConfigError(f"{path}: optimizer {opt!r} is not one of {list(OPTIMIZERS)}")
    return spec


def import_factory(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ConfigError(f"model factory {path!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import model factory {path!r}: {exc}") from exc


def run_experiment(
    path: str | Path, resume: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    spec = read_experiment(path)
    train = spec["train"]
    torch.set_num_threads(int(train.get("threads", torch.get_num_threads())))
    seed = int(train.get("seed", 0))
    lr = float(train.get("lr", 1e-3))
    run_dir = Path(spec["run"]["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data = datasets.load(spec["data"]["name"], **spec["data"].get("kwargs", {}))
    torch.manual_seed(seed)
    model = import_factory(spec["model"]["factory"])(**spec["model"].get("kwargs", {}))
    ckpt = run_dir / "ckpt.safetensors"
    if resume and ckpt.exists():
        epoch = training_state.load(ckpt)["controller"]["epoch"]
        log(f"resumed {ckpt} at epoch {epoch}")

    def progress(ctl: Perforator, event: Event, val: float) -> None:
        total = perforate.parameter_report(model).total
        log(
            f"epoch {ctl.epoch:>4}  {ctl.history[-1].phase:<8} val {100 * val:6.2f}%  "
            f"params {total:>8,}  {event.value}"
        )

    record = fit_classifier(
        model,
        data,
        spec["config"],
        seed=seed,
        lr=lr,
        candidate_lr=float(train.get("candidate_lr", 5 * lr)),
        batch_size=int(train.get("batch_size", 64)),
        optimizer=train.get("optimizer", "Adam"),
        weight_decay=float(train["weight_decay"]) if "weight_decay" in train else None,
        label=Path(path).stem,
        track_test=False,
        checkpoint_path=ckpt,
        resume=resume,
        progress=progress,
    ).to_dict()
    perforate.save(model, run_dir / "model.safetensors")
    atomic_write(run_dir / "results.json", json.dumps([record]).encode())
    plot_runs([record], run_dir / "demo.png", f"{Path(path).stem}", curve_labels=[record["label"]])
    total = record["base_params"] + record["dendrite_params"]
    log(
        f"test {100 * record['test']:.2f}% at the best validation epoch; {total:,} parameters "
        f"({record['dendrite_params']:,} in dendrites)\nresults: {run_dir}"
    )
    return record
