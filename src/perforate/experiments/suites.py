"""The built-in benchmark suites, each a list of studies on the compare engine.

`perforate bench --suite NAME` runs a suite's studies in order, each through
`compare.compare` into `benchmarks/results/<study>/` (one ledger per study: finished runs
are skipped, `--shard i/n` splits the chains between processes); `perforate bench
--report` renders the ledgers (`bench_report`). What is particular to a regime lives
here, as task and arm objects:

- scratch: digits, MNIST-1D and Fashion-MNIST MLPs and CNNs on the whole training set;
  the registry's methods plus two arms whose settings follow the suite's model or
  patience (`pb_hidden`, `pb_cycle_patience`); the candidate variants (`pb_sparse`,
  `pb_closed_form`, `pb_output_error`) are arms of the MLP studies.
- scarce: 1%, 3% or 10% of the training split, drawn per seed (`scarce`, a data factory
  that receives the run's seed: every arm of a seed sees the same draw).
- transfer: per seed a source MLP trained on classes 0-4 (`transfer_source`), its trunk
  (`export_trunks`: head removed) grown into on classes 5-9 from a few labels per class
  (`few_shot`), against head, restart, fine-tuning, LoRA and extra-neuron controls.
- compression: per seed a wide teacher (`compression_teacher`); students learn from its
  logits (`distilled` packs them beside the labels; `Distillation` is the loss). The
  students trained on labels alone are the `fashion_mlp` study.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import perforate
from perforate.config import REFERENCE_GD

from . import datasets, models
from .arms import Arm
from .study import Study
from .task import TaskError

RESULTS = Path("benchmarks/results")
SOURCE, TARGET = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
CANDIDATES = ("pb_sparse", "pb_closed_form", "pb_output_error")
# The study whose students trained on labels, for each compression suite's distilled ones.
LABELS = {"compression": "fashion_mlp", "quick_compression": "quick"}

# --- data: task objects of the regimes -----------------------------------------------------


@functools.lru_cache(maxsize=4)
def full(dataset: str, samples: int | None = None) -> datasets.Splits:
    """A built-in data set with its fixed split (seed 0), loaded once per process."""
    return datasets.DATASETS[dataset](**({} if samples is None else {"samples": samples}))


def head_rows(dataset: str, train: int, val: int) -> datasets.Splits:
    """The first `train` training and `val` validation rows, the test split whole."""
    return full(dataset).subset(slice(0, train), slice(0, val))


def scarce(dataset: str, fraction: float, seed: int, samples: int | None = None) -> datasets.Splits:
    """`fraction` of the training split drawn by `seed`, and as much of the validation
    split (at least 100 rows, so a decision rests on more than a handful); the test split
    whole. Inputs keep the full training split's normalisation."""
    splits = full(dataset, samples)
    g = torch.Generator().manual_seed(10_000 + seed)
    n_train = max(1, round(fraction * len(splits.y_train)))
    n_val = min(len(splits.y_val), max(100, round(fraction * len(splits.y_val))))
    t = torch.randperm(len(splits.y_train), generator=g)[:n_train]
    v = torch.randperm(len(splits.y_val), generator=g)[:n_val]
    return splits.subset(t, v, f"{splits.name}_{fraction:g}")


