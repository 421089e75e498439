"""Growing into a trained model: the case users bring (issue 14, first regime).

"I have a trained network; make it better on my new task without retraining it wider."
Per seed, a source MLP 784-64-64-5 is trained (plain, early stopping) on Fashion-MNIST
classes 0-4. Each arm then adapts it to classes 5-9 from `shots` labelled training images
per class (validation: as many per class, at least 20; test: every test image of those
classes), with a fresh head:

    head          trunk frozen, only the new head trains
    head_restart  the same on the restart schedule (the control for the cycles themselves)
    finetune      everything trains
    lora          trunk frozen, LoRA (the `peft` library) on both trunk layers + the head
    wider         trunk frozen, new trainable neurons beside the first hidden layer + head
    pb            trunk frozen, PB dendrites (one per neuron at most) + the head
    gd            trunk frozen, GD dendrites (one per neuron at most) + the head
    pb_sparse     trunk frozen, PB dendrites that see 8 random inputs each (up to 8 per
                  neuron, 10 parameters each) + the head
    lora_small    `lora` at rank 5: the ~5,000 parameters pb_sparse added at 300 labels

`lora` and `wider` are sized to the parameters one dendrite per neuron adds (within 5%);
`pb` and `gd` add them only where a cycle is kept. Every arm uses the same loop, learning
rate, batch size and stopping rules; nothing was tuned on test data (the learning rate was
fixed before any run).

    perforate bench --suite transfer [--shard 0/2]
"""

from __future__ import annotations

import importlib.util
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perforate import DendriteConfig, remove_dendrites
from perforate.config import REFERENCE_GD

from . import datasets, models
from .bench import RESULTS_DIR, append_record, pending
from .loop import fit_classifier

