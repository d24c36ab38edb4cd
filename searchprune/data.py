"""Datasets as uint8 tensors in memory, deterministic splits, and a fast batch loader.

Images stay ``uint8`` ``(N, C, H, W)`` until a batch is drawn; :class:`BatchLoader` turns each batch
into float32 in **[0, 1]** on the target device. Normalization is *not* done here: it is the first
layer of every model (``searchprune.models.Normalize``), so attack budgets stay on the pixel scale.
Each dataset's mean/std travels in :class:`DatasetInfo` for the model to use.

A dataset is one loader function registered by name::

    @register_dataset("my-set")
    def _my_set(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
        ...

Files are looked for in ``data_dir``, then ``$SEARCHPRUNE_DATA``, then system locations (Debian's
``/usr/share/datasets``), then the torchvision cache layout under ``~/.cache/searchprune`` and
``./data``. Nothing is downloaded unless ``download=True``; a missing dataset raises
:class:`~searchprune.utils.ConfigError` listing every path tried and how to get the files.

Loaded files are cached per process (keyed by path, size and mtime): the tensors returned by
:func:`load_dataset` are shared between callers and must be treated as read-only.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import shutil
import struct
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._registry import Registry
from .config import DataConfig
from .errors import ConfigError

__all__ = [
    "DatasetInfo", "ArrayDataset", "Splits", "BatchLoader", "list_datasets", "load_dataset",
    "make_splits", "register_dataset", "make_synthetic",
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


# ---------------------------------------------------------------------------------------------
# BatchLoader
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# File locations, downloads, and the errors that explain them
# ---------------------------------------------------------------------------------------------


def _user_roots(data_dir: str | None) -> list[Path]:
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("SEARCHPRUNE_DATA")
    if env:
        roots.append(Path(env).expanduser())
    return roots


def _cache_roots() -> list[Path]:
    return [Path("~/.cache/searchprune").expanduser(), Path.cwd() / "data"]


def _download_root(data_dir: str | None) -> Path:
    """Where downloads go: the first root searched (data_dir, $SEARCHPRUNE_DATA, then the cache)."""
    roots = _user_roots(data_dir)
    return roots[0] if roots else _cache_roots()[0]


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _missing_error(name: str, wanted: Sequence[str], tried: Sequence[Path], how: str) -> ConfigError:
    lines = "\n".join(f"  {p}" for p in tried)
    return ConfigError(
        f"dataset {name!r} not found: looked for {', '.join(wanted)} in:\n{lines}\n"
        f"To get it: {how}\nor point data.data_dir (or $SEARCHPRUNE_DATA) at a folder holding the files."
    )


def _fetch(urls: Sequence[str], dest: Path) -> None:
    """Downloads the first URL of ``urls`` that answers to ``dest`` (atomically, via a .part file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f)
            tmp.replace(dest)
            return
        except OSError as e:  # URLError and HTTPError are OSErrors
            errors.append(f"{url}: {e}")
    tmp.unlink(missing_ok=True)
    raise ConfigError(f"could not download {dest.name} to {dest.parent}:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

# Debian/Ubuntu's dataset packages (``apt-get install -y dataset-fashion-mnist``)
SYSTEM_DIRS: dict[str, Path] = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


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


# ---------------------------------------------------------------------------------------------
# CIFAR (python pickle batches)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# SVHN (through torchvision, which reads the .mat files)
# ---------------------------------------------------------------------------------------------


@register_dataset("svhn")
def _svhn(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """SVHN (Netzer et al. 2011), cropped digits: 73,257/26,032 RGB 32x32 images, 10 classes.

    Read through ``torchvision.datasets.SVHN`` (install ``searchprune[vision]``).
    """
    try:
        from torchvision.datasets import SVHN
    except Exception as e:  # ImportError, or a torchvision built against another torch
        raise ConfigError(f"dataset 'svhn' needs torchvision, which does not import here ({e}); "
                          f"install it with: pip install searchprune[vision]") from None
    files = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
    candidates = []
    for r in _user_roots(data_dir) + _cache_roots():
        candidates += [r / "svhn", r / "SVHN", r]
    candidates = _dedupe(candidates)
    found = next((d for d in candidates if all((d / f).is_file() for f in files.values())), None)
    if found is None and download:
        found = _download_root(data_dir) / "svhn"
    if found is None:
        raise _missing_error("svhn", list(files.values()), candidates,
                             "pass --download / set data.download: true (needs a network)")

    def read(split: str) -> ArrayDataset:
        ds = SVHN(root=str(found), split=split, download=download)
        # the original .mat files store digit 0 as label 10; torchvision maps it, raw copies may not
        labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64) % 10)
        return ArrayDataset(torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8)), labels)

    info = DatasetInfo(name="svhn", num_classes=10, in_channels=3, image_size=(32, 32),
                       mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970))
    return read("train"), read("test"), info


