"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: WRN-28-4, as in HYDRA's results.

Pre-activation blocks (BN-ReLU-conv twice), widths 16, 16k, 32k, 64k for widening factor k,
(depth - 4) / 6 blocks per group, a 1x1 projection conv (no BN) where the shape changes, then
BN-ReLU, global average pooling and one FC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ._blocks import he_fan_out_init_, make_stage, projection
from ._normalize import Normalize
from ._registry import mark_classifier, register_model

__all__ = ["WideBasic", "WideResNet", "wrn_28_4"]


class WideBasic(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus a shortcut.

    When the shape changes, the shortcut is a 1x1 conv applied to the *activated* input, as in the
    reference implementation; otherwise it is the raw input.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the projection).
        dropout: dropout probability between the two convs.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = projection(in_planes, planes, stride)  # applied to the activated input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        if self.shortcut is None:
            return out + x
        return out + self.shortcut(act)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` for small images.

    Args:
        depth: total layers, ``6n + 4``.
        widen: widening factor ``k``.
        num_classes: classifier outputs.
        in_channels: input channels.
        dropout: dropout probability inside each block.
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.

    Raises:
        ConfigError: ``depth`` is not of the form ``6n + 4``.
    """

    def __init__(
        self,
        depth: int,
        widen: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"WideResNet depth: expected 6n + 4 (10, 16, 22, 28, ...), got {depth}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"WideResNet dropout: expected a probability in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        def block(in_planes: int, planes: int, stride: int) -> WideBasic:
            return WideBasic(in_planes, planes, stride, dropout)

        self.block1 = make_stage(block, widths[0], widths[1], 1, n)
        self.block2 = make_stage(block, widths[1], widths[2], 2, n)
        self.block3 = make_stage(block, widths[2], widths[3], 2, n)
        in_planes = widths[3]
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = mark_classifier(nn.Linear(in_planes, num_classes))
        he_fan_out_init_(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))  # (B, 16, H, W)
        x = self.block3(self.block2(self.block1(x)))  # (B, 64k, H/4, W/4)
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("wrn_28_4")
def wrn_28_4(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """WRN-28-4 (5.8M parameters); any image size (global pooling).

    Args:
        dropout: dropout probability inside each block (0 in HYDRA and most robust training).
    """
    return WideResNet(28, 4, num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                      mean=mean, std=std)
