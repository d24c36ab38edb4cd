"""searchprune.data.idx (and _discovery): IDX files, where they are looked for, and the errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _datafiles import idx_set

from searchprune.data import (
    DatasetInfo,
    load_dataset,
)
from searchprune.errors import ConfigError


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_files_load_from_data_dir(isolated: Path, gz: bool) -> None:
    folder = isolated / "mydata"
    written = idx_set(folder, gz=gz)
    train, test, info = load_dataset("fashion-mnist", data_dir=folder)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(train.images[:, 0], torch.from_numpy(written["train"][0]))
    assert torch.equal(test.labels, torch.from_numpy(written["t10k"][1]).long())
    assert info == DatasetInfo("fashion-mnist", 10, 1, (28, 28), (0.2860,), (0.3530,))


def test_idx_torchvision_layout_and_env_var(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = isolated / "envroot"
    idx_set(root / "MNIST" / "raw", gz=True, n_train=10)
    monkeypatch.setenv("SEARCHPRUNE_DATA", str(root))
    train, _, info = load_dataset("mnist")
    assert len(train) == 10 and info.name == "mnist" and info.mean == (0.1307,)


def test_idx_cache_root_under_cwd(isolated: Path) -> None:
    idx_set(isolated / "work" / "data" / "FashionMNIST" / "raw", gz=False, n_train=12)
    train, _, _ = load_dataset("fashion-mnist")
    assert len(train) == 12


def test_data_dir_wins_over_later_roots(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx_set(isolated / "first", gz=True, n_train=11)
    idx_set(isolated / "second", gz=True, n_train=13)
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
    idx_set(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_dataset("mnist", data_dir=folder)


def test_truncated_idx_raises_config_error(isolated: Path) -> None:
    folder = isolated / "bad"
    idx_set(folder, gz=False)
    p = folder / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_idx_with_wrong_magic_raises(isolated: Path) -> None:
    folder = isolated / "bad"
    idx_set(folder, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ConfigError, match="not an IDX file"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_rewritten_file_is_reread_not_served_from_cache(isolated: Path) -> None:
    folder = isolated / "d"
    idx_set(folder, gz=False, n_train=10, seed=1)
    first = load_dataset("fashion-mnist", data_dir=folder)[0].images.clone()
    idx_set(folder, gz=False, n_train=20, seed=2)
    os.utime(folder / "train-images-idx3-ubyte", ns=(1, 1))  # a new mtime even on coarse clocks
    second = load_dataset("fashion-mnist", data_dir=folder)[0].images
    assert len(first) == 10 and len(second) == 20


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
