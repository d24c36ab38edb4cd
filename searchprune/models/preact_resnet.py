"""PreAct ResNet-18 (He et al. 2016, identity mappings), the CIFAR model of FastAT (Wong et al. 2020).

A 3x3 stem with 64 channels, four stages of two pre-activation blocks (64, 128, 256, 512; stages
2-4 halve the resolution), a final BN-ReLU, global average pooling and one FC. Projection
shortcuts are 1x1 convs without BN, applied to the activated input, as in FastAT's code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import he_fan_out_init_, make_stage, projection
from ._normalize import Normalize
from ._registry import mark_classifier, register_model

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the projection).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """A pre-activation ResNet of :class:`PreActBlock` stages.

    Args:
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: classifier outputs.
        in_channels: input channels.
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        stages = []
        for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), num_blocks):
            stages.append(make_stage(PreActBlock, in_planes, planes, stride, n))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = mark_classifier(nn.Linear(in_planes, num_classes))
        he_fan_out_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))  # (B, 64, H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/8, W/8)
        x = self.relu(self.bn(x))
        return self.linear(self.flatten(self.avgpool(x)))


@register_model("preact_resnet18")
def preact_resnet18(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """PreAct ResNet-18 (11.2M parameters); any image size (global pooling)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
