"""`perforate train CONFIG.toml`: a whole run described by one file.

    [model]                      # any factory, by import path
    factory = "perforate.models:mlp"
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
`demo.png`; `perforate report RUN_DIR` redraws the figure.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from .accounting import parameter_report
from .checkpoint import atomic_write, save
from .config import DendriteConfig
from .controller import Perforator
from .errors import ConfigError
from .report import plot_runs
from .training import accuracy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = {
    "model": {"factory", "kwargs"},
    "data": {"name", "kwargs"},
    "train": {"optimizer", "lr", "candidate_lr", "batch_size", "seed", "weight_decay",
              "threads"},
    "dendrites": None,  # validated by DendriteConfig
    "run": {"dir"},
}
OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}


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
            raise ConfigError(f"{path}: unknown key(s) {unknown} in [{section}]; "
                              f"allowed: {sorted(allowed)}")
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


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def run_experiment(path: str | Path, resume: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    spec = read_experiment(path)
    train = spec["train"]
    torch.set_num_threads(int(train.get("threads", torch.get_num_threads())))
    seed = int(train.get("seed", 0))
    lr = float(train.get("lr", 1e-3))
    cand_lr = float(train.get("candidate_lr", 5 * lr))
    batch = int(train.get("batch_size", 64))
    opt_cls = OPTIMIZERS[train.get("optimizer", "Adam")]
    extra = {"weight_decay": float(train["weight_decay"])} if "weight_decay" in train else {}
    run_dir = Path(spec["run"]["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data = datasets.load(spec["data"]["name"], **spec["data"].get("kwargs", {}))
    torch.manual_seed(seed)
    model = import_factory(spec["model"]["factory"])(**spec["model"].get("kwargs", {}))
    ckpt = run_dir / "ckpt.safetensors"
    factories = {"optimizer": lambda p: opt_cls(p, lr=lr, **extra),
                 "candidate_optimizer": lambda p: opt_cls(p, lr=cand_lr, **extra)}
    if resume and ckpt.exists():
        ctl = Perforator.resume(ckpt, model, checkpoint_path=ckpt, **factories)
        log(f"resumed {ckpt} at epoch {ctl.epoch}")
    else:
        ctl = Perforator(model, spec["config"], seed=seed, checkpoint_path=ckpt, **factories)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    while not ctl.done:
        model.train()
        order = torch.randperm(len(data.y_train))
        batches = order.split(batch)
        for i, idx in enumerate(batches, 1):
            ctl.optimizer.zero_grad(set_to_none=True)
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            ctl.optimizer.step()
            if sys.stderr.isatty():
                sys.stderr.write(f"\repoch {ctl.epoch + 1} {ctl.phase.value:<8} "
                                 f"{_bar(i, len(batches))}")
        val = accuracy(model, data.x_val, data.y_val)
        event = ctl.end_epoch(val)
        report = parameter_report(model)
        log(f"\repoch {ctl.epoch:>4}  {ctl.history[-1].phase:<8} val {100 * val:6.2f}%  "
            f"params {report.total:>8,}  {event.value}")
    test = accuracy(model, data.x_test, data.y_test)
    report = parameter_report(model)
    record = {"label": f"{Path(path).stem}", "method": spec["config"].method, "seed": seed,
              "val": accuracy(model, data.x_val, data.y_val), "test": test,
              "base_params": report.base, "dendrite_params": report.dendrite,
              "dendrites_per_neuron": sum(r.dendrites for r in report.layers)
              / max(sum(r.neurons for r in report.layers), 1),
              "epochs": ctl.epoch, "seconds": time.perf_counter() - start,
              "history": [r.to_dict() for r in ctl.history], "test_by_epoch": [],
              "best_val": ctl.best_score}
    save(model, run_dir / "model.safetensors")
    atomic_write(run_dir / "results.json", json.dumps([record]).encode())
    plot_runs([record], run_dir / "demo.png", f"{Path(path).stem}",
              curve_labels=[record["label"]])
    log(f"test {100 * test:.2f}% at the best validation epoch; {report.total:,} parameters "
        f"({report.dendrite:,} in dendrites)\nresults: {run_dir}")
    return record
