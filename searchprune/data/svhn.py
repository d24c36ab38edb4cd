"""SVHN cropped digits, read through torchvision (which parses the .mat files)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ._discovery import _cache_roots, _dedupe, _download_root, _missing_error, _user_roots
from .core import ArrayDataset, DatasetInfo, register_dataset

__all__: list[str] = []




@register_dataset("svhn")
def _svhn(*, data_dir: str | None, download: bool) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    """SVHN (Netzer et al. 2011), cropped digits: 73,257/26,032 RGB 32x32 images, 10 classes.

    Read through ``torchvision.datasets.SVHN`` (install ``searchprune[vision]``).
    """
    try:  # lazy: torchvision is an optional extra, needed only when SVHN is asked for
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
