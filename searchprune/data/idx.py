"""IDX files (MNIST, Fashion-MNIST): parsing, discovery and the two registered datasets."""

from __future__ import annotations

import functools
import gzip
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ._discovery import _cache_roots, _dedupe, _download_root, _fetch, _file_key, _missing_error, _user_roots
from .core import ArrayDataset, DatasetInfo, register_dataset

__all__ = ["SYSTEM_DIRS"]



# Debian/Ubuntu's dataset packages (``apt-get install -y dataset-fashion-mnist``)
SYSTEM_DIRS: dict[str, Path] = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _read_idx(path: Path) -> torch.Tensor:
    """Reads an unsigned-byte IDX file (gzipped when it ends in .gz) into a uint8 tensor."""
    return _read_idx_cached(*_file_key(path))


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path_str: str, size: int, mtime_ns: int) -> torch.Tensor:
    path = Path(path_str)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{path}: cannot read IDX file ({e}); delete it and fetch it again") from None
    # header: two zero bytes, a type code (0x08 = unsigned byte), the number of dims, then each
    # dim as a big-endian uint32
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ConfigError(f"{path}: expected unsigned-byte IDX data (type 0x08), got type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    if len(raw) - header != count:
        raise ConfigError(f"{path}: IDX header promises {count} bytes of data for shape {dims}, "
                          f"file holds {len(raw) - header}; the file is truncated or corrupt")
    arr = np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


def _find_idx_dir(candidates: Sequence[Path]) -> Path | None:
    for d in candidates:
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _IDX_FILES):
            return d
    return None


def _idx_path(d: Path, stem: str) -> Path:
    gz = d / f"{stem}.gz"
    return gz if gz.is_file() else d / stem


def _load_idx_pair(d: Path, split: str, name: str) -> ArrayDataset:
    images = _read_idx(_idx_path(d, f"{split}-images-idx3-ubyte"))
    labels = _read_idx(_idx_path(d, f"{split}-labels-idx1-ubyte"))
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ConfigError(f"{name} files in {d}: expected (N, H, W) images and (N,) labels, got "
                          f"{tuple(images.shape)} and {tuple(labels.shape)}")
    return ArrayDataset(images.unsqueeze(1), labels.long())  # (N, 1, H, W)


def _load_idx_dataset(
    *, name: str, data_dir: str | None, download: bool, tv_folder: str,
    urls: Sequence[str], how: str, mean: float, std: float,
) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """Shared by MNIST-format datasets: find (or download) the four IDX files and parse them."""
    candidates: list[Path] = []
    for r in _user_roots(data_dir):
        candidates += [r, r / name, r / tv_folder / "raw"]
    if name in SYSTEM_DIRS:
        candidates.append(SYSTEM_DIRS[name])
    candidates += [r / tv_folder / "raw" for r in _cache_roots()]
    candidates = _dedupe(candidates)
    found = _find_idx_dir(candidates)
    if found is None and download:
        found = _download_root(data_dir) / tv_folder / "raw"
        for stem in _IDX_FILES:
            if not (found / stem).is_file() and not (found / f"{stem}.gz").is_file():
                _fetch([f"{base}{stem}.gz" for base in urls], found / f"{stem}.gz")
    if found is None:
        raise _missing_error(name, [f"{f}[.gz]" for f in _IDX_FILES], candidates, how)
    train = _load_idx_pair(found, "train", name)
    test = _load_idx_pair(found, "t10k", name)
    _, _, h, w = train.images.shape
    info = DatasetInfo(name=name, num_classes=10, in_channels=1, image_size=(h, w), mean=(mean,), std=(std,))
    return train, test, info


@register_dataset("fashion-mnist")
def _fashion_mnist(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k grey 28x28 images of clothing, 10 classes."""
    return _load_idx_dataset(
        name="fashion-mnist", data_dir=data_dir, download=download,
        tv_folder="FashionMNIST",
        urls=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        how="apt-get install -y dataset-fashion-mnist (Debian/Ubuntu; run apt-get update first), "
            "or pass --download / set data.download: true (needs a network)",
        mean=0.2860, std=0.3530,
    )


@register_dataset("mnist")
def _mnist(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """MNIST (LeCun et al.): 60k/10k grey 28x28 handwritten digits, 10 classes."""
    return _load_idx_dataset(
        name="mnist", data_dir=data_dir, download=download,
        tv_folder="MNIST",
        urls=["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        how="pass --download / set data.download: true (needs a network)",
        mean=0.1307, std=0.3081,
    )
