"""Datasets as uint8 tensors in memory, deterministic splits, and a fast batch loader.

Images stay ``uint8`` ``(N, C, H, W)`` until a batch is drawn; :class:`BatchLoader` turns each batch
into float32 in **[0, 1]** on the target device. Normalization is *not* done here: it is the first
layer of every model (``searchprune.models.Normalize``), so attack budgets stay on the pixel scale.
Each dataset's mean/std travels in :class:`DatasetInfo` for the model to use.

Layout: :mod:`.core` (containers, the registry, splits), :mod:`.loader` (``BatchLoader``), one module
per file format registering its datasets (:mod:`.idx`, :mod:`.cifar`, :mod:`.svhn`,
:mod:`.synthetic`), and :mod:`._discovery` (where files are looked for and downloaded to; a missing
dataset raises :class:`~searchprune.errors.ConfigError` listing every path tried and how to get it).

Loaded files are cached per process (keyed by path, size and mtime): the tensors returned by
:func:`load_dataset` are shared between callers and must be treated as read-only.
"""

from __future__ import annotations

# format modules register their datasets on import
from . import cifar, idx, svhn  # noqa: F401
from .core import ArrayDataset, DatasetInfo, Splits, list_datasets, load_dataset, make_splits, register_dataset
from .loader import BatchLoader
from .synthetic import make_synthetic

__all__ = [
    "DatasetInfo", "ArrayDataset", "Splits", "BatchLoader", "list_datasets", "load_dataset",
    "make_splits", "register_dataset", "make_synthetic",
]