def classes(splits: datasets.Splits, keep: Sequence[int]) -> datasets.Splits:
    """Only the examples of the classes `keep`, relabelled 0..len(keep)-1."""
    lookup = torch.full((splits.num_classes,), -1, dtype=torch.long)
    lookup[list(keep)] = torch.arange(len(keep))

    def part(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = lookup[y] >= 0
        return x[mask], lookup[y[mask]]

    parts = [part(splits.x_train, splits.y_train), part(splits.x_val, splits.y_val)]
    parts.append(part(splits.x_test, splits.y_test))
    return datasets.Splits(
        f"{splits.name}_{len(keep)}", *[t for p in parts for t in p], num_classes=len(keep)
    )


def source_task(dataset: str, keep: list[int], limit: int | None = None) -> datasets.Splits:
    """The source task of transfer: classes `keep`, at most `limit` training rows."""
    splits = classes(full(dataset), keep)
    return splits if limit is None else splits.subset(slice(0, limit))


def few_shot(dataset: str, keep: list[int], shots: int, seed: int) -> datasets.Splits:
    """Classes `keep` with `shots` training and max(shots, 20) validation examples per
    class, drawn by `seed`; every test example of those classes."""
    splits = classes(full(dataset), keep)
    g = torch.Generator().manual_seed(20_000 + seed)

    def per_class(y: torch.Tensor, n: int) -> torch.Tensor:
        picks = []
        for c in range(splits.num_classes):
            idx = torch.nonzero(y == c).flatten()
            picks.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        return torch.cat(picks)

    t, v = per_class(splits.y_train, shots), per_class(splits.y_val, max(shots, 20))
    return splits.subset(t, v, f"{splits.name}_{shots}shot")


def distilled(
    teacher: str, seed: int, dataset: str = "fashion_mnist", hidden: int = 256
) -> dict[str, Any]:
    """The data set with each training target packed as [label, teacher logits...]: the
    teacher is the plain MLP of this seed in the `teacher` study's folder."""
    splits = full(dataset)
    path = Path(teacher) / "models" / "plain" / f"seed{seed}.safetensors"
    if not path.is_file():
        raise TaskError(
            f"no teacher model {path}: the suite runs its teacher study first (perforate "
            "bench --suite compression; with --shard, once every shard has finished it)"
        )
    inputs = int(torch.tensor(splits.input_shape).prod())
    model = perforate.load(models.mlp(inputs, hidden, splits.num_classes), path).eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in splits.x_train.split(4096)])
    target = torch.cat([splits.y_train[:, None].float(), logits], dim=1)
    return {
        "train": (splits.x_train, target),
        "val": (splits.x_val, splits.y_val),
        "test": (splits.x_test, splits.y_test),
    }


@dataclass(frozen=True)
class Distillation:
    """Hinton et al.'s loss, alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE,
    on targets packed by `distilled`; plain labels (1-D targets) give the CE alone."""

    temperature: float = 4.0
    alpha: float = 0.5

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        if target.dim() == 1:
            return F.cross_entropy(output, target)
        labels, teacher, t = target[:, 0].long(), target[:, 1:].float(), self.temperature
        soft = F.kl_div(
            F.log_softmax(output / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return self.alpha * t * t * soft + (1 - self.alpha) * F.cross_entropy(output, labels)


# --- models ---------------------------------------------------------------------------------


class TransferMLP(nn.Module):
    """MLP inputs-64-64-classes (`body.0`, `body.2`, `head`). At `width` > 64 the first
    hidden layer gets width - 64 new neurons beside the trunk's (`extra_in`, and
    `extra_out` into the second layer, starting at zero so the function starts as the
    trunk's): the `wider` arm of transfer is this factory at another width."""

    def __init__(self, inputs: int = 784, classes: int = 5, width: int = 64, hidden: int = 64):
        super().__init__()
        if width < hidden:
            raise ValueError(f"width {width} is below the trunk's {hidden} neurons")
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, classes)  # before the extras: the same head init
        self.extra = width - hidden
        if self.extra:
            self.extra_in = nn.Linear(inputs, self.extra)
            self.extra_out = nn.Linear(self.extra, hidden, bias=False)
            nn.init.zeros_(self.extra_out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        pre = self.body[2](torch.relu(self.body[0](x)))
        if self.extra:
            pre = pre + self.extra_out(torch.relu(self.extra_in(x)))
        return self.head(torch.relu(pre))


def export_trunks(root: Path, study: Study, seeds: int) -> None:
    """The source study's plain models as trunk files (`trunks/seed<s>.safetensors`, head
    removed) for the transfer studies' `[model] checkpoint`."""
    from safetensors.torch import save_file

    for seed in range(seeds):
        out = root / "trunks" / f"seed{seed}.safetensors"
        if out.is_file():
            continue
        model = perforate.load(
            TransferMLP(**study.model["kwargs"]),
            root / "models" / "plain" / f"seed{seed}.safetensors",
        )
        perforate.remove_dendrites(model)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if "head" not in k}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, out)


# --- arms -----------------------------------------------------------------------------------


def grown(name: str, help: str, overrides: dict[str, Any], **kw: Any) -> Arm:
    return Arm(name, help, overrides, grows=True, **kw)


