"""Fast batches of an :class:`ArrayDataset`: float32 in [0, 1] on the target device.

Normalization is *not* done here: it is the first layer of every model
(``searchprune.models.Normalize``), so attack budgets stay on the pixel scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..errors import ConfigError
from .core import ArrayDataset

__all__ = ["BatchLoader"]




class BatchLoader:
    """Iterates ``(x, y)`` batches of an :class:`ArrayDataset` without per-item Python.

    ``x`` is float32 in [0, 1] with shape ``(B, C, H, W)`` and ``y`` int64 ``(B,)``, both on
    ``device``. The uint8 batch is moved first and converted there (4x less to copy).

    With ``shuffle``, the order is a permutation drawn from the loader's own ``torch.Generator``
    seeded with ``(seed, epoch)``: it depends on nothing else, and iterating twice in the same
    epoch gives the same order. Call :meth:`set_epoch` before each epoch to reshuffle.

    Args:
        ds: the dataset.
        batch_size: images per batch.
        shuffle: draw a fresh permutation per epoch.
        seed: seeds the permutation.
        device: where batches go; None keeps the dataset's device.
        max_images: use only the first ``max_images`` images of ``ds`` (the same ones every
            epoch; shuffling permutes within them).
        drop_last: skip a final batch smaller than ``batch_size``.

    Example:
        >>> loader = BatchLoader(splits.train, 128, shuffle=True, seed=0)
        >>> for epoch in range(3):
        ...     loader.set_epoch(epoch)
        ...     for x, y in loader: ...
    """

    def __init__(
        self,
        ds: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        max_images: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected >= 1, got {batch_size}")
        if max_images is not None and max_images < 0:
            raise ConfigError(f"max_images: expected >= 0 or None, got {max_images}")
        self.dataset = ds
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else ds.images.device
        self.num_images = len(ds) if max_images is None else min(len(ds), int(max_images))
        self.drop_last = drop_last
        self.epoch = 0
        self._gen = torch.Generator()

    def set_epoch(self, epoch: int) -> None:
        """Selects the shuffle order of epoch ``epoch`` (deterministic in ``seed`` and ``epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_images // self.batch_size
        return math.ceil(self.num_images / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.num_images, self.batch_size
        images, labels = self.dataset.images, self.dataset.labels
        order: torch.Tensor | None = None
        if self.shuffle:
            # one seed per (seed, epoch) pair; the large odd multiplier keeps neighbours apart
            self._gen.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
            order = torch.randperm(n, generator=self._gen).to(images.device)
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            if order is None:
                xb, yb = images[lo:hi], labels[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = images[idx], labels[idx]  # one gather per batch
            xb = xb.to(self.device, non_blocking=True).float().div_(255.0)  # (B, C, H, W) in [0, 1]
            yield xb, yb.to(self.device, non_blocking=True)
