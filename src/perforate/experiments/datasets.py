"""Built-in datasets, all offline, with fixed train/validation/test splits.

Normalisation statistics come from the training split only.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PerforateError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetError(PerforateError, RuntimeError):
    """A dataset is not available here; the message says how to get it."""


@dataclass(frozen=True)
class Splits:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def subset(
        self,
        train: torch.Tensor | slice = slice(None),
        val: torch.Tensor | slice = slice(None),
        name: str | None = None,
    ) -> Splits:
        """Some rows (indices or a slice) of the training and validation splits; the test
        split stays whole, so scores remain comparable with the full data's."""
        return Splits(
            self.name if name is None else name,
            self.x_train[train],
            self.y_train[train],
            self.x_val[val],
            self.y_val[val],
            self.x_test,
            self.y_test,
            self.num_classes,
        )


def check_splits(splits: Splits, batch_size: int | None = None) -> Splits:
    """Refuse an empty split and, given `batch_size`, a training split smaller than one
    batch: either trains nothing useful, and the failure would come epochs later under
    another name (a flat score, "no candidate statistics were gathered")."""
    _check_sizes(
        splits.name, len(splits.y_train), len(splits.y_val), len(splits.y_test), batch_size
    )
    return splits


def _check_sizes(name: str, train: int, val: int, test: int, batch_size: int | None) -> None:
    sizes = f"train {train:,} / validation {val:,} / test {test:,} rows"
    for split, rows in (("training", train), ("validation", val), ("test", test)):
        if rows == 0:
            raise DatasetError(
                f"{name}: the {split} split is empty ({sizes}); every split needs a row"
            )
    if batch_size is not None and train < batch_size:
        raise DatasetError(
            f"{name}: the training split is smaller than one batch ({sizes}, batch size "
            f"{batch_size}); lower the batch size to at most {train:,} or give the training "
            "split more rows"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_seed(name: str, seed: object) -> None:
    """numpy refuses negative seeds with its own words, late; say it here."""
    if not _is_int(seed) or seed < 0:  # type: ignore[operator]
        raise DatasetError(f"{name}: seed must be an integer >= 0, got {seed!r}")


def _split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val, n_test = round(fractions[0] * n), round(fractions[1] * n)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def _normalise(name, x, y, idx, num_classes, per_feature: bool) -> Splits:
    train, val, test = idx
    _check_sizes(name, len(train), len(val), len(test), None)  # before statistics of nothing
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    xt = x[train]
    if per_feature:
        mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    else:
        mean, std = xt.mean(), xt.std().clamp_min(1e-6)
    z = (x - mean) / std
    return Splits(name, z[train], y[train], z[val], y[val], z[test], y[test], num_classes)


def digits(seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits: 1,797 images, 10 classes; 60/20/20 split."""
    _check_seed("digits", seed)
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = _split_indices(len(data.target), (0.2, 0.2), seed)
    return _normalise("digits", data.data, data.target, idx, 10, per_feature=False)


def breast_cancer(seed: int = 0) -> Splits:
    """scikit-learn's bundled Wisconsin breast cancer set: 569 x 30, 2 classes."""
    _check_seed("breast_cancer", seed)
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    idx = _split_indices(len(data.target), (0.2, 0.2), seed)
    return _normalise("breast_cancer", data.data, data.target, idx, 2, per_feature=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the MNIST family's format."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(
        data[2]
    )
    if dtype is None:
        raise DatasetError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: truncated ({array.size} of {int(np.prod(shape))} values)")
    return array.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(
        f"{directory} has no {stem}[.gz]. Install Debian's dataset-fashion-mnist "
        "(apt-get install -y dataset-fashion-mnist) or pass a directory holding the four "
        "MNIST-format IDX files"
    )


def idx_directory(
    directory: str | os.PathLike = FASHION_MNIST_DIR,
    seed: int = 0,
    validation: int = 10_000,
    name: str = "fashion_mnist",
    train_limit: int | None = None,
) -> Splits:
    """MNIST-format IDX files (Fashion-MNIST by default): the official test set is the test
    split; `validation` images drawn from the training set (fixed by `seed`) validate;
    `train_limit` keeps only that many of the remaining training images (for quick runs)."""
    _check_seed(name, seed)
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(
            f"no dataset directory {d}: apt-get install -y dataset-fashion-mnist, or pass "
            "your own directory of IDX files"
        )
    xtr = read_idx(_find(d, "train-images-idx3-ubyte")).astype(np.float32) / 255.0
    ytr = read_idx(_find(d, "train-labels-idx1-ubyte")).astype(np.int64)
    xte = read_idx(_find(d, "t10k-images-idx3-ubyte")).astype(np.float32) / 255.0
    yte = read_idx(_find(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if not _is_int(validation) or validation < 0:
        raise DatasetError(f"{name}: validation must be an integer >= 1, got {validation!r}")
    if validation >= len(ytr):
        raise DatasetError(
            f"{name}: the training split is empty (train 0 / validation {len(ytr):,} / test "
            f"{len(yte):,} rows): validation={validation} takes all {len(ytr):,} rows of the "
            f"training files in {d}; use validation < {len(ytr):,}"
        )
    if train_limit is not None and (not _is_int(train_limit) or train_limit < 1):
        raise DatasetError(f"{name}: train_limit must be an integer >= 1, got {train_limit!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ytr))
    val, train = order[:validation], order[validation:]
    if train_limit is not None:
        train = train[:train_limit]
    x = np.concatenate([xtr, xte])[:, None]  # (N, 1, 28, 28)
    y = np.concatenate([ytr, yte])
    test = np.arange(len(ytr), len(y))
    return _normalise(name, x, y, (train, val, test), 10, per_feature=False)


def mnist1d(seed: int = 0, samples: int = 5000) -> Splits:
    """MNIST-1D, generated locally by the `mnist1d` package (never downloaded)."""
    _check_seed("mnist1d", seed)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DatasetError("MNIST-1D needs the mnist1d package: pip install mnist1d") from exc
    args = get_dataset_args()
    args.num_samples = samples
    args.seed = 42
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    idx = _split_indices(len(y), (0.15, 0.15), seed)
    return _normalise("mnist1d", x, y, idx, 10, per_feature=False)


DATASETS = {
    "digits": digits,
    "breast_cancer": breast_cancer,
    "fashion_mnist": idx_directory,
    "mnist1d": mnist1d,
}


def load(name: str, **kwargs) -> Splits:
    """A built-in dataset by name (see `DATASETS`); keyword arguments go to its loader
    (e.g. `directory=` for fashion_mnist, `seed=` for the split)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)


def as_datasets(splits: Splits) -> tuple[torch.utils.data.TensorDataset, ...]:
    """(train, validation, test) as torch Datasets, for DataLoaders and frameworks."""
    from torch.utils.data import TensorDataset

    return (
        TensorDataset(splits.x_train, splits.y_train),
        TensorDataset(splits.x_val, splits.y_val),
        TensorDataset(splits.x_test, splits.y_test),
    )