def scratch_arms(model: nn.Module, patience: int, candidates: bool = True) -> list[Any]:
    """The methods of the from-scratch suites (registry names, or arms whose settings
    follow this suite's model and patience)."""
    arms: list[Any] = ["plain", "ladder", "restart", "pb", "pb_learn", "gd"]
    arms.append(
        grown(
            "pb_hidden",
            "PB on hidden layers only (the output layer gets no dendrites)",
            {"exclude": [perforate.output_layer(model)]},
        )
    )
    arms.append("pb_selective")
    arms.append(
        grown(
            "pb_cycle_patience",
            "PB with neuron phases after an install as patient as the first one "
            "(cycle_patience = the suite's patience)",
            {"cycle_patience": patience},
        )
    )
    if candidates:  # the closed-form start needs Linear layers
        arms += list(CANDIDATES)
    return [*arms, "pb_patient"]


SCARCE_ARMS = ["plain", "ladder", "restart", "pb", "gd", "pb_sparse", "pb_closed_form"]
SCARCE_ARMS.append("pb_output_error")
TRANSFER_ARMS = ["head", "restart", "finetune", "lora"]


def transfer_arms(extra_neurons: int, small_rank: int) -> list[Any]:
    """Transfer's arms: the frozen-trunk controls, fine-tuning, LoRA at the rank of one
    dendrite per neuron and at the budget of small-fan-in dendrites, extra neurons."""
    return [
        *TRANSFER_ARMS,
        Arm(
            "wider",
            f"trunk frozen, {extra_neurons} new trainable neurons beside the first hidden "
            "layer (about what one dendrite per neuron adds)",
            {"method": "restart", "max_cycles": 0},
            width=64 + extra_neurons,
        ),
        grown(
            "pb", "PB on the frozen trunk, at most one dendrite per neuron", {"max_dendrites": 1}
        ),
        grown(
            "gd",
            "GD dendrites on the frozen trunk, at most one per neuron",
            {**REFERENCE_GD, "max_dendrites": 1},
        ),
        "pb_sparse",
        Arm(
            "lora_small",
            f"LoRA at rank {small_rank}: about the parameters pb_sparse adds",
            {"method": "restart", "max_cycles": 0},
            adapt=f"lora:{small_rank}",
        ),
    ]


# --- studies and suites ---------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One study of a suite, and what follows its completion (e.g. trunk files)."""

    study: Study
    after: Callable[[Path, Study, int], None] | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    regime: str  # scratch | scarce | transfer | compression (quick_*: the same, in seconds)
    about: str
    steps: Callable[[Path], list[Step]]  # results folder -> its studies, in order


def study(name: str, model: dict, data: dict, arms: list, seeds: int, **sections: Any) -> Study:
    """A study with the suites' training defaults (Adam at 1e-2, candidates at 5e-2)."""
    train = {"lr": 1e-2, "candidate_lr": 5e-2, "batch_size": 64, **sections.pop("train", {})}
    compare = {"arms": arms, "seeds": seeds, **sections.pop("compare", {})}
    return Study(model=model, data=data, train=train, compare=compare, name=name, **sections)


def scratch(
    name: str,
    data: dict,
    factory: Callable[..., nn.Module],
    kwargs: dict,
    width_arg: str,
    widths: Sequence[int],
    ladder: Sequence[int],
    arms: str = "all",
    seeds: int = 5,
    **kw: Any,
) -> list[Step]:
    """One study per PB width (named `<name>_h<width>` when there are several), each with
    the plain model at the other widths of `ladder` as its width ladder."""
    steps = []
    for width in widths:
        model = {"factory": factory, "kwargs": {**kwargs, width_arg: width}, "width": width_arg}
        patience = kw.get("dendrites", {}).get("patience", 10)
        chosen = (
            SCARCE_ARMS
            if arms == "scarce"
            else scratch_arms(factory(**model["kwargs"]), patience, candidates=arms == "all")
        )
        compare = {"ladder": [w for w in ladder if w != width]}
        label = name if len(widths) == 1 else f"{name}_h{width}"
        steps.append(Step(study(label, model, data, chosen, seeds, compare=compare, **kw)))
    return steps


def mlp(inputs: int) -> tuple[Callable[..., nn.Module], dict, str]:
    return models.mlp, {"inputs": inputs, "classes": 10}, "hidden"


def drawn(dataset: str, fraction: float, **kw: Any) -> dict[str, Any]:
    return {"factory": scarce, "kwargs": {"dataset": dataset, "fraction": fraction, **kw},
            "per_seed": "seed"}  # fmt: skip


