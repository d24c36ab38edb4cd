"""Datasets, splits and the batch loader: file formats, search paths, determinism, balance."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from searchprune import data as D
from searchprune.config import DataConfig
from searchprune.data import (
    ArrayDataset,
    BatchLoader,
    DatasetInfo,
    list_datasets,
    load_dataset,
    make_splits,
    make_synthetic,
)
from searchprune.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# helpers: tiny files in the real formats
# ---------------------------------------------------------------------------------------------


def _write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> Path:
    """Writes ``arr`` (uint8) as an IDX file: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _idx_set(folder: Path, *, gz: bool, n_train: int = 30, n_test: int = 20, seed: int = 0):
    """Writes the four MNIST-format files; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, gz=gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz=gz)
        out[split] = (images, labels)
    return out


def _write_cifar_batch(path: Path, data: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    # the real files hold a bytes-keyed dict; labels are a list in CIFAR-10
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"data": data, label_key: labels.tolist()}, f)


def _cifar10_set(root: Path, per_batch: int = 6, seed: int = 0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch)
        _write_cifar_batch(folder / name, data, labels, b"labels")
        written.append((data, labels))
    return written


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real dataset can be found: HOME, cwd, $SEARCHPRUNE_DATA and the system dirs all point
    into tmp_path."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.delenv("SEARCHPRUNE_DATA", raising=False)
    monkeypatch.setattr(D, "SYSTEM_DIRS", {k: tmp_path / "system" / k for k in D.SYSTEM_DIRS})
    return tmp_path


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def test_list_datasets_has_the_documented_names() -> None:
    assert {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"} <= set(list_datasets())


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*cifar10.*fashion-mnist"):
        load_dataset("imagenet")


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_files_load_from_data_dir(isolated: Path, gz: bool) -> None:
    folder = isolated / "mydata"
    written = _idx_set(folder, gz=gz)
    train, test, info = load_dataset("fashion-mnist", data_dir=folder)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(train.images[:, 0], torch.from_numpy(written["train"][0]))
    assert torch.equal(test.labels, torch.from_numpy(written["t10k"][1]).long())
    assert info == DatasetInfo("fashion-mnist", 10, 1, (28, 28), (0.2860,), (0.3530,))


def test_idx_torchvision_layout_and_env_var(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = isolated / "envroot"
    _idx_set(root / "MNIST" / "raw", gz=True, n_train=10)
    monkeypatch.setenv("SEARCHPRUNE_DATA", str(root))
    train, _, info = load_dataset("mnist")
    assert len(train) == 10 and info.name == "mnist" and info.mean == (0.1307,)


def test_idx_cache_root_under_cwd(isolated: Path) -> None:
    _idx_set(isolated / "work" / "data" / "FashionMNIST" / "raw", gz=False, n_train=12)
    train, _, _ = load_dataset("fashion-mnist")
    assert len(train) == 12


def test_data_dir_wins_over_later_roots(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _idx_set(isolated / "first", gz=True, n_train=11)
    _idx_set(isolated / "second", gz=True, n_train=13)
    monkeypatch.setenv("SEARCHPRUNE_DATA", str(isolated / "second"))
    assert len(load_dataset("fashion-mnist", data_dir=isolated / "first")[0]) == 11
    assert len(load_dataset("fashion-mnist")[0]) == 13


def test_missing_fashion_mnist_names_every_path_and_the_fix(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEARCHPRUNE_DATA", str(isolated / "env"))
    with pytest.raises(ConfigError) as err:
        load_dataset("fashion-mnist", data_dir=isolated / "given")
    msg = str(err.value)
    expected = [
        isolated / "given", isolated / "given" / "fashion-mnist", isolated / "given" / "FashionMNIST" / "raw",
        isolated / "env", isolated / "env" / "FashionMNIST" / "raw",
        isolated / "system" / "fashion-mnist",
        isolated / "home" / ".cache" / "searchprune" / "FashionMNIST" / "raw",
        isolated / "work" / "data" / "FashionMNIST" / "raw",
    ]
    for p in expected:
        assert f"  {p}\n" in msg, f"{p} missing from:\n{msg}"
    assert "'fashion-mnist'" in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "--download" in msg and "data.download: true" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg


def test_incomplete_folder_is_not_used(isolated: Path) -> None:
    folder = isolated / "partial"
    _idx_set(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_dataset("mnist", data_dir=folder)


def test_truncated_idx_raises_config_error(isolated: Path) -> None:
    folder = isolated / "bad"
    _idx_set(folder, gz=False)
    p = folder / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_idx_with_wrong_magic_raises(isolated: Path) -> None:
    folder = isolated / "bad"
    _idx_set(folder, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ConfigError, match="not an IDX file"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_rewritten_file_is_reread_not_served_from_cache(isolated: Path) -> None:
    folder = isolated / "d"
    _idx_set(folder, gz=False, n_train=10, seed=1)
    first = load_dataset("fashion-mnist", data_dir=folder)[0].images.clone()
    _idx_set(folder, gz=False, n_train=20, seed=2)
    os.utime(folder / "train-images-idx3-ubyte", ns=(1, 1))  # a new mtime even on coarse clocks
    second = load_dataset("fashion-mnist", data_dir=folder)[0].images
    assert len(first) == 10 and len(second) == 20


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------


def test_cifar10_pickles_load_in_channel_order(isolated: Path) -> None:
    written = _cifar10_set(isolated / "c")
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


def test_svhn_without_torchvision_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ConfigError, match=r"pip install searchprune\[vision\]"):
        load_dataset("svhn")


# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced() -> None:
    a_train, a_test, a_info = make_synthetic(num_train=200, num_test=50, seed=3)
    b_train, b_test, b_info = make_synthetic(num_train=200, num_test=50, seed=3)
    c_train, _, _ = make_synthetic(num_train=200, num_test=50, seed=4)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_test.labels, b_test.labels)
    assert a_info == b_info
    assert not torch.equal(a_train.images, c_train.images)
    assert torch.bincount(a_train.labels).tolist() == [20] * 10
    assert a_train.images.shape == (200, 1, 28, 28) and a_train.images.dtype == torch.uint8


def test_synthetic_rgb_shape_and_registered_default() -> None:
    train, _, info = make_synthetic(num_train=40, num_test=10, num_classes=4, in_channels=3,
                                    image_size=(32, 32))
    assert train.images.shape == (40, 3, 32, 32) and info.in_channels == 3 and len(info.std) == 3
    reg_train, reg_test, reg_info = load_dataset("synthetic")
    assert (len(reg_train), len(reg_test)) == (8000, 2000)
    assert reg_info.name == "synthetic" and reg_info.image_size == (28, 28)
    assert 0 < reg_info.mean[0] < 1 and reg_info.std[0] > 0.05


def test_synthetic_is_learnable_in_one_epoch() -> None:
    from searchprune.models import create_model

    train, test, info = load_dataset("synthetic")
    model = create_model("mnist_small", in_channels=1, image_size=(28, 28), mean=info.mean, std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in BatchLoader(train, 64, shuffle=True, max_images=1500):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        batches = BatchLoader(test, 500, max_images=1000)
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    assert correct / 1000 > 0.6  # chance is 0.1


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------


def _indexed(n: int, num_classes: int = 10, counts: list[int] | None = None):
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


def _ids(ds: ArrayDataset) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() * 256 + ds.images[:, 0, 0, 1].long()).tolist()


def _loader_ids(loader: BatchLoader) -> list[int]:
    """The image ids in the order one pass of ``loader`` yields them."""
    out: list[int] = []
    for x, _ in loader:
        px = (x * 255).round().long()  # back from [0, 1] floats to the stored bytes
        out += (px[:, 0, 0, 0] * 256 + px[:, 0, 0, 1]).tolist()
    return out


@pytest.fixture
def fake_load(monkeypatch: pytest.MonkeyPatch):
    """Replaces load_dataset inside make_splits with an index-encoding dataset."""
    state: dict = {"train": _indexed(1000), "test": _indexed(300)}

    def fake(name: str, *, data_dir=None, download=False):
        info = DatasetInfo(name, 10, 1, (2, 2), (0.5,), (0.5,))
        return state["train"], state["test"], info

    monkeypatch.setattr(D, "load_dataset", fake)
    return state


def test_splits_disjoint_balanced_and_sized(fake_load) -> None:
    s = make_splits(DataConfig(dataset="x", val_size=100, train_size=300, test_size=50, seed=0))
    train_ids, val_ids = _ids(s.train), _ids(s.val)
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
    assert sorted(_ids(s.train) + _ids(s.val)) == list(range(1000))
    assert s.test is fake_load["test"]  # test_size=None keeps the whole test set


def test_splits_deterministic_in_seed(fake_load) -> None:
    cfg = DataConfig(dataset="x", val_size=100, train_size=200, test_size=30, seed=7)
    a, b = make_splits(cfg), make_splits(cfg)
    assert _ids(a.train) == _ids(b.train) and _ids(a.val) == _ids(b.val) and _ids(a.test) == _ids(b.test)
    c = make_splits(DataConfig(dataset="x", val_size=100, train_size=200, test_size=30, seed=8))
    assert set(_ids(a.val)) != set(_ids(c.val))


def test_splits_come_shuffled_so_prefixes_are_fair(fake_load) -> None:
    s = make_splits(DataConfig(dataset="x", val_size=200, seed=0))
    first = s.val.labels[:50]
    assert len(torch.unique(first)) == 10  # not 50 images of class 0


def test_uneven_val_size_and_short_class(fake_load) -> None:
    # class 0 has only 3 images: it gives all of them, the others share the rest evenly
    fake_load["train"] = _indexed(0, counts=[3] + [100] * 9)
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


# ---------------------------------------------------------------------------------------------
# BatchLoader
# ---------------------------------------------------------------------------------------------


def test_batch_loader_shapes_dtype_range() -> None:
    ds = _indexed(0, counts=[5] * 10)  # 50 images
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
    ds = _indexed(100)
    assert len(BatchLoader(ds, 32, drop_last=True)) == 3
    loader = BatchLoader(ds, 32, max_images=70)
    assert len(loader) == 3 and sum(len(y) for _, y in loader) == 70
    ids = _loader_ids(BatchLoader(ds, 32, max_images=70, shuffle=True))
    assert sorted(ids) == list(range(70))  # truncation picks the first 70, shuffle permutes them


def test_batch_loader_shuffle_deterministic_per_epoch() -> None:
    ds = _indexed(200)
    order = _loader_ids
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
        BatchLoader(_indexed(10), 0)


def test_array_dataset_validates() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------

_DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not _DEBIAN_FMNIST.is_dir(),
                    reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEARCHPRUNE_DATA", raising=False)
    train, test, info = load_dataset("fashion-mnist", data_dir=_DEBIAN_FMNIST)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # the stored mean/std are the training set's (to 3 decimals)
    pix = train.images.float() / 255
    assert abs(float(pix.mean()) - info.mean[0]) < 1e-3 and abs(float(pix.std()) - info.std[0]) < 1e-3
