"""The benchmark suite: when do dendrites earn their parameters?

Every suite trains, on one dataset and for every seed, the plain width ladder and, at the
suite's PB widths, the restart control and every dendrite method, all under the same epoch
rules. One JSON line per run goes to `benchmarks/results/<suite>.jsonl`; runs already
recorded there are skipped, so a suite resumes where it stopped and can be split across
processes with `--shard i/n`.

    perforate bench --suite mnist1d_mlp [--seeds 5] [--shard 0/2]
    perforate bench --report            # docs/benchmarks.md and docs/figures/bench_*.png
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perforate import DendriteConfig, hidden_layers_only
from perforate.config import REFERENCE_GD

from . import datasets, models
from .loop import fit_classifier

RESULTS_DIR = Path("benchmarks/results")


@dataclass(frozen=True)
class Method:
    """A benchmarked method: DendriteConfig overrides, and whether the model's output
    layer is left without dendrites."""

    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    hidden_only: bool = False
    # Later neuron phases as patient as the first (cycle_patience = the suite's patience).
    patient_cycles: bool = False


METHODS: dict[str, Method] = {
    "plain": Method(
        "plain training with early stopping (the width ladder)",
        {"method": "restart", "max_cycles": 0},
    ),
    "restart": Method(
        "restart control: PB's cycle schedule, best state restored and a fresh "
        "optimizer each cycle, no dendrites",
        {"method": "restart"},
    ),
    "pb": Method(
        "Perforated Backpropagation as in the paper: covariance-trained candidates "
        "(pool 4), installed frozen, perforated"
    ),
    "pb_learn": Method(
        "PB whose installed dendrites keep learning (still perforated)", {"dendrites_learn": True}
    ),
    "gd": Method(
        "GD dendrites: the reference library's open build (untrained dendrite added "
        "per neuron each cycle, trained jointly, not perforated)",
        REFERENCE_GD,
    ),
    "pb_hidden": Method(
        "PB on hidden layers only (the output layer gets no dendrites)", hidden_only=True
    ),
    "pb_selective": Method(
        "PB installing only where the best candidate's |r| >= 0.1", {"install_threshold": 0.1}
    ),
    "pb_patient": Method(
        "PB on the budget schedule with neuron phases after an install as patient as the "
        "first one (cycle_patience = patience)",
        patient_cycles=True,
    ),
    "pb_sparse": Method(
        "PB with restricted fan-in: every candidate sees 8 inputs sampled at random per "
        "candidate (a dendrite costs 10 parameters)",
        {"method": "sparse", "dendrite_fan_in": 8},
    ),
    "pb_closed_form": Method(
        "PB whose candidates start on the ridge direction of their neuron's error (20 "
        "warm-up batches), at 4 sigmoid slopes, then train on the objective",
        {"method": "closed_form"},
    ),
    "pb_output_error": Method(
        "boosting-like PB: candidates correlate with the error of the network's output "
        "(summed over the 10 outputs) instead of their own neuron's",
        {"method": "output_error"},
    ),
    "pb_epochs": Method(
        "PB with the schedule that was the default before 0.3: neuron phases of `patience` "
        "epochs after every install, dendrite phases of whole epochs with patience 3 (up "
        "to 20), no cost budget",
        {"switch_mode": "patience"},
    ),
}


@dataclass(frozen=True)
class Suite:
    name: str
    dataset: str
    load: Callable[[int], datasets.Splits]
    build: Callable[[int], nn.Module]  # width -> model
    model: str
    ladder: tuple[int, ...]
    pb_widths: tuple[int, ...]
    seeds: int
    methods: tuple[str, ...] = tuple(METHODS)
    lr: float = 1e-2
    candidate_lr: float = 5e-2
    batch_size: int = 64
    settings: dict[str, Any] = field(default_factory=dict)  # DendriteConfig overrides
    # Whether `load(seed)` draws a different sample per seed (scarce-data suites): every
    # method of a seed still shares it.
    data_per_seed: bool = False


def _subset(splits: datasets.Splits, train: int | None, val: int | None) -> datasets.Splits:
    return splits.subset(slice(0, train), slice(0, val))


def scarce(splits: datasets.Splits, fraction: float, seed: int) -> datasets.Splits:
    """`fraction` of the training split, drawn by `seed`, and as much of the validation
    split (at least 100 examples, so a decision rests on more than a handful); the test
    split whole. Input normalisation stays that of the full training split."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n_train = max(1, round(fraction * len(splits.y_train)))
    n_val = min(len(splits.y_val), max(100, round(fraction * len(splits.y_val))))
    t = torch.randperm(len(splits.y_train), generator=g)[:n_train]
    v = torch.randperm(len(splits.y_val), generator=g)[:n_val]
    return splits.subset(t, v, f"{splits.name}_{fraction:g}")


