"""What the deployed model costs to store and what a dense kernel executes.

``size_bytes`` is the smallest honest storage of the deployed weights. Each conv / linear weight is
stored in one of these formats, with ``n`` entries, ``nnz`` nonzero, ``r`` rows (output channels),
``c = n / r`` columns and ``b`` the layer's weight bits (32 unquantized):

* ``dense``: ``n * b`` bits;
* ``csr_int32``: values ``nnz * b`` + column indices ``nnz * 32`` + row pointers ``(r + 1) * 32``;
* ``csr_int16``: the same with 16-bit column indices (only when ``c <= 32768``; row pointers stay 32-bit);
* ``bitmap``: a presence bit per entry ``n`` + values ``nnz * b``.

``format="auto"`` takes the smallest per layer; a named format is used for every layer where it
applies (``csr_int16`` falls back to ``csr_int32`` on layers with too many columns). A quantized
layer adds its scales (one 32-bit float per output channel, or one per tensor). Every other
parameter and buffer (biases, BatchNorm, normalization constants, activation ranges) counts all
entries at 32 bits. Parametrization state (the float weight behind a quantizer, masks, scores) is
training state and is not counted.

This is the project's one model-size measure (``size_bytes`` on every trial and in every export).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..models.macs import count_dense_macs
from ..quantize import QUANTIZABLE, WeightFakeQuant, layer_bitwidths

__all__ = ["FORMATS", "LayerStorage", "layer_storage", "size_bytes", "dense_macs", "weight_storage_bits"]

FLOAT_BITS = 32
FORMATS = ("auto", "dense", "csr_int32", "csr_int16", "bitmap")
_INT16_COLS = 2 ** 15  # signed 16-bit column indices 0..32767


@dataclass(frozen=True)
class LayerStorage:
    """How one layer's weight is stored.

    Attributes:
        format: "dense", "csr_int32", "csr_int16" or "bitmap".
        weight_bits: bits per stored value.
        numel: entries of the weight.
        nonzero: nonzero entries.
        bits: storage of the weight in that format, scales included.
    """

    format: str
    weight_bits: int
    numel: int
    nonzero: int
    bits: int


def weight_storage_bits(fmt: str, *, numel: int, nonzero: int, rows: int, weight_bits: int) -> int | None:
    """Bits of one weight in format ``fmt`` (scales excluded); None where the format does not apply."""
    cols = numel // max(rows, 1)
    if fmt == "dense":
        return numel * weight_bits
    if fmt == "csr_int32":
        return nonzero * (weight_bits + 32) + (rows + 1) * 32
    if fmt == "csr_int16":
        return nonzero * (weight_bits + 16) + (rows + 1) * 32 if cols <= _INT16_COLS else None
    if fmt == "bitmap":
        return numel + nonzero * weight_bits
    raise ConfigError(f"size format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _quantizer(module: nn.Module) -> WeightFakeQuant | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)["weight"])
    return next((p for p in plist if isinstance(p, WeightFakeQuant)), None)


def layer_storage(model: nn.Module, *, format: str = "auto") -> dict[str, LayerStorage]:
    """Per conv / linear layer (by name): the format chosen and its bits (see the module docstring).

    Raises:
        ConfigError: ``format`` is not one of :data:`FORMATS`.
    """
    if format not in FORMATS:
        raise ConfigError(f"size format {format!r}: expected one of {', '.join(FORMATS)}")
    widths = layer_bitwidths(model)
    out: dict[str, LayerStorage] = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, QUANTIZABLE):
                continue
            w = cast(torch.Tensor, m.weight)  # effective: masked and fake-quantized
            bits = int(widths[name][0]) if name in widths else FLOAT_BITS
            rows, numel, nnz = int(w.shape[0]), w.numel(), int(torch.count_nonzero(w))
            options = ("dense", "csr_int32", "csr_int16", "bitmap") if format == "auto" else (format,)
            cands = {f: weight_storage_bits(f, numel=numel, nonzero=nnz, rows=rows, weight_bits=bits)
                     for f in options}
            if format == "csr_int16" and cands["csr_int16"] is None:
                cands = {"csr_int32": weight_storage_bits("csr_int32", numel=numel, nonzero=nnz, rows=rows,
                                                          weight_bits=bits)}
            fmt = min((f for f in cands if cands[f] is not None), key=lambda f: cast(int, cands[f]))
            scales = 0
            if bits < FLOAT_BITS:
                quant = _quantizer(m)
                per_channel = quant.per_channel if quant is not None else True  # quantize_'s default
                scales = (rows if per_channel and w.dim() > 1 else 1) * FLOAT_BITS
            out[name] = LayerStorage(format=fmt, weight_bits=bits, numel=numel, nonzero=nnz,
                                     bits=cast(int, cands[fmt]) + scales)
    return out


def size_bytes(model: nn.Module, *, format: str = "auto") -> int:
    """Bytes to store ``model`` as deployed (weights in ``format``, the rest at 32 bits), rounded up once.

    Args:
        model: a float, masked, channel-pruned and/or fake-quantized model (not a torch.ao int8 module).
        format: "auto" (smallest per layer) or one of "dense", "csr_int32", "csr_int16", "bitmap".
    """
    layers = layer_storage(model, format=format)
    bits = sum(s.bits for s in layers.values())
    modules = dict(model.named_modules())
    skip: set[int] = set()  # weights counted above, and parametrization state
    for name in layers:
        m = modules[name]
        if not parametrize.is_parametrized(m, "weight"):
            skip.add(id(m.weight))
    for m in model.modules():
        if not parametrize.is_parametrized(m):
            continue
        for tensor_name, plist in cast(nn.ModuleDict, m.parametrizations).items():
            skip.update(id(t) for t in plist.parameters())
            skip.update(id(t) for t in plist.buffers())
            if not (isinstance(m, QUANTIZABLE) and tensor_name == "weight"):  # e.g. a masked bias
                bits += cast(torch.Tensor, getattr(m, tensor_name)).numel() * FLOAT_BITS
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in skip and id(t) not in seen:
            seen.add(id(t))
            bits += t.numel() * FLOAT_BITS
    return math.ceil(bits / 8)


def dense_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds per image that a dense kernel executes.

    Only physically removed channels and layers count as saved: zeros inside a weight (unstructured
    or masked) are still multiplied, and quantization changes no MAC.

    Args:
        model: any model (masked, channel-pruned, fake-quantized).
        input_shape: one image's shape, e.g. ``(1, 28, 28)``.
    """
    return count_dense_macs(model, input_shape)
