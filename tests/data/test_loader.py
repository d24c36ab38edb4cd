"""searchprune.data.loader: BatchLoader shapes, ranges, truncation and per-epoch shuffles."""

from __future__ import annotations

import pytest
import torch
from _datafiles import indexed, loader_ids

from searchprune.data import (
    ArrayDataset,
    BatchLoader,
)
from searchprune.errors import ConfigError


def test_batch_loader_shapes_dtype_range() -> None:
    ds = indexed(0, counts=[5] * 10)  # 50 images
    ds = ArrayDataset(torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8), ds.labels)
    loader = BatchLoader(ds, 16, device="cpu")
    batches = list(loader)
    assert len(loader) == 4 == len(batches)
    assert [x.shape[0] for x, _ in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 4, 5) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.allclose(x, ds.images[:16].float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)  # unshuffled: dataset order


def test_batch_loader_drop_last_and_max_images() -> None:
    ds = indexed(100)
    assert len(BatchLoader(ds, 32, drop_last=True)) == 3
    loader = BatchLoader(ds, 32, max_images=70)
    assert len(loader) == 3 and sum(len(y) for _, y in loader) == 70
    ids = loader_ids(BatchLoader(ds, 32, max_images=70, shuffle=True))
    assert sorted(ids) == list(range(70))  # truncation picks the first 70, shuffle permutes them


def test_batch_loader_shuffle_deterministic_per_epoch() -> None:
    ds = indexed(200)
    order = loader_ids
    a, b = BatchLoader(ds, 64, shuffle=True, seed=5), BatchLoader(ds, 64, shuffle=True, seed=5)
    first = order(a)
    assert first == order(b) == order(a)  # same seed and epoch -> same order, also when re-iterated
    assert sorted(first) == list(range(200)) and first != list(range(200))
    a.set_epoch(1)
    second = order(a)
    assert second != first and sorted(second) == list(range(200))
    b.set_epoch(1)
    assert order(b) == second
    assert order(BatchLoader(ds, 64, shuffle=True, seed=6)) != first


def test_batch_loader_rejects_bad_batch_size() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        BatchLoader(indexed(10), 0)
