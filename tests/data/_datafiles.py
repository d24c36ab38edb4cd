"""Tiny files in the real dataset formats, and index-encoding datasets, for the data tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from searchprune.data import ArrayDataset, BatchLoader


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> Path:
    """Writes ``arr`` (uint8) as an IDX file: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def idx_set(folder: Path, *, gz: bool, n_train: int = 30, n_test: int = 20, seed: int = 0):
    """Writes the four MNIST-format files; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz=gz)
        out[split] = (images, labels)
    return out


def write_cifar_batch(path: Path, data: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    # the real files hold a bytes-keyed dict; labels are a list in CIFAR-10
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"data": data, label_key: labels.tolist()}, f)


def cifar10_set(root: Path, per_batch: int = 6, seed: int = 0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch)
        write_cifar_batch(folder / name, data, labels, b"labels")
        written.append((data, labels))
    return written


def indexed(n: int, num_classes: int = 10, counts: list[int] | None = None):
    """A dataset whose images encode their own index (two bytes), so overlap can be checked."""
    if counts is not None:
        labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
        n = len(labels)
    else:
        labels = torch.arange(n) % num_classes
    ids = torch.arange(n)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = (ids // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (ids % 256).to(torch.uint8)
    return ArrayDataset(images, labels.long())


def ids(ds: ArrayDataset) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() * 256 + ds.images[:, 0, 0, 1].long()).tolist()


def loader_ids(loader: BatchLoader) -> list[int]:
    """The image ids in the order one pass of ``loader`` yields them."""
    out: list[int] = []
    for x, _ in loader:
        px = (x * 255).round().long()  # back from [0, 1] floats to the stored bytes
        out += (px[:, 0, 0, 0] * 256 + px[:, 0, 0, 1]).tolist()
    return out