def transfer(root: Path, name: str, dataset: str, inputs: int, shots: Sequence[int],
             seeds: int, settings: dict) -> list[Step]:  # fmt: skip
    """A source study (its trunks exported when it completes), then one study per
    number of labels per class growing into those trunks."""
    source = study(
        f"{name}_source",
        {"factory": TransferMLP, "kwargs": {"inputs": inputs, "classes": len(SOURCE)}},
        {"factory": source_task, "kwargs": {"dataset": dataset, "keep": SOURCE}},
        ["plain"], seeds, train={"lr": 1e-3, "batch_size": 128}, dendrites=settings,
        compare={"reference": "plain"},
    )  # fmt: skip
    # Extra neurons sized to what one dendrite per neuron adds (fan-in + 2 per neuron).
    budget = 64 * (inputs + 2) + 64 * 66 + len(TARGET) * 66
    model = {
        "factory": TransferMLP,
        "kwargs": {"inputs": inputs, "classes": len(TARGET), "width": 64},
        "width": "width",
        "checkpoint": str(root / source.name / "trunks" / "seed{seed}.safetensors"),
        "trainable": ["head.*", "extra_*"],
    }
    steps = [Step(source, export_trunks)]
    for k in shots:
        data = {"factory": few_shot, "kwargs": {"dataset": dataset, "keep": TARGET, "shots": k},
                "per_seed": "seed"}  # fmt: skip
        arms = transfer_arms(round(budget / (inputs + 1 + 64)), 5)
        train = {"lr": 3e-3, "batch_size": 32}
        steps.append(Step(study(f"{name}_{k}", model, data, arms, seeds, train=train,
                                dendrites=settings)))  # fmt: skip
    return steps


def compression(root: Path, name: str, dataset: str, inputs: int, ladder: Sequence[int],
                width: int, teacher: int, seeds: int, settings: dict) -> list[Step]:  # fmt: skip
    """The teacher study, then the students distilled from its models."""
    factory, kwargs, arg = mlp(inputs)

    def model(w: int) -> dict[str, Any]:
        return {"factory": factory, "kwargs": {**kwargs, arg: w}, "width": arg}

    teach = study(f"{name}_teacher", model(teacher), {"name": dataset}, ["plain"], seeds,
                  train={"lr": 1e-3, "batch_size": 128}, dendrites=settings,
                  compare={"reference": "plain"})  # fmt: skip
    logits = {"teacher": str(root / teach.name), "dataset": dataset, "hidden": teacher}
    data = {"factory": distilled, "per_seed": "seed", "kwargs": logits}
    students = study(f"{name}_kd", model(width), data, ["plain", "ladder", "restart", "pb"],
                     seeds, train={"batch_size": 128}, dendrites=settings,
                     task={"loss": Distillation(4.0, 0.5)},
                     compare={"ladder": [w for w in ladder if w != width]})  # fmt: skip
    return [Step(teach), Step(students)]


FASHION, MNIST1D, DIGITS = {"name": "fashion_mnist"}, {"name": "mnist1d"}, {"name": "digits"}
FASHION_MLP = {"train": {"batch_size": 128}, "dendrites": {"patience": 5, "max_epochs": 250}}
SCARCE = {"arms": "scarce", "train": {"batch_size": 32}, "dendrites": {"max_epochs": 500}}
QUICK = {  # minutes become seconds: every regime's pipeline in CI
    "patience": 2, "dendrite_patience": 1, "dendrite_max_epochs": 2, "max_dendrites": 1,
    "max_retries": 0, "max_epochs": 40,
}  # fmt: skip


