"""What a quantized model costs: bit operations and storage size."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models.macs import layer_costs
from ._api import _act_quant_bypassed, _weight, _weight_plist
from ._fake import WeightFakeQuant

__all__ = ["count_bitops", "pruned_layer_macs", "pruned_macs", "FLOAT_BITS"]

FLOAT_BITS = 32  # what an unquantized weight, activation or other tensor costs per entry


def _pruned_weight(module: nn.Module) -> torch.Tensor:
    """The weight as pruning left it: every parametrization (masks) applied except fake quantizers."""
    if not parametrize.is_parametrized(module, "weight"):
        return _weight(module)
    plist = _weight_plist(module)
    w = plist.original
    for p in plist:
        if not isinstance(p, WeightFakeQuant):
            w = p(w)
    return w


def pruned_layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per conv / linear layer: nonzero weights *before fake quantization* x output positions.

    What pruning removed (masks, physically removed channels) and nothing else: a weight that a
    low-bit quantizer rounds to zero is still a weight the network multiplies by (its value is
    merely small), so quantization never changes these MACs (issue 9: with the quantized weight a
    dense model at 2-bit PTQ counted 12% of its dense MACs).

    Args:
        model: any model (masked, channel-pruned, fake-quantized).
        input_shape: one image's shape, e.g. ``(1, 28, 28)``.
    """
    with _act_quant_bypassed(model):  # the counting pass needs shapes only, not calibrated ranges
        costs = layer_costs(model, input_shape)
    modules = dict(model.named_modules())
    with torch.no_grad():
        return {name: int(torch.count_nonzero(_pruned_weight(modules[name]))) * c.out_positions
                for name, c in costs.items()}


def pruned_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Effective MACs per image as pruning left the model (see :func:`pruned_layer_macs`): the
    papers' convention, and the ``macs`` a trial reports."""
    return sum(pruned_layer_macs(model, input_shape).values())


def count_bitops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bit operations per image: sum over conv / linear layers of MACs x weight bits x input bits.

    MACs are those of :func:`pruned_layer_macs` (nonzero weights before fake quantization x output
    positions), so the bit widths enter exactly once. A layer without a weight quantizer counts 32
    weight bits, one without an activation quantizer 32 input bits, so a float model costs
    ``32 * 32 * MACs``.

    Args:
        model: any model; quantized layers carry ``weight_bits`` / ``act_bits`` (see ``quantize_``).
        input_shape: one image's shape, e.g. ``(1, 28, 28)``.
    """
    modules = dict(model.named_modules())
    total = 0
    for name, macs in pruned_layer_macs(model, input_shape).items():
        module = modules[name]
        w_bits = getattr(module, "weight_bits", None) or FLOAT_BITS
        a_bits = getattr(module, "act_bits", None) or FLOAT_BITS
        total += macs * int(w_bits) * int(a_bits)
    return int(total)