# ---------------------------------------------------------------------------------------------
# Synthetic (for tests and smoke runs: no files, generated in milliseconds)
# ---------------------------------------------------------------------------------------------


def make_synthetic(
    *, num_train: int = 8000, num_test: int = 2000, num_classes: int = 10, in_channels: int = 1,
    image_size: tuple[int, int] = (28, 28), seed: int = 0, noise: float = 0.15,
) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """Generates a small image-classification task that a small CNN learns in one epoch.

    Each class has a smooth random prototype (a 5x5 random grid upsampled bicubically). A sample
    is its class prototype, randomly shifted by up to 3 pixels and scaled by 0.9-1.1, blended with
    up to 30% of another class's prototype, with random contrast and brightness and Gaussian pixel
    noise of std ``noise``. Labels are balanced. Everything is drawn from one generator seeded with
    ``seed``, so the same arguments give the same tensors.

    Returns:
        ``(train, test, info)`` with ``info.name == "synthetic"`` and the train set's mean/std.
    """
    if num_classes < 2 or in_channels < 1 or num_train < num_classes or num_test < 1:
        raise ConfigError(f"synthetic: expected num_classes >= 2, in_channels >= 1, num_train >= "
                          f"num_classes, num_test >= 1; got {num_classes}, {in_channels}, "
                          f"{num_train}, {num_test}")
    h, w = image_size
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_channels, 5, 5, generator=gen)
    protos = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    lo = protos.amin(dim=(1, 2, 3), keepdim=True)
    hi = protos.amax(dim=(1, 2, 3), keepdim=True)
    protos = (protos - lo) / (hi - lo)  # (K, C, H, W), each prototype stretched to [0, 1]

    def sample(n: int) -> ArrayDataset:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        other = (labels + torch.randint(1, num_classes, (n,), generator=gen)) % num_classes
        mix = 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
        x = (1 - mix) * protos[labels] + mix * protos[other]
        # random scale and translation (up to 3 px) as one batched warp; the grid is separable, so
        # build it directly instead of through affine_grid's batched matmul
        scale = (0.9 + 0.2 * torch.rand(n, 1, 1, generator=gen))
        shift = (torch.rand(n, 2, 1, 1, generator=gen) * 2 - 1) * 3.0 * 2  # in pixels * 2, /size below
        xs = (torch.arange(w) * 2 + 1) / w - 1  # pixel centres in [-1, 1] (align_corners=False)
        ys = (torch.arange(h) * 2 + 1) / h - 1
        gx = (scale * xs.view(1, 1, w) + shift[:, 0] / w).expand(n, h, w)
        gy = (scale * ys.view(1, h, 1) + shift[:, 1] / h).expand(n, h, w)
        grid = torch.stack([gx, gy], dim=-1)  # (n, H, W, 2)
        x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        contrast = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
        bright = 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
        x = contrast * x + bright + noise * torch.randn(x.shape, generator=gen)
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return ArrayDataset(images, labels)

    train, test = sample(num_train), sample(num_test)
    pix = train.images.float().div(255).transpose(0, 1).reshape(in_channels, -1)
    info = DatasetInfo(name="synthetic", num_classes=num_classes, in_channels=in_channels, image_size=(h, w),
                       mean=tuple(round(v, 4) for v in pix.mean(1).tolist()),
                       std=tuple(round(v, 4) for v in pix.std(1).tolist()))
    return train, test, info


@functools.lru_cache(maxsize=1)
def _synthetic_default() -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    return make_synthetic()


@register_dataset("synthetic")
def _synthetic(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """10 classes of 1x28x28 images, 8000 train / 2000 test (see :func:`make_synthetic`)."""
    return _synthetic_default()