# Regime 4 of issue 14: candidate variants (the closed-form start needs Linear layers).
CANDIDATE_METHODS = ("pb_sparse", "pb_closed_form", "pb_output_error")
SCARCE_METHODS = ("plain", "restart", "pb", "gd", *CANDIDATE_METHODS)
CNN_METHODS = tuple(m for m in METHODS if m not in CANDIDATE_METHODS)


def _scarce_suites() -> list[Suite]:
    """Scarce data from scratch: 1%, 3% and 10% of Fashion-MNIST's and MNIST-1D's
    training sets (MNIST-1D generated with 20,000 examples so the test split has 3,000)."""
    bases = [  # name, dataset, full splits, inputs, ladder, PB widths
        ("fashion_mlp", "fashion_mnist", lambda: datasets.idx_directory(seed=0), 784,
         (4, 8, 16, 32, 64), (8,)),
        ("mnist1d_mlp", "mnist1d", lambda: datasets.mnist1d(0, samples=20_000), 40,
         (8, 16, 32, 64, 128), (32,)),
    ]  # fmt: skip
    return [
        Suite(
            f"{name}_{100 * fraction:g}pct",
            dataset,
            lambda seed, f=fraction, full=full: scarce(full(), f, seed),
            lambda w, n=inputs: models.mlp(n, w, 10),
            f"MLP {inputs}-H-10, {100 * fraction:g}% of the training set",
            ladder,
            pb_widths,
            5,
            methods=SCARCE_METHODS,
            batch_size=32,
            settings={"max_epochs": 500},
            data_per_seed=True,
        )
        for fraction in (0.01, 0.03, 0.1)
        for name, dataset, full, inputs, ladder, pb_widths in bases
    ]


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(
            "digits_mlp",
            "digits",
            lambda seed: datasets.digits(0),
            lambda w: models.mlp(64, w, 10),
            "MLP 64-H-10",
            (4, 8, 16, 32, 64),
            (8,),
            5,
        ),
        Suite(
            "mnist1d_mlp",
            "mnist1d",
            lambda seed: datasets.mnist1d(0),
            lambda w: models.mlp(40, w, 10),
            "MLP 40-H-10",
            (4, 8, 16, 32, 64, 128),
            (8, 32),
            5,
        ),
        Suite(
            "fashion_mlp",
            "fashion_mnist",
            lambda seed: datasets.idx_directory(seed=0),
            lambda w: models.mlp(784, w, 10),
            "MLP 784-H-10",
            (4, 8, 16, 32, 64),
            (8,),
            5,
            batch_size=128,
            settings={"patience": 5, "max_epochs": 250},
        ),
        Suite(
            "mnist1d_cnn",
            "mnist1d",
            lambda seed: datasets.mnist1d(0),
            lambda w: models.cnn1d(w),
            "CNN1d (conv+BN x2, width c, 2c)",
            (2, 4, 8, 16),
            (4,),
            3,
            methods=CNN_METHODS,
        ),
        Suite(
            "fashion_cnn",
            "fashion_mnist",
            lambda seed: _subset(datasets.idx_directory(seed=0), 5_000, 2_000),
            lambda w: models.cnn2d(w),
            "CNN2d (conv+BN x2, width c, 2c), 5k train images",
            (2, 4, 8),
            (4,),
            3,
            methods=CNN_METHODS,
            batch_size=128,
            settings={"patience": 4, "max_epochs": 60, "dendrite_max_epochs": 5},
        ),
        *_scarce_suites(),
    ]
}