HIDDEN = 64
SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def classes(splits: datasets.Splits, keep: tuple[int, ...]) -> datasets.Splits:
    """Only the examples of `keep`, relabelled 0..len(keep)-1."""
    lookup = torch.full((splits.num_classes,), -1, dtype=torch.long)
    lookup[list(keep)] = torch.arange(len(keep))

    def part(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = lookup[y] >= 0
        return x[mask], lookup[y[mask]]

    tr, va, te = (
        part(splits.x_train, splits.y_train),
        part(splits.x_val, splits.y_val),
        part(splits.x_test, splits.y_test),
    )
    return datasets.Splits(f"{splits.name}_{len(keep)}", *tr, *va, *te, len(keep))


def few_shot(splits: datasets.Splits, shots: int, seed: int) -> datasets.Splits:
    """`shots` training and max(shots, 20) validation examples per class, drawn by `seed`."""
    g = torch.Generator().manual_seed(20_000 + seed)

    def per_class(y: torch.Tensor, n: int) -> torch.Tensor:
        picks = []
        for c in range(splits.num_classes):
            idx = torch.nonzero(y == c).flatten()
            picks.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        return torch.cat(picks)

    t = per_class(splits.y_train, shots)
    v = per_class(splits.y_val, max(shots, 20))
    return splits.subset(t, v, f"{splits.name}_{shots}shot")


def trunk_model(classes_out: int) -> nn.Sequential:
    """Flatten, Linear(784, 64) "1", ReLU, Linear(64, 64) "3", ReLU, head Linear "5"."""
    return models.mlp(784, HIDDEN, classes_out, depth=2)


def dendrite_parameters() -> int:
    """What one dendrite per neuron adds on every Linear of the target model: per neuron
    its input weights and bias and its output weight (no cascade for a first dendrite)."""
    fan_ins = [(784, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, len(TARGET))]
    return sum(neurons * (fan_in + 2) for fan_in, neurons in fan_ins)


def lora_rank() -> int:
    """The LoRA rank on both trunk layers whose A and B matrices come closest to
    `dendrite_parameters()`: r * (784 + 64) + r * (64 + 64) per rank."""
    return round(dendrite_parameters() / ((784 + HIDDEN) + (HIDDEN + HIDDEN)))


# LoRA at the budget of small-fan-in dendrites: rank 5 adds 5 * 976 = 4,880 parameters,
# against the 4,974 pb_sparse added on average at 300 labels per class (its largest).
SMALL_LORA_RANK = 5


def extra_neurons() -> int:
    """New first-layer neurons (784 inputs and a bias each, 64 weights into the second
    layer) closest to `dendrite_parameters()`."""
    return round(dendrite_parameters() / (784 + 1 + HIDDEN))


class Wider(nn.Module):
    """The source trunk with `extra` trainable neurons beside its first hidden layer; their
    weights into the second layer start at zero, so the function starts as the trunk's."""

    def __init__(self, base: nn.Sequential, extra: int) -> None:
        super().__init__()
        self.base = base
        self.extra_in = nn.Linear(784, extra)
        self.extra_out = nn.Linear(extra, HIDDEN, bias=False)
        nn.init.zeros_(self.extra_out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        x = b[0](x)
        h1 = b[2](b[1](x))
        h2 = b[4](b[3](h1) + self.extra_out(torch.relu(self.extra_in(x))))
        return b[5](h2)


def _freeze(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


def _only_head(name: str) -> dict[str, Any]:
    """Wrap only the head: arms without dendrites gain nothing from wrapped layers."""
    return {"include": (name,)}


PLAIN = {"method": "restart", "max_cycles": 0}


def build_arm(arm: str, source: dict[str, torch.Tensor], seed: int):
    """(model, config overrides) for `arm`, starting from the source trunk's weights."""
    torch.manual_seed(1_000 + seed)  # the head's init: the same for every arm of a seed
    model = trunk_model(len(TARGET))
    trunk = {k: v for k, v in source.items() if not k.startswith("5.")}
    loaded = model.load_state_dict(trunk, strict=False)
    if loaded.unexpected_keys or set(loaded.missing_keys) != {"5.weight", "5.bias"}:
        raise RuntimeError(f"the source trunk does not fit the target model: {loaded}")
    frozen = (model[1], model[3])
    if arm == "finetune":
        return model, {**PLAIN, **_only_head("5")}
    if arm in ("lora", "lora_small"):
        from peft import LoraConfig, get_peft_model

        r = lora_rank() if arm == "lora" else SMALL_LORA_RANK
        peft_model = get_peft_model(
            model, LoraConfig(r=r, lora_alpha=r, target_modules=["1", "3"], lora_dropout=0.0)
        )
        for p in model[5].parameters():
            p.requires_grad_(True)
        return peft_model, {**PLAIN, **_only_head("base_model.model.5")}
    _freeze(*frozen)
    if arm == "wider":
        return Wider(model, extra_neurons()), {**PLAIN, **_only_head("base.5")}
    if arm == "head":
        return model, {**PLAIN, **_only_head("5")}
    if arm == "head_restart":
        return model, {"method": "restart", **_only_head("5")}
    if arm == "pb":
        return model, {"max_dendrites": 1}
    if arm == "gd":
        return model, {**REFERENCE_GD, "max_dendrites": 1}
    if arm == "pb_sparse":  # small fan-in: far fewer parameters than the other arms
        return model, {"method": "sparse", "dendrite_fan_in": 8}
    raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")


ARMS = (
    "head",
    "head_restart",
    "finetune",
    "lora",
    "wider",
    "pb",
    "gd",
    "pb_sparse",
    "lora_small",
)


@dataclass(frozen=True)
class TransferSuite:
    name: str = "transfer"
    shots: tuple[int, ...] = (10, 30, 100, 300)
    seeds: int = 5
    arms: tuple[str, ...] = ARMS
    lr: float = 3e-3
    candidate_lr: float = 5e-2
    batch_size: int = 32
    source_lr: float = 1e-3
    source_limit: int | None = None  # source training images (None: all)
    settings: tuple[tuple[str, Any], ...] = (("max_epochs", 400),)


def quick_transfer() -> TransferSuite:
    """Minutes on 2 cores: the pipeline end to end, for the test suite."""
    return TransferSuite(
        "transfer_quick",
        shots=(10,),
        seeds=1,
        source_limit=2_000,
        settings=(("max_epochs", 30), ("patience", 2), ("cycle_patience", 1)),
    )


def train_source(data: datasets.Splits, suite: TransferSuite, seed: int) -> dict[str, Any]:
    """The source model of `seed`: plain training with early stopping on classes 0-4."""
    source = classes(data, SOURCE)
    if suite.source_limit is not None:
        source = source.subset(slice(0, suite.source_limit))
    torch.manual_seed(seed)
    model = trunk_model(len(SOURCE))
    result = fit_classifier(
        model,
        source,
        DendriteConfig.from_dict({**PLAIN, **dict(suite.settings)}),
        seed=seed,
        lr=suite.source_lr,
        batch_size=128,
        track_test=False,
    )
    remove_dendrites(model)  # the plain network's keys: "1.weight", ...
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "test": result.test, "epochs": result.epochs}


def jobs(suite: TransferSuite) -> list[tuple[str, int, int]]:
    return [(a, k, s) for s in range(suite.seeds) for k in suite.shots for a in suite.arms]


def run_transfer(
    suite: TransferSuite,
    results_dir: Path = RESULTS_DIR,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
    data: datasets.Splits | None = None,
) -> Path:
    """Run every (arm, shots, seed) not yet recorded in `<results_dir>/<name>.jsonl`."""
    path, todo = pending(suite.name, jobs(suite), results_dir, shard, log)
    if not todo:
        return path
    if (
        any(arm.startswith("lora") for arm, _, _ in todo)
        and importlib.util.find_spec("peft") is None
    ):
        # Named, so the command line's one-line message for missing extras applies.
        raise ModuleNotFoundError("the transfer suite's LoRA arms need peft", name="peft")
    data = datasets.idx_directory(seed=0) if data is None else data
    target = classes(data, TARGET)
    sources: dict[int, dict[str, Any]] = {}
    for i, (arm, shots, seed) in enumerate(todo, 1):
        if seed not in sources:
            sources[seed] = train_source(data, suite, seed)
        src = sources[seed]
        model, overrides = build_arm(arm, src["state"], seed)
        config = DendriteConfig.from_dict({**dict(suite.settings), **overrides})
        result = fit_classifier(
            model,
            few_shot(target, shots, seed),
            config,
            seed=seed,
            lr=suite.lr,
            candidate_lr=suite.candidate_lr,
            batch_size=suite.batch_size,
            label=arm,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        row = {
            "suite": suite.name,
            "dataset": "fashion_mnist 0-4 -> 5-9",
            "model": f"MLP 784-{HIDDEN}-{HIDDEN}-5",
            "width": shots,
            "shots": shots,
            "method": arm,
            "seed": seed,
            "source_test": src["test"],
            "trainable_params": trainable,
            **result.summary(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        append_record(path, row)
        log(
            f"[{i}/{len(todo)}] {suite.name} {arm:<12} {shots:>3} shots seed {seed}: "
            f"test {100 * result.test:5.2f}%  params {result.params:>7}  "
            f"{result.epochs:>3} ep  {result.seconds:6.1f} s"
        )
    return path
