"""Offline datasets: fixed splits, train-only normalisation, IDX files, clear errors."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from perforate.experiments import datasets as data


def _write_idx(path, array: np.ndarray, code: int) -> None:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(">u1" if code == 0x08 else array.dtype).tobytes()
    with gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb") as fh:
        fh.write(payload)


def _fake_mnist_dir(tmp_path, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    _write_idx(
        tmp_path / "train-images-idx3-ubyte.gz",
        rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        0x08,
    )
    _write_idx(
        tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train).astype(np.uint8), 0x08
    )
    _write_idx(
        tmp_path / "t10k-images-idx3-ubyte.gz",
        rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        0x08,
    )
    _write_idx(
        tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test).astype(np.uint8), 0x08
    )


def test_users_own_idx_directory_loads_with_fixed_splits(tmp_path):
    _fake_mnist_dir(tmp_path)
    a = data.idx_directory(tmp_path, validation=8, name="mine")
    b = data.idx_directory(tmp_path, validation=8, name="mine")
    assert a.x_train.shape == (22, 1, 28, 28) and a.x_val.shape[0] == 8
    assert a.x_test.shape[0] == 10
    assert torch.equal(a.x_val, b.x_val)
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-3
    train, val, test = data.as_datasets(a)
    assert len(train) == 22 and len(val) == 8 and len(test) == 10


def test_truncated_idx_and_missing_files_say_what_to_do(tmp_path):
    _fake_mnist_dir(tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz") as fh:
        raw = fh.read()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw[:-3])
    with pytest.raises(data.DatasetError, match="truncated"):
        data.idx_directory(tmp_path, validation=8)
    with pytest.raises(data.DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        data.idx_directory(tmp_path / "nowhere")
    with pytest.raises(data.DatasetError, match="unknown dataset"):
        data.load("imagenet")


def test_digits_split_is_fixed_and_normalised_on_train():
    a, b = data.digits(seed=0), data.digits(seed=0)
    assert torch.equal(a.x_test, b.x_test)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert abs(float(a.x_train.mean())) < 1e-5


@pytest.mark.skipif(
    not os.path.isdir(data.FASHION_MNIST_DIR) and os.environ.get("CI") != "true",
    reason="Debian's dataset-fashion-mnist is not installed (CI installs it)",
)
def test_debian_fashion_mnist():
    s = data.load("fashion_mnist")
    assert s.x_train.shape == (50_000, 1, 28, 28) and s.x_test.shape == (10_000, 1, 28, 28)
    assert sorted(s.y_test.unique().tolist()) == list(range(10))


def test_mnist1d_is_generated_locally():
    s = data.load("mnist1d", samples=500)
    assert s.x_train.shape[1] == 40 and len(s.y_train) + len(s.y_val) + len(s.y_test) == 500