# fmt: off
def _suites() -> list[Suite]:
    cnn1d, cnn2d = (models.cnn1d, {}, "width"), (models.cnn2d, {}, "width")
    five_k = {"factory": head_rows,
              "kwargs": {"dataset": "fashion_mnist", "train": 5_000, "val": 2_000}}
    small_cnn = {"train": {"batch_size": 128},
                 "dendrites": {"patience": 4, "max_epochs": 60, "dendrite_max_epochs": 5}}
    out = [
        Suite("digits_mlp", "scratch", "digits, MLP 64-H-10, PB at H=8", lambda r: scratch(
            "digits_mlp", DIGITS, *mlp(64), [8], (4, 8, 16, 32, 64))),
        Suite("mnist1d_mlp", "scratch", "MNIST-1D, MLP 40-H-10, PB at 8, 32", lambda r: scratch(
            "mnist1d_mlp", MNIST1D, *mlp(40), [8, 32], (4, 8, 16, 32, 64, 128))),
        Suite("fashion_mlp", "scratch", "Fashion-MNIST, MLP 784-H-10, PB at 8", lambda r: scratch(
            "fashion_mlp", FASHION, *mlp(784), [8], (4, 8, 16, 32, 64), **FASHION_MLP)),
        Suite("mnist1d_cnn", "scratch", "MNIST-1D, CNN1d (conv+BN), PB at 4", lambda r: scratch(
            "mnist1d_cnn", MNIST1D, *cnn1d, [4], (2, 4, 8, 16), "cnn", 3)),
        Suite("fashion_cnn", "scratch", "Fashion-MNIST 5k, CNN2d, PB at 4", lambda r: scratch(
            "fashion_cnn", five_k, *cnn2d, [4], (2, 4, 8), "cnn", 3, **small_cnn)),
    ]
    for f in (0.01, 0.03, 0.1):
        p = f"{100 * f:g}pct"
        out += [
            Suite(f"fashion_mlp_{p}", "scarce", f"Fashion-MNIST, {p[:-3]}% drawn per seed, "
                  "MLP 784-H-10, PB at H=8", lambda r, f=f, p=p: scratch(
                      f"fashion_mlp_{p}", drawn("fashion_mnist", f), *mlp(784), [8],
                      (4, 8, 16, 32, 64), **SCARCE)),
            Suite(f"mnist1d_mlp_{p}", "scarce", f"MNIST-1D (20,000), {p[:-3]}% drawn per seed, "
                  "MLP 40-H-10, PB at H=32", lambda r, f=f, p=p: scratch(
                      f"mnist1d_mlp_{p}", drawn("mnist1d", f, samples=20_000), *mlp(40), [32],
                      (8, 16, 32, 64, 128), **SCARCE)),
        ]
    quick = {"seeds": 2, "dendrites": QUICK}
    short = {**QUICK, "max_epochs": 20}
    out += [
        Suite("transfer", "transfer", "Fashion-MNIST classes 0-4 -> 5-9, 10/30/100/300 labels "
              "per class, MLP 784-64-64-5 grown into", lambda r: transfer(
                  r, "transfer", "fashion_mnist", 784, (10, 30, 100, 300), 5,
                  {"max_epochs": 400})),
        Suite("compression", "compression", "Fashion-MNIST MLP 784-H-10 students distilled "
              "from a 784-256-10 teacher", lambda r: compression(
                  r, "compression", "fashion_mnist", 784, (4, 8, 16, 32), 8, 256, 5,
                  {"patience": 5, "max_epochs": 250})),
        # Every regime's pipeline on digits, in seconds (tests, CI).
        Suite("quick", "scratch", "digits, MLP 64-H-10 at H=4, every arm", lambda r: scratch(
            "quick", DIGITS, *mlp(64), [4], (4, 8), **quick)),
        Suite("quick_scarce", "scarce", "digits, 20% drawn per seed", lambda r: scratch(
            "quick_scarce", drawn("digits", 0.2), *mlp(64), [4], (4, 8), **{**SCARCE, **quick})),
        Suite("quick_transfer", "transfer", "digits 0-4 -> 5-9, 10 labels", lambda r: transfer(
            r, "quick_transfer", "digits", 64, (10,), 2, short)),
        Suite("quick_compression", "compression", "digits, 64-32-10 teacher", lambda r: compression(
            r, "quick_compression", "digits", 64, (4, 8), 4, 32, 2, short)),
    ]
    return out
# fmt: on


SUITES: dict[str, Suite] = {s.name: s for s in _suites()}


def studies(name: str, root: str | os.PathLike = RESULTS) -> list[Study]:
    return [step.study for step in SUITES[name].steps(Path(root))]


def run_suite(
    name: str,
    results: str | os.PathLike = RESULTS,
    seeds: int | None = None,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> bool:
    """Run (or resume) a suite's studies in order; False while another shard still has
    runs of a study that a later one needs (then run the same command again)."""
    from .compare import compare

    root = Path(results)
    for step in SUITES[name].steps(root):
        n = int(seeds if seeds is not None else step.study.compare["seeds"])
        out = root / step.study.name
        report = compare(step.study, out=out, seeds=n, shard_of=shard, log_line=log, progress=False)
        if report is None:
            log(f"{name}: {step.study.name} waits for other shards; run the command again")
            return False
        if step.after is not None:
            step.after(out, step.study, n)
    return True
