"""Dataset containers, the dataset registry, and deterministic class-balanced splits.

Images stay ``uint8`` ``(N, C, H, W)`` until a batch is drawn (see :mod:`.loader`). A dataset is
one loader function registered by name in a format module (:mod:`.idx`, :mod:`.cifar`, ...)::

    @register_dataset("my-set")
    def _my_set(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
        ...

Loaded files are cached per process: the tensors returned by :func:`load_dataset` are shared
between callers and must be treated as read-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._registry import Registry
from ..config import DataConfig
from ..errors import ConfigError

__all__ = [
    "DATASETS", "DatasetInfo", "ArrayDataset", "Splits", "LoaderFn", "list_datasets", "load_dataset",
    "make_splits", "register_dataset",
]

LoaderFn = Callable[..., "tuple[ArrayDataset, ArrayDataset, DatasetInfo]"]

DATASETS: Registry[LoaderFn] = Registry("dataset")


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: the registry name, e.g. "fashion-mnist".
        num_classes: number of labels; labels are ``0 .. num_classes - 1``.
        in_channels: image channels (1 for grey, 3 for RGB).
        image_size: ``(H, W)``.
        mean: per-channel mean of the training images on the [0, 1] scale.
        std: per-channel standard deviation, same scale.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Images and labels held as tensors.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images: expected a (N, C, H, W) uint8 tensor, got {self.images.dtype} "
                             f"with shape {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels: expected a (N,) int64 tensor, got {self.labels.dtype} "
                             f"with shape {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ArrayDataset:
        """Returns a new dataset holding copies of the rows at ``indices``, in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        return ArrayDataset(self.images[idx], self.labels[idx])

    def to(self, device: torch.device | str) -> ArrayDataset:
        """Moves both tensors (still uint8) to ``device``, e.g. to keep a whole split on the GPU."""
        return ArrayDataset(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True, eq=False)
class Splits:
    """The three splits a study uses plus the dataset's description.

    Attributes:
        train: images to train / fine-tune on (never overlaps ``val``).
        val: images carved from the training set; the search selects trials on them.
        test: the held-out test set (or a class-balanced subset of it).
        info: the dataset's :class:`DatasetInfo`.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    info: DatasetInfo


# ---------------------------------------------------------------------------------------------
# Registry and public entry points
# ---------------------------------------------------------------------------------------------


def register_dataset(name: str) -> Callable[[LoaderFn], LoaderFn]:
    """Registers ``fn(*, data_dir, download) -> (train, test, info)`` under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` and ``data.dataset``."""
    return DATASETS.names()


def load_dataset(
    name: str, *, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """Loads a whole dataset into memory.

    Args:
        name: a name from :func:`list_datasets`.
        data_dir: the folder to look in first.
        download: fetch missing files from the dataset's standard URLs (needs a network).

    Returns:
        ``(train, test, info)``. The tensors are shared with other callers: do not modify them.

    Raises:
        ConfigError: unknown name, or files missing (the message lists every path tried).
    """
    loader = DATASETS.get(name)
    return loader(data_dir=None if data_dir is None else str(data_dir), download=download)


def make_splits(cfg: DataConfig) -> Splits:
    """Loads ``cfg.dataset`` and cuts train / val / test, deterministically in ``cfg.seed``.

    ``val_size`` images are carved from the training set, class-balanced (equal counts per class
    as far as each class allows). ``train_size`` (default: all the rest) and ``test_size``
    (default: the whole test set) are class-balanced subsets too. Subsets come in a seeded random
    order, so the first ``n`` images of any split are a fair sample of it.

    Raises:
        ConfigError: the sizes ask for more images than the dataset has.
    """
    train_full, test_full, info = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download)
    n_train = len(train_full)
    if cfg.val_size >= n_train:
        raise ConfigError(f"data.val_size: expected fewer than the {n_train} training images of "
                          f"{cfg.dataset!r}, got {cfg.val_size}")
    gen = torch.Generator().manual_seed(cfg.seed)
    val_idx = _balanced_sample(train_full.labels, cfg.val_size, info.num_classes, gen)
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[val_idx] = False
    rest = keep.nonzero().squeeze(1)  # training indices not used for validation
    if cfg.train_size is None:
        train_idx = rest[torch.randperm(len(rest), generator=gen)]
    else:
        if cfg.train_size > len(rest):
            raise ConfigError(f"data.train_size: {cfg.dataset!r} has {len(rest)} training images left "
                              f"after val_size={cfg.val_size}, got train_size={cfg.train_size}")
        train_idx = rest[_balanced_sample(train_full.labels[rest], cfg.train_size, info.num_classes, gen)]
    if cfg.test_size is None:
        test = test_full
    else:
        if cfg.test_size > len(test_full):
            raise ConfigError(f"data.test_size: {cfg.dataset!r} has {len(test_full)} test images, "
                              f"got {cfg.test_size}")
        test = test_full.subset(_balanced_sample(test_full.labels, cfg.test_size, info.num_classes, gen))
    return Splits(train=train_full.subset(train_idx), val=train_full.subset(val_idx), test=test, info=info)


def _balanced_sample(labels: torch.Tensor, n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Picks ``n`` indices into ``labels`` with per-class counts as equal as the classes allow.

    Returns the indices in a random order drawn from ``gen``.
    """
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=gen)
    shuffled = labels[perm]
    # stable sort by label keeps the random order within each class
    order = torch.sort(shuffled, stable=True).indices
    by_class = perm[order]
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    # water-filling: every class gets the same quota unless it runs out; the remainder after an
    # even split goes to randomly chosen classes (not always the low labels)
    quota = [0] * len(counts)
    left = n
    open_classes = [c for c, k in enumerate(counts) if k > 0]
    while left > 0 and open_classes:
        share = left // len(open_classes)
        if share == 0:
            pick = torch.randperm(len(open_classes), generator=gen)[:left].tolist()
            for i in pick:
                quota[open_classes[i]] += 1
            left = 0
            break
        for c in open_classes:
            give = min(share, counts[c] - quota[c])
            quota[c] += give
            left -= give
        open_classes = [c for c in open_classes if quota[c] < counts[c]]
    if left > 0:
        raise ConfigError(f"asked for {n} images, but only {len(labels)} are available")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    chosen = torch.cat([by_class[s:s + q] for s, q in zip(starts, quota) if q > 0])
    return chosen[torch.randperm(len(chosen), generator=gen)]
