"""The contract every registered dataset keeps, parametrized over the registry: with nothing on
disk and no download allowed, a loader either returns a valid ``(train, test, info)`` (generated
data) or raises a ConfigError that names the dataset, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from searchprune.data import ArrayDataset, DatasetInfo, list_datasets, load_dataset
from searchprune.errors import ConfigError


@pytest.mark.parametrize("name", list_datasets())
def test_loads_validly_or_says_what_is_missing(name: str, isolated: Path) -> None:
    try:
        train, test, info = load_dataset(name, data_dir=isolated / "empty")
    except ConfigError as e:
        assert repr(name) in str(e)
        return
    assert isinstance(train, ArrayDataset) and isinstance(test, ArrayDataset) and isinstance(info, DatasetInfo)
    assert info.name == name and len(info.mean) == len(info.std) == info.in_channels
    for split in (train, test):
        assert split.images.shape[1:] == (info.in_channels, *info.image_size)
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < info.num_classes
    assert torch.bincount(train.labels, minlength=info.num_classes).min() > 0  # every class present
