"""Pieces the model families share: weight initialisation, residual stages, projection shortcuts.

Each helper builds or touches modules exactly as the inline code it replaced did, in the same
order, so state-dict keys, parameter order and the random draws of a seeded build are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["he_init_", "he_fan_out_init_", "make_stage", "projection"]


def he_fan_out_init_(model: nn.Module, *, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """He-normal (fan-out) conv weights, zero conv biases, BatchNorm weight 1 and bias 0.

    The ResNet/VGG/MobileNet recipe. ``nn.Linear`` layers keep PyTorch's default unless asked.

    Args:
        model: initialised in place, module by module in ``model.modules()`` order.
        linear_std: if given, ``nn.Linear`` weights are drawn from ``N(0, linear_std^2)``.
        zero_linear_bias: sets ``nn.Linear`` biases to 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0, linear_std)
            if zero_linear_bias:
                nn.init.zeros_(m.bias)


def he_init_(model: nn.Module) -> None:
    """He-normal (fan-in, ReLU gain) weights and zero biases for every conv and FC (HYDRA's recipe)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def make_stage(block: Callable[[int, int, int], nn.Module], in_planes: int, planes: int, stride: int,
               num_blocks: int) -> nn.Sequential:
    """``num_blocks`` residual blocks ``block(in, out, stride)``; only the first one strides or widens."""
    return nn.Sequential(*(block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                           for i in range(num_blocks)))


def projection(in_planes: int, planes: int, stride: int) -> nn.Conv2d | None:
    """A 1x1 strided conv (no BN) for a pre-activation shortcut whose shape changes, else None."""
    if stride != 1 or in_planes != planes:
        return nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
    return None
