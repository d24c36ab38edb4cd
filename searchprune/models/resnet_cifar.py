"""CIFAR ResNets of He et al. (2016, section 4.2): ResNet-20/32/56.

A 3x3 stem with 16 channels, three stages of ``n`` basic blocks (16, 32, 64 channels; the second
and third stages halve the resolution), global average pooling and one FC, with 6n + 2 layers.

Shortcuts use **option B**: a 1x1 convolution + BatchNorm projection wherever the shape changes
(identity elsewhere), instead of the paper's parameter-free option A (zero-padded strided
identity). Option A's padding is a functional op that Torch-Pruning's dependency graph cannot
follow, so channel pruning would break; option B adds about 1% parameters and keeps every
channel coupling explicit, so structured pruning works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import he_fan_out_init_, make_stage
from ._normalize import Normalize
from ._registry import mark_classifier, register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the projection shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            # option B: learned projection to the new shape
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with ``blocks_per_stage`` basic blocks per stage.

    Args:
        blocks_per_stage: ``n``; depth is ``6n + 2`` (3 -> ResNet-20, 5 -> 32, 9 -> 56).
        num_classes: classifier outputs.
        in_channels: input channels.
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = make_stage(BasicBlock, 16, 16, 1, blocks_per_stage)
        self.layer2 = make_stage(BasicBlock, 16, 32, 2, blocks_per_stage)
        self.layer3 = make_stage(BasicBlock, 32, 64, 2, blocks_per_stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = mark_classifier(nn.Linear(64, num_classes))
        he_fan_out_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)
        return self.linear(self.flatten(self.avgpool(x)))


def _resnet(n: int, num_classes: int, in_channels: int, mean: Sequence[float] | None,
            std: Sequence[float] | None) -> nn.Module:
    return CifarResNet(n, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


@register_model("resnet20")
def resnet20(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """ResNet-20 (0.27M parameters), option-B shortcuts; any image size (global pooling)."""
    return _resnet(3, num_classes, in_channels, mean, std)


@register_model("resnet32")
def resnet32(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """ResNet-32 (0.47M parameters), option-B shortcuts; any image size (global pooling)."""
    return _resnet(5, num_classes, in_channels, mean, std)


@register_model("resnet56")
def resnet56(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """ResNet-56 (0.86M parameters), option-B shortcuts; any image size (global pooling)."""
    return _resnet(9, num_classes, in_channels, mean, std)