def quick_suite() -> Suite:
    """A few minutes on 2 cores, run by the test suite so the pipeline cannot rot."""
    return Suite(
        "quick",
        "digits",
        lambda seed: datasets.digits(0),
        lambda w: models.mlp(64, w, 10),
        "MLP 64-H-10",
        (4, 8),
        (4,),
        2,
        settings={
            "patience": 2,
            "dendrite_patience": 1,
            "dendrite_max_epochs": 2,
            "max_dendrites": 1,
            "max_retries": 0,
            "max_epochs": 40,
        },
    )


def method_config(suite: Suite, method: str, model: nn.Module) -> DendriteConfig:
    spec = METHODS[method]
    config = DendriteConfig.from_dict({**suite.settings, **spec.overrides})
    if spec.patient_cycles:
        config = config.replace(cycle_patience=config.patience)
    return hidden_layers_only(model, config) if spec.hidden_only else config


def jobs(suite: Suite, seeds: int) -> list[tuple[str, int, int]]:
    out = []
    for seed in range(seeds):
        out += [("plain", w, seed) for w in suite.ladder if "plain" in suite.methods]
        out += [(m, w, seed) for w in suite.pb_widths for m in suite.methods if m != "plain"]
    return out


def _key(method: str, width: int, seed: int) -> tuple[str, int, int]:
    return (method, width, seed)


def recorded(path: Path) -> set[tuple[str, int, int]]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            keys.add(_key(r["method"], r["width"], r["seed"]))
    return keys


def pending(
    name: str,
    all_jobs: list[tuple[str, int, int]],
    results_dir: Path,
    shard: tuple[int, int],
    log: Callable[[str], None],
) -> tuple[Path, list[tuple[str, int, int]]]:
    """The suite's record file (created with its folder) and this shard's (method, width,
    seed) jobs not yet recorded there, logged. Sets the run's torch threads
    (PERFORATE_BENCH_THREADS, default 1)."""
    torch.set_num_threads(int(os.environ.get("PERFORATE_BENCH_THREADS", "1")))
    path = Path(results_dir) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = recorded(path)
    todo = [j for i, j in enumerate(all_jobs) if i % shard[1] == shard[0]]
    todo = [j for j in todo if _key(*j) not in done]
    log(f"{name}: {len(todo)} runs to do ({len(done)} recorded) -> {path}")
    return path, todo


def append_record(path: Path, row: dict[str, Any]) -> None:
    """One JSON line per run, synced: a crash loses only the run in flight."""
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_suite(
    suite: Suite,
    seeds: int | None = None,
    results_dir: Path = RESULTS_DIR,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> Path:
    seeds = suite.seeds if seeds is None else seeds
    path, todo = pending(suite.name, jobs(suite, seeds), results_dir, shard, log)
    data, data_seed = None, None
    for i, (method, width, seed) in enumerate(todo, 1):
        wanted = seed if suite.data_per_seed else 0
        if data is None or wanted != data_seed:
            data, data_seed = suite.load(wanted), wanted
        torch.manual_seed(seed)
        model = suite.build(width)
        config = method_config(suite, method, model)
        result = fit_classifier(
            model,
            data,
            config,
            seed=seed,
            lr=suite.lr,
            candidate_lr=suite.candidate_lr,
            batch_size=suite.batch_size,
            label=method,
        )
        row = {
            "suite": suite.name,
            "dataset": suite.dataset,
            "model": suite.model,
            "width": width,
            "method": method,
            "seed": seed,
            **result.summary(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        append_record(path, row)
        log(
            f"[{i}/{len(todo)}] {suite.name} {method:<12} H={width:<4} seed {seed}: "
            f"test {100 * result.test:5.2f}%  params {result.params:>7}  "
            f"{result.epochs:>3} ep  {result.seconds:6.1f} s"
        )
    return path
