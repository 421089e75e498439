"""What the user brings to a study: a model factory, data, a loss, a metric, a direction.

A `Task` is built from a study's `[model]`, `[data]` and `[task]` sections (or given in
Python). It knows how to build the model at a width, iterate the training split in batches
on a device, and score a split. Data may be, per split, an `(x, y)` pair of tensors, a
torch `Dataset` of `(x, y)` items or a `DataLoader` yielding `(x, y)` batches; tensors
already on the device stay there, DataLoaders are iterated exactly as given.

Batches of tensor data are drawn with a permutation from the process RNG, so a run seeded
once, and a run resumed from a checkpoint that holds that RNG, see the same batches.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from perforate import ConfigError, PerforateError

from .imports import import_object

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # in messages


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line errors (tracebacks stay on `__cause__`)."""
    return (str(exc).strip().splitlines() or [""])[0]


class TaskError(ConfigError):
    """A study's model, data, loss or metric is missing, malformed or contradicts itself."""


# --- losses and metrics ---------------------------------------------------------------------


def _match(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A regression model's (N, 1) output against (N,) targets: same shape, same values."""
    if output.shape != target.shape and output.numel() == target.numel():
        return output.reshape(target.shape)
    return output


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.float(), target)


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(_match(output, target).float(), target.float())


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
}


@dataclass(frozen=True)
class Metric:
    """A score over a whole split. Built-in metrics stream sums on the device (one host
    read per evaluation); a user's function gets the split's outputs and targets at once."""

    name: str
    direction: str | None  # None: the user must say
    per_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    finish: Callable[[float, int], float] | None = None
    whole: Callable[[torch.Tensor, torch.Tensor], Any] | None = None
    # Targets the metric cannot score (a label outside the output's classes), counted on
    # the device with the sums: any such row refuses the score instead of counting wrong.
    invalid: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def _correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(-1) == target).sum()


