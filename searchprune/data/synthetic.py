"""A synthetic image-classification task for tests and smoke runs: no files, generated in milliseconds."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .core import ArrayDataset, DatasetInfo, register_dataset

__all__ = ["make_synthetic"]




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
