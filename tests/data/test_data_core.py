"""searchprune.data.core: the registry, ArrayDataset and the class-balanced splits."""

from __future__ import annotations

import pytest
import torch
from _datafiles import ids, indexed

from searchprune.config import DataConfig
from searchprune.data import (
    ArrayDataset,
    list_datasets,
    load_dataset,
    make_splits,
)
from searchprune.errors import ConfigError


def test_list_datasets_has_the_documented_names() -> None:
    assert {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"} <= set(list_datasets())


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*cifar10.*fashion-mnist"):
        load_dataset("imagenet")


def test_splits_disjoint_balanced_and_sized(fake_load) -> None:
    s = make_splits(DataConfig(dataset="x", val_size=100, train_size=300, test_size=50, seed=0))
    train_ids, val_ids = ids(s.train), ids(s.val)
    assert len(train_ids) == 300 and len(val_ids) == 100 and len(s.test) == 50
    assert not set(train_ids) & set(val_ids)
    assert len(set(train_ids)) == 300 and len(set(val_ids)) == 100
    assert torch.bincount(s.val.labels, minlength=10).tolist() == [10] * 10
    assert torch.bincount(s.train.labels, minlength=10).tolist() == [30] * 10
    assert torch.bincount(s.test.labels, minlength=10).tolist() == [5] * 10
    # labels travel with their images
    assert all(i % 10 == y for i, y in zip(train_ids, s.train.labels.tolist()))


def test_splits_default_train_is_everything_but_val(fake_load) -> None:
    s = make_splits(DataConfig(dataset="x", val_size=123, seed=1))
    assert sorted(ids(s.train) + ids(s.val)) == list(range(1000))
    assert s.test is fake_load["test"]  # test_size=None keeps the whole test set


def test_splits_deterministic_in_seed(fake_load) -> None:
    cfg = DataConfig(dataset="x", val_size=100, train_size=200, test_size=30, seed=7)
    a, b = make_splits(cfg), make_splits(cfg)
    assert ids(a.train) == ids(b.train) and ids(a.val) == ids(b.val) and ids(a.test) == ids(b.test)
    c = make_splits(DataConfig(dataset="x", val_size=100, train_size=200, test_size=30, seed=8))
    assert set(ids(a.val)) != set(ids(c.val))


def test_splits_come_shuffled_so_prefixes_are_fair(fake_load) -> None:
    s = make_splits(DataConfig(dataset="x", val_size=200, seed=0))
    first = s.val.labels[:50]
    assert len(torch.unique(first)) == 10  # not 50 images of class 0


def test_uneven_val_size_and_short_class(fake_load) -> None:
    # class 0 has only 3 images: it gives all of them, the others share the rest evenly
    fake_load["train"] = indexed(0, counts=[3] + [100] * 9)
    s = make_splits(DataConfig(dataset="x", val_size=48, seed=0))
    counts = torch.bincount(s.val.labels, minlength=10).tolist()
    assert counts[0] == 3 and sum(counts) == 48 and max(counts[1:]) - min(counts[1:]) <= 1


@pytest.mark.parametrize(("field", "value", "match"), [
    ("val_size", 1000, "data.val_size"),
    ("train_size", 951, "data.train_size"),
    ("test_size", 301, "data.test_size"),
])
def test_split_sizes_too_large_raise(fake_load, field: str, value: int, match: str) -> None:
    kwargs = {"dataset": "x", "val_size": 50, field: value}
    with pytest.raises(ConfigError, match=match):
        make_splits(DataConfig(**kwargs))


def test_splits_on_synthetic_end_to_end() -> None:
    s = make_splits(DataConfig(dataset="synthetic", val_size=500, train_size=1000, test_size=200))
    assert (len(s.train), len(s.val), len(s.test)) == (1000, 500, 200)
    assert s.info.name == "synthetic"


def test_array_dataset_validates() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