def _outside_classes(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((target < 0) | (target >= output.shape[-1])).sum()


def _squared(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((_match(output, target).float() - target.float()) ** 2).sum()


METRICS: dict[str, Metric] = {
    "accuracy": Metric(
        "accuracy", "maximize", _correct, lambda s, n: s / n, invalid=_outside_classes
    ),
    "neg_mse": Metric("neg_mse", "maximize", _squared, lambda s, n: -s / n),
    "mse": Metric("mse", "minimize", _squared, lambda s, n: s / n),
}

# Words in a user's metric name that say "lower is better" (Keras' mode="auto" reads names).
LOSS_WORDS = ("loss", "error", "mse", "mae", "rmse", "perplexity")


# --- data -----------------------------------------------------------------------------------


def move(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    """A batch (tensor, or tuple/list/dict of them) on `device`."""
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        if non_blocking and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move(b, device, non_blocking) for b in batch)
    if isinstance(batch, Mapping):
        return {k: move(v, device, non_blocking) for k, v in batch.items()}
    return batch


@dataclass
class Split:
    """One split of the data, in whichever of the three accepted forms."""

    name: str
    source: Any

    def __post_init__(self) -> None:
        src = self.source
        if isinstance(src, (tuple, list)) and len(src) == 2:
            x, y = src
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                raise TaskError(
                    f"data split {self.name!r}: an (x, y) pair must hold two tensors, got "
                    f"({type(x).__name__}, {type(y).__name__})"
                )
            sparse = [n for n, t in (("x", x), ("y", y)) if t.layout != torch.strided]
            if sparse:  # batches are row slices and the digest reads the bytes
                raise TaskError(
                    f"data split {self.name!r}: {' and '.join(sparse)} is a sparse tensor "
                    f"({(x if sparse[0] == 'x' else y).layout}); pass .to_dense(), or a "
                    "Dataset whose items are dense rows"
                )
            if x.shape[:1] != y.shape[:1]:
                raise TaskError(
                    f"data split {self.name!r}: x has {x.shape[0]} rows and y {y.shape[0]}; "
                    "they must match"
                )
            self.source = (x, y)
        elif not isinstance(src, (Dataset, DataLoader)):
            raise TaskError(
                f"data split {self.name!r} is a {type(src).__name__}; give an (x, y) pair of "
                "tensors, a torch Dataset of (x, y) items or a DataLoader of (x, y) batches"
            )

    @property
    def rows(self) -> int | None:
        src = self.source
        if isinstance(src, tuple):
            return len(src[1])
        try:
            return len(src.dataset if isinstance(src, DataLoader) else src)  # type: ignore[arg-type]
        except TypeError:  # an IterableDataset without a length
            return None

    def batches(
        self, batch_size: int, shuffle: bool, device: torch.device
    ) -> Iterator[tuple[Any, Any]]:
        """(x, y) batches on `device`; tensor data shuffled from the process RNG."""
        non_blocking = device.type == "cuda"
        src = self.source
        if isinstance(src, tuple):
            x, y = src
            n = len(y)
            order = torch.randperm(n) if shuffle else torch.arange(n)
            for idx in order.split(batch_size):
                idx = idx.to(x.device) if x.device.type != "cpu" else idx
                yield move((x[idx], y[idx.to(y.device)]), device, non_blocking)
            return
        if isinstance(src, IterableDataset):  # streams in its own order: no shuffling
            src = DataLoader(src, batch_size=batch_size, pin_memory=non_blocking)
        elif isinstance(src, Dataset):
            src = DataLoader(src, batch_size=batch_size, shuffle=shuffle, pin_memory=non_blocking)
        for batch in src:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TaskError(
                    f"data split {self.name!r}: a batch must be an (x, y) pair, got a "
                    f"{type(batch).__name__}"
                    + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
                )
            yield move(tuple(batch), device, non_blocking)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split

    @classmethod
    def from_mapping(cls, data: Any, where: str = "the data factory") -> Data:
        if hasattr(data, "x_train") and hasattr(data, "y_test"):  # a built-in `Splits`
            data = {
                "train": (data.x_train, data.y_train),
                "val": (data.x_val, data.y_val),
                "test": (data.x_test, data.y_test),
            }
        if not isinstance(data, Mapping):
            raise TaskError(
                f"{where} returned a {type(data).__name__}; return a mapping with keys "
                "'train', 'val' and 'test'"
            )
        missing = [s for s in SPLITS if s not in data]
        extra = [k for k in data if k not in SPLITS]
        if missing or extra:
            raise TaskError(
                f"{where} returned keys {sorted(map(str, data))}; it must return exactly "
                "'train', 'val' and 'test'"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
            )
        return cls(*(Split(s, data[s]) for s in SPLITS))

    def digest(self) -> str:
        """Sizes and, for tensor splits, a hash of their bytes: runs made on other data
        are not pooled with these (the ledger keeps it)."""
        import hashlib

        h = hashlib.sha256()
        for name in SPLITS:
            split = getattr(self, name)
            h.update(f"{name}:{split.rows}".encode())
            if isinstance(split.source, tuple):
                for t in split.source:
                    t = t.detach()
                    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
                    flat = t.reshape(-1)[: 1 << 24].cpu().contiguous()  # at most 16M values
                    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        return h.hexdigest()[:16]

    def sample_target(self, split: str = "train") -> torch.Tensor | None:
        """Some targets of a split, without iterating a DataLoader (None when unknown)."""
        src = getattr(self, split).source
        if isinstance(src, tuple):
            return src[1][:64]
        dataset = src.dataset if isinstance(src, DataLoader) else src
        try:
            item = dataset[0]  # type: ignore[index]
        except Exception:  # an IterableDataset, or items we cannot index
            return None
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return torch.as_tensor(item[1])
        return None

    def check_sizes(self, batch_size: int) -> None:
        """Refuse empty splits and a training split smaller than one batch, naming sizes."""
        names = SPLIT_NAMES
        rows = {s: getattr(self, s).rows for s in SPLITS}
        sizes = " / ".join(f"{names[s]} {'?' if r is None else f'{r:,}'}" for s, r in rows.items())
        for split, r in rows.items():
            if r == 0:
                raise TaskError(f"the {names[split]} split is empty ({sizes} rows)")
        train = rows["train"]
        if train is not None and isinstance(self.train.source, tuple) and train < batch_size:
            raise TaskError(
                f"the training split is smaller than one batch ({sizes} rows, batch size "
                f"{batch_size}); lower [train] batch_size to at most {train:,}"
            )


# --- the task -------------------------------------------------------------------------------


@dataclass
class Task:
    """A model factory (with an optional width argument), data, loss and metric."""

    model_factory: Callable[..., nn.Module]
    data_factory: Callable[..., Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    width_arg: str | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    metric: Metric = METRICS["accuracy"]
    direction: str = "maximize"
    checkpoint: str | None = None  # a trained model's weights (experiments.adapt)
    # The data factory's argument that receives the run's seed (`for_seed`); None: none.
    data_seed_arg: str | None = None
    # A checkpoint path holding "{seed}" (one trained model per seed, `for_seed`);
    # `checkpoint` is then seed 0's, for the checks made before any run.
    checkpoint_per_seed: str | None = None
    trainable: list[str] | None = None
    model_name: str = "model"
    data_name: str = "data"
    _data: Data | None = field(default=None, repr=False)
    _seeded: dict[int, Task] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.checkpoint is not None and "{seed}" in self.checkpoint:
            self.checkpoint_per_seed = self.checkpoint
            self.checkpoint = self.checkpoint.replace("{seed}", "0")

    @property
    def base_width(self) -> int | None:
        return None if self.width_arg is None else self.model_kwargs[self.width_arg]

    def build_model(self, width: int | None = None) -> nn.Module:
        """The factory's model at `width` (the factory's own when None)."""
        kwargs = dict(self.model_kwargs)
        if width is not None:
            if self.width_arg is None:
                raise TaskError(
                    "an arm asks for another width, but the study names no width argument; "
                    'set [model] width = "<the factory\'s width argument>"'
                )
            kwargs[self.width_arg] = width
        try:
            model = self.model_factory(**kwargs)
        except ModuleNotFoundError:
            raise
        except (Exception, SystemExit) as exc:
            raise TaskError(
                f"model factory {self.model_name} failed with kwargs {kwargs}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(model, nn.Module):
            raise TaskError(
                f"model factory {self.model_name} returned a {type(model).__name__}, "
                "not a torch.nn.Module"
            )
        return model

    def for_seed(self, seed: int) -> Task:
        """The task as the runs of `seed` see it: the data drawn for that seed
        (`data_seed_arg`) and that seed's checkpoint ("{seed}" in its path, e.g. one
        trained model per seed); the task itself where neither applies. Made once per
        seed and process."""
        pattern = self.checkpoint_per_seed
        if self.data_seed_arg is None and pattern is None:
            return self
        if seed not in self._seeded:
            kwargs = dict(self.data_kwargs)
            if self.data_seed_arg is not None:
                kwargs[self.data_seed_arg] = seed
            path = self.checkpoint if pattern is None else pattern.replace("{seed}", str(seed))
            self._seeded[seed] = dataclasses.replace(
                self, data_kwargs=kwargs, data_seed_arg=None, checkpoint=path,
                checkpoint_per_seed=None, _data=None, _seeded={},
            )  # fmt: skip
        return self._seeded[seed]

    def data(self) -> Data:
        """The splits, made once per process (those of seed 0 where each seed draws its
        own: what the study's checks look at)."""
        if self.data_seed_arg is not None:
            return self.for_seed(0).data()
        if self._data is None:
            try:
                made = self.data_factory(**self.data_kwargs)
            except (PerforateError, ModuleNotFoundError):
                raise  # ours already say what to do; a missing extra is named by the CLI
            except (Exception, SystemExit) as exc:
                raise TaskError(
                    f"data factory {self.data_name} failed with kwargs {self.data_kwargs}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._data = Data.from_mapping(made, f"data factory {self.data_name}")
        return self._data

    def check_targets(self) -> None:
        """Class labels where the loss or the metric needs them: a regression's float
        targets under accuracy score 0 everywhere, and a wrong verdict follows."""
        scored = self.data().sample_target("val")  # the metric reads val and test only
        if self.metric.name == "accuracy" and scored is not None and scored.is_floating_point():
            raise TaskError(
                f"[task] metric accuracy compares the argmax with integer class labels, but "
                f'the targets are {scored.dtype}: for a regression set metric = "mse" and '
                'loss = "mse"'
            )
        y = self.data().sample_target()  # the loss reads the training split's
        if y is None or not y.is_floating_point():
            return
        if self.loss is cross_entropy and y.dim() == 1:
            raise TaskError(
                f"[task] loss cross_entropy (the default) needs integer class labels, but "
                f'the targets are {y.dtype}: for a regression set loss = "mse"'
            )

    def batch_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output, target)

    @torch.no_grad()
    def score(
        self,
        model: nn.Module,
        split: str,
        device: torch.device,
        batch_size: int,
        autocast: Callable[[], Any],
    ) -> float:
        """The metric over a whole split, in eval mode; the model's mode is restored."""
        was_training = model.training
        model.eval()
        metric = self.metric
        total: torch.Tensor | None = None
        # Counted on the device, read once: rows whose outputs hold a NaN, and labels the
        # metric cannot score (outside the output's classes).
        flags: torch.Tensor | None = None
        rows = classes = 0
        outputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        try:
            for x, y in getattr(self.data(), split).batches(batch_size, False, device):
                with autocast():
                    out = model(x)
                if not isinstance(out, torch.Tensor):
                    raise TaskError(
                        f"the model returned a {type(out).__name__}, not a tensor: scoring "
                        "needs the outputs as one tensor (return the logits, or wrap the "
                        "model so that it does)"
                    )
                classes = out.shape[-1] if out.dim() else 1
                flat = out.reshape(out.shape[0], -1) if out.dim() > 1 else out.reshape(-1, 1)
                nan = torch.isnan(flat).any(1).sum()
                invalid = metric.invalid(out, y) if metric.invalid is not None else nan * 0
                counts = torch.stack([nan, invalid])
                flags = counts if flags is None else flags + counts
                if metric.per_batch is not None:
                    part = metric.per_batch(out.float(), y)
                    total = part if total is None else total + part
                    rows += len(y)
                else:
                    outputs.append(out.float().cpu())
                    targets.append(y.cpu())
        finally:
            model.train(was_training)
        name = SPLIT_NAMES[split]
        if rows == 0 and not outputs:
            raise TaskError(f"the {name} split gave no rows to score (an empty loader?)")
        assert flags is not None
        nan_rows, outside = (int(v) for v in flags.tolist())
        if nan_rows:
            raise TaskError(
                f"the model's outputs on the {name} split are NaN for {nan_rows} of "
                f"{rows or sum(len(o) for o in outputs)} rows (NaN in the split's inputs, or "
                f"weights gone NaN): {metric.name} over them would mean nothing"
            )
        if outside:
            raise TaskError(
                f"the {name} split has {outside} label(s) outside the model's "
                f"{classes} outputs (classes 0..{classes - 1}): {metric.name} "
                "would count them as wrong; fix the labels or the model's output size"
            )
        if metric.per_batch is not None:
            assert metric.finish is not None and total is not None
            return metric.finish(float(total), rows)
        assert metric.whole is not None
        # A one-output regressor's (N, 1) outputs come as (N,) beside (N,) targets, as the
        # built-in metrics take them: `(outputs - targets)` would otherwise be N x N.
        every, truth = torch.cat(outputs), torch.cat(targets)
        value = metric.whole(_match(every, truth), truth)
        if isinstance(value, (str, bytes)):  # float("0.5") would pass a typo'd metric
            raise TaskError(f"metric {metric.name} returned the string {value!r}, not a number")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TaskError(
                f"metric {metric.name} returned {str(value)[:40]!r}, not a number a float holds"
            ) from exc


def resolve_callable(spec: Any, search: list[Path], what: str) -> tuple[Callable[..., Any], str]:
    """A callable given directly or as "module:function" (searched beside the study)."""
    if callable(spec):
        return spec, getattr(spec, "__qualname__", repr(spec))
    if isinstance(spec, str):
        obj = import_object(spec, search=search, what=what)
        if not callable(obj):
            raise TaskError(f"{what} {spec!r} is not callable")
        return obj, spec
    raise TaskError(f"{what} must be a 'module:function' string, got {spec!r}")


def resolve_loss(spec: Any, search: list[Path]) -> Callable[..., torch.Tensor]:
    if isinstance(spec, str) and spec in LOSSES:
        return LOSSES[spec]
    if isinstance(spec, str) and ":" not in spec:
        raise TaskError(
            f"[task] loss {spec!r}: use one of {', '.join(LOSSES)} or 'module:function'"
        )
    return resolve_callable(spec, search, "loss")[0]


def resolve_metric(spec: Any, direction: str | None, search: list[Path]) -> tuple[Metric, str]:
    """The metric and the direction; a built-in metric fixes its own direction."""
    if isinstance(spec, str) and spec in METRICS:
        metric = METRICS[spec]
        if direction is not None and direction != metric.direction:
            raise TaskError(
                f"[task] metric {spec!r} is better when {metric.direction[:-1]}ed, but "
                f"direction = {direction!r}; remove direction or set {metric.direction!r}"
            )
        assert metric.direction is not None
        return metric, metric.direction
    if isinstance(spec, str) and ":" not in spec:
        raise TaskError(
            f"[task] metric {spec!r}: use one of {', '.join(METRICS)} or 'module:function'"
        )
    fn, name = resolve_callable(spec, search, "metric")
    if direction is None:
        raise TaskError(
            f"[task] metric {name} is your own: say whether higher or lower is better with "
            "direction = 'maximize' or 'minimize'"
        )
    lowered = name.rsplit(":", 1)[-1].lower()
    if direction == "maximize" and any(w in lowered for w in LOSS_WORDS):
        raise TaskError(
            f"[task] metric {name} is named like a loss but direction = 'maximize': the run "
            "would keep its worst model; set direction = 'minimize' (or rename the metric)"
        )
    return Metric(name, direction, whole=fn), direction


def device_of(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise TaskError(f"device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TaskError(f"device {name!r}: CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise TaskError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def search_path(study_file: str | os.PathLike | None) -> list[Path]:
    """Where factories are looked for: the study file's folder, then the current folder."""
    folders = [] if study_file is None else [Path(study_file).resolve().parent]
    return [*folders, Path.cwd()]
