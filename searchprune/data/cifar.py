"""CIFAR-10 / CIFAR-100 (python pickle batches, read by a numpy-only unpickler)."""

from __future__ import annotations

import functools
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ._discovery import _cache_roots, _dedupe, _download_root, _fetch, _file_key, _missing_error, _user_roots
from .core import ArrayDataset, DatasetInfo, register_dataset

__all__: list[str] = []




class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but refuses any global other than numpy's array plumbing, so a
    tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    return _read_cifar_cached(*_file_key(path), label_key)


@functools.lru_cache(maxsize=16)
def _read_cifar_cached(
    path_str: str, size: int, mtime_ns: int, label_key: bytes
) -> tuple[torch.Tensor, torch.Tensor]:
    path = Path(path_str)
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read CIFAR batch ({e}); delete it and fetch it again") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ConfigError(f"{path}: expected a CIFAR batch dict with b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if len(labels) != len(data):
        raise ConfigError(f"{path}: {len(data)} images but {len(labels)} labels")
    # rows are R(1024) G(1024) B(1024), each row-major 32x32
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


def _safe_extract(tar: tarfile.TarFile, root: Path) -> None:
    """Extracts ``tar`` under ``root``, refusing members that would land outside it."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(root, filter="data")
        return
    base = root.resolve()
    for m in tar.getmembers():
        target = (base / m.name).resolve()
        if not (m.isfile() or m.isdir()) or (base != target and base not in target.parents):
            raise ConfigError(f"refusing to extract {m.name!r} from {tar.name!r}")
    tar.extractall(root)


def _load_cifar(
    *, name: str, data_dir: str | None, download: bool, folder: str, train_files: Sequence[str],
    test_files: Sequence[str], label_key: bytes, num_classes: int, url: str,
    mean: tuple[float, ...], std: tuple[float, ...],
) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    candidates = _dedupe([r / folder for r in _user_roots(data_dir) + _cache_roots()])
    wanted = [*train_files, *test_files]

    def complete(d: Path) -> bool:
        return all((d / f).is_file() for f in wanted)

    found = next((d for d in candidates if complete(d)), None)
    if found is None and download:
        root = _download_root(data_dir)
        archive = root / url.rsplit("/", 1)[1]
        _fetch([url], archive)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                _safe_extract(tar, root)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ConfigError(f"{archive}: cannot extract ({e}); delete it and download again") from None
        archive.unlink(missing_ok=True)
        found = root / folder if complete(root / folder) else None
    if found is None:
        raise _missing_error(name, [f"{folder}/{f}" for f in wanted], [c.parent for c in candidates],
                             f"pass --download / set data.download: true (needs a network), or unpack "
                             f"{url} into one of these folders")

    def read(files: Sequence[str]) -> ArrayDataset:
        parts = [_read_cifar_batch(found / f, label_key) for f in files]
        return ArrayDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    info = DatasetInfo(name=name, num_classes=num_classes, in_channels=3, image_size=(32, 32),
                       mean=mean, std=std)
    return read(train_files), read(test_files), info


@register_dataset("cifar10")
def _cifar10(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """CIFAR-10 (Krizhevsky 2009): 50k/10k RGB 32x32 images, 10 classes."""
    return _load_cifar(
        name="cifar10", data_dir=data_dir, download=download, folder="cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)], test_files=["test_batch"],
        label_key=b"labels", num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
    )


@register_dataset("cifar100")
def _cifar100(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """CIFAR-100 (Krizhevsky 2009): 50k/10k RGB 32x32 images, 100 fine labels."""
    return _load_cifar(
        name="cifar100", data_dir=data_dir, download=download, folder="cifar-100-python",
        train_files=["train"], test_files=["test"], label_key=b"fine_labels", num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    )
