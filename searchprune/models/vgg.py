"""VGG-16 with BatchNorm for CIFAR-sized inputs, in the layout HYDRA's robust-pruning results use.

Thirteen 3x3 conv-BN-ReLU layers (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3) with
four 2x2 max-pools (the fifth of ImageNet VGG is dropped), a 2x2 adaptive average pool, and a
small classifier FC(512*2*2 -> 256) -> ReLU -> FC(256 -> 256) -> ReLU -> FC(256 -> classes).
This head follows HYDRA's ``vgg16_bn`` as we recall it (not checked against the repository); the
conv trunk is the standard VGG-16 configuration D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import he_fan_out_init_
from ._normalize import Normalize
from ._registry import mark_classifier, register_model, require_min_size

__all__ = ["VGG", "vgg16_bn"]

# configuration D without its last max-pool; "M" = 2x2 max-pool
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    """A VGG trunk of conv-BN-ReLU blocks plus a three-layer FC head.

    Args:
        cfg: channel counts and "M" for max-pools.
        num_classes: classifier outputs.
        in_channels: input channels.
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        # fixed 2x2 output whatever the input size (32x32 gives 2x2 already; 28x28 gives 1x1)
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(c * 2 * 2, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            mark_classifier(nn.Linear(256, num_classes)),
        )
        he_fan_out_init_(self, linear_std=0.01, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))  # (B, 512, H/16, W/16)
        x = self.flatten(self.avgpool(x))  # (B, 2048)
        return self.classifier(x)


@register_model("vgg16_bn")
def vgg16_bn(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """VGG-16-BN for CIFAR (15.3M parameters at 32x32 and 10 classes); inputs of at least 16x16."""
    require_min_size("vgg16_bn", image_size, 16)  # four 2x2 pools: 16 -> 1
    return VGG(_VGG16, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
