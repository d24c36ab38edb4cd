"""Compute cost of a model: multiply-accumulates (MACs) and parameter counts.

One MAC is one multiply-add of a convolution or linear layer. BatchNorm, pooling, activations,
normalization and bias additions are *not* counted: they are a few percent of a CNN's work and
every compression method leaves them alone (this is what ``torch.utils.flop_counter`` reports as
FLOPs / 2 for a dense model; fvcore, thop and ptflops add BN/bias/ReLU terms on top).

*Effective* MACs count nonzero weights only: a layer's cost is
``nonzero(module.weight) x output positions``. Masks and fake-quantizers are parametrizations, so
``module.weight`` is already the effective (masked, quantized) weight; physically removed channels
are simply absent from the weight's shape. Grouped and depthwise convolutions need no special case
because their weight shape ``(C_out, C_in / groups, kh, kw)`` already holds one entry per
multiply-add per output position.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    >>> count_dense_macs(model, (1, 28, 28))  # 4*1*9 * 26*26 + 2704*10
    51376
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._torch import count_params, eval_mode

__all__ = ["LayerCost", "count_macs", "count_dense_macs", "layer_costs", "count_params"]

# Layers whose multiply-adds are counted. Transposed convs multiply every *input* position by the
# whole kernel, ordinary convs every *output* position; both are _ConvNd subclasses.
_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LayerCost:
    """The cost of one conv / linear layer for a single input image.

    Attributes:
        dense_macs: multiply-adds with every weight counted (``weight.numel() x out_positions``).
        macs: multiply-adds of the nonzero weights only (``nonzero_params x out_positions``).
        params: entries of the layer's (effective) weight; the bias is not included.
        nonzero_params: nonzero entries of the effective weight.
        out_positions: how often each weight entry is used per image: ``H_out x W_out`` for a conv
            (input positions for a transposed conv), rows per sample for a linear layer (usually 1),
            summed over calls when a module runs more than once per forward.
    """

    dense_macs: int
    macs: int
    params: int
    nonzero_params: int
    out_positions: int

    @property
    def density(self) -> float:
        """Fraction of the weight that is nonzero (1.0 for a layer with no weights)."""
        return self.nonzero_params / self.params if self.params else 1.0


def _dummy_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    if len(input_shape) < 1 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"expected a per-image input shape such as (C, H, W), got {tuple(input_shape)}")
    ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    # 0.5 everywhere: a valid [0, 1] image, so models that check their input range do not object
    return torch.full((1, *(int(s) for s in input_shape)), 0.5, device=device, dtype=dtype)


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerCost]:
    """Measures every conv / linear layer's cost with one forward pass of a single dummy image.

    Args:
        model: any ``nn.Module``; it is run once in eval mode under ``no_grad`` and its modes are
            restored afterwards.
        input_shape: one image's shape without the batch dimension, e.g. ``(1, 28, 28)``.

    Returns:
        Layer name (as in ``model.named_modules()``) -> :class:`LayerCost`, in call order. Layers
        that the forward pass never reaches are left out.
    """
    positions: dict[str, int] = {}
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = names[module]
        if isinstance(module, nn.Linear):
            n = output.numel() // module.out_features  # rows per sample (batch 1)
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):
            n = math.prod(inputs[0].shape[2:])  # (1, C_in, *spatial): each input pixel meets the kernel
        else:
            n = math.prod(output.shape[2:])  # (1, C_out, *spatial_out)
        if name not in positions:
            order.append(name)
        positions[name] = positions.get(name, 0) + int(n)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    try:
        with eval_mode(model), torch.no_grad():
            model(_dummy_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()

    modules = dict(model.named_modules())
    costs: dict[str, LayerCost] = {}
    with torch.no_grad():
        for name in order:
            weight = modules[name].weight  # effective weight: parametrizations applied
            total, nonzero = weight.numel(), int(torch.count_nonzero(weight))
            n = positions[name]
            costs[name] = LayerCost(dense_macs=total * n, macs=nonzero * n, params=total,
                                    nonzero_params=nonzero, out_positions=n)
    return costs


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Effective MACs per image: nonzero conv / linear weights x their output positions.

    Args:
        model: the (possibly masked, quantized or physically pruned) model.
        input_shape: one image's shape, e.g. ``(3, 32, 32)``.
    """
    return sum(c.macs for c in layer_costs(model, input_shape).values())


def count_dense_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs per image with every weight counted, zero or not (physically removed ones are gone)."""
    return sum(c.dense_macs for c in layer_costs(model, input_shape).values())
