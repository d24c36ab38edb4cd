"""searchprune.data.cifar: CIFAR-10/100 pickle batches and the numpy-only unpickler."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from _datafiles import cifar10_set

from searchprune.data import (
    load_dataset,
)
from searchprune.errors import ConfigError


def test_cifar10_pickles_load_in_channel_order(isolated: Path) -> None:
    written = cifar10_set(isolated / "c")
    train, test, info = load_dataset("cifar10", data_dir=isolated / "c")
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    data0, labels0 = written[0]
    # a row is 1024 red, 1024 green, 1024 blue values, each plane row-major
    assert torch.equal(train.images[0, 1], torch.from_numpy(data0[0, 1024:2048].reshape(32, 32)))
    assert train.labels[:6].tolist() == labels0.tolist()
    assert torch.equal(test.images[-1].flatten(), torch.from_numpy(written[-1][0][-1]))
    assert info.num_classes == 10 and info.in_channels == 3 and len(info.mean) == 3


def test_cifar100_uses_fine_labels(isolated: Path) -> None:
    folder = isolated / "c" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 8), ("test", 4)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [99] * n, b"coarse_labels": [3] * n}, f)
    train, test, info = load_dataset("cifar100", data_dir=isolated / "c")
    assert len(train) == 8 and len(test) == 4
    assert set(train.labels.tolist()) == {99} and info.num_classes == 100


def test_missing_cifar_lists_paths(isolated: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("cifar10", data_dir=isolated / "nowhere")
    msg = str(err.value)
    assert str(isolated / "nowhere") in msg and str(isolated / "work" / "data") in msg
    assert "cifar-10-batches-py/data_batch_1" in msg and "--download" in msg


def test_cifar_unpickler_refuses_foreign_globals(isolated: Path) -> None:
    folder = isolated / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:  # an OrderedDict stands in for any non-numpy global
            pickle.dump(OrderedDict({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}), f)
    with pytest.raises(ConfigError, match="refusing to load collections.OrderedDict"):
        load_dataset("cifar10", data_dir=isolated / "c")
