"""Small plain CNNs for MNIST-sized inputs: the seed papers' CPU-scale models.

* ``cnn8``: ``EightLayerConv`` of Adver-Fine (Thorsteinsson et al. 2024), the Fashion-MNIST model.
* ``mnist_small``: HYDRA's ``mnist_model`` (Sehwag et al. 2020), which is also FastAT's
  ``mnist_net`` (Wong et al. 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ._blocks import he_init_
from ._normalize import Normalize
from ._registry import mark_classifier, register_model, require_min_size

__all__ = ["EightLayerConv", "MnistSmall", "cnn8", "mnist_small"]


def _strided_size(n: int, *, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv along one axis."""
    return (n + 2 * padding - kernel) // stride + 1


class EightLayerConv(nn.Module):
    """Six 3x3 convs and two FCs, no BatchNorm, no pooling (methods.md E.1).

    Convs (all 3x3, padding 1, with bias, each followed by ReLU): 32, 32/s2, 64, 64/s2, 128,
    128/s2; then flatten -> FC(128*h*w -> 128) -> ReLU -> FC(128 -> num_classes). For 28x28 and
    32x32 inputs the feature map is 128x4x4, so the first FC is 2048 -> 128 as in the paper.
    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        image_size: ``(H, W)``, sizes the first FC.
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.
        init: "kaiming" (He-normal weights, zero biases) or "torch_default" (PyTorch's default,
            as the reference code). Eight plain ReLU layers without BatchNorm shrink the signal
            under PyTorch's default init, so training sits at loss ln(10) for hundreds of steps
            (measured: 150 batches of SGD at lr 0.1 left it at chance); He init starts learning
            at once. Use "torch_default" to reproduce the paper exactly.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        h, w = image_size
        widths = (32, 32, 64, 64, 128, 128)
        strides = (1, 2, 1, 2, 1, 2)
        c_in = in_channels
        for i, (c_out, s) in enumerate(zip(widths, strides), start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=True))
            setattr(self, f"relu{i}", nn.ReLU())
            h = _strided_size(h, kernel=3, stride=s, padding=1)
            w = _strided_size(w, kernel=3, stride=s, padding=1)
            c_in = c_out
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c_in * h * w, 128)  # 128 * 4 * 4 = 2048 for 28x28 and 32x32
        self.relu7 = nn.ReLU()
        self.fc2 = mark_classifier(nn.Linear(128, num_classes))
        if init == "kaiming":
            he_init_(self)
        elif init != "torch_default":
            raise ConfigError(f"cnn8 init {init!r}: expected 'kaiming' or 'torch_default'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, C, H, W)
        for i in range(1, 7):
            x = getattr(self, f"relu{i}")(getattr(self, f"conv{i}")(x))
        x = self.flatten(x)  # (B, 128 * h * w)
        return self.fc2(self.relu7(self.fc1(x)))


class MnistSmall(nn.Module):
    """HYDRA ``mnist_model`` = FastAT ``mnist_net`` (methods.md B.2, F.5).

    conv(C -> 16, k4, s2, p1) -> ReLU -> conv(16 -> 32, k4, s2, p1) -> ReLU -> flatten ->
    FC(32*h*w -> 100) -> ReLU -> FC(100 -> num_classes); 32*7*7 for 28x28, 32*8*8 for 32x32
    (HYDRA's ``cifar_model``). Kaiming-normal weights and zero biases, as in HYDRA.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        image_size: ``(H, W)``, sizes the first FC.
        mean: per-channel input mean for :class:`Normalize` (None: no normalization).
        std: per-channel input std.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        require_min_size("mnist_small", image_size, 4)  # two k4/s2 convs: 4 -> 2 -> 1
        self.normalize = Normalize(mean, std, num_channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, 16, 4, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        h, w = image_size
        for _ in range(2):
            h = _strided_size(h, kernel=4, stride=2, padding=1)
            w = _strided_size(w, kernel=4, stride=2, padding=1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * h * w, 100)
        self.relu3 = nn.ReLU()
        self.fc2 = mark_classifier(nn.Linear(100, num_classes))
        he_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(self.normalize(x)))  # (B, 16, H/2, W/2)
        x = self.relu2(self.conv2(x))  # (B, 32, H/4, W/4)
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


@register_model("cnn8")
def cnn8(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: tuple[int, int] = (28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    init: str = "kaiming",
) -> nn.Module:
    """Adver-Fine's ``EightLayerConv`` (see :class:`EightLayerConv`)."""
    return EightLayerConv(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                          mean=mean, std=std, init=init)


@register_model("mnist_small")
def mnist_small(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: tuple[int, int] = (28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """HYDRA's ``mnist_model`` / FastAT's ``mnist_net`` (see :class:`MnistSmall`)."""
    return MnistSmall(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      mean=mean, std=std)
