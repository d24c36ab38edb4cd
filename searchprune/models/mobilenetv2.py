"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The CIFAR adaptation keeps the paper's inverted-residual table but uses stride 1 in the stem and
in the 24-channel stage, so a 32x32 input ends at 4x4 instead of 1x1. Differences from the
ImageNet model, chosen for robustness work and structured pruning: ``nn.ReLU`` instead of ReLU6
(as in common CIFAR ports), and no dropout before the classifier. Residual connections exist only
where stride is 1 and the channel count is unchanged, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ._blocks import he_fan_out_init_
from ._normalize import Normalize
from ._registry import mark_classifier, register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2_cifar"]

# (expansion t, output channels c, repeats n, first stride s); strides of rows 2 adapted to CIFAR
_CIFAR_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Rounds a width to a multiple of ``divisor`` without dropping more than 10% (the paper's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU (skipped when ``expansion == 1``), 3x3 depthwise-BN-ReLU, 1x1 project-BN.

    Args:
        in_planes: input channels.
        planes: output channels.
        expansion: hidden width as a multiple of ``in_planes``.
        stride: stride of the depthwise conv.
    """

    def __init__(self, in_planes: int, planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.expand: nn.Module = nn.Identity()
        if expansion != 1:
            self.expand = nn.Sequential(
                nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()
            )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, planes, 1, bias=False), nn.BatchNorm2d(planes))
        self.use_residual = stride == 1 and in_planes == planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: scales every width (rounded to multiples of 8).
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"mobilenetv2 width_mult: expected > 0, got {width_mult}")
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        stem = _make_divisible(32 * width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()
        )
        blocks = []
        c_in = stem
        for t, c, n, s in _CIFAR_SETTING:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_out, t, s if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        last = _make_divisible(1280 * max(1.0, width_mult))
        self.head = nn.Sequential(nn.Conv2d(c_in, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = mark_classifier(nn.Linear(last, num_classes))
        he_fan_out_init_(self, linear_std=0.01, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))  # (B, 32, H, W)
        x = self.head(self.blocks(x))  # (B, 1280, H/8, W/8)
        return self.linear(self.flatten(self.avgpool(x)))


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    width_mult: float = 1.0,
) -> nn.Module:
    """MobileNetV2 for CIFAR (2.2M parameters at width 1); any image size (global pooling).

    Args:
        width_mult: scales every layer's width (0.5 halves the channels).
    """
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult,
                       mean=mean, std=std)
