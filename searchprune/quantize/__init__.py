"""Quantization: fake quantization at any bitwidth, calibration, QAT, costs and int8 export.

The shape of torchao's API (one in-place verb driven by a frozen config), written for our conv
nets: ``quantize_(model, QuantConfig(...), calib_loader=...)`` inserts weight fake quantizers as
parametrizations (after pruning masks) and activation quantizers as pre-hooked child modules.

Example:
    >>> cfg = QuantConfig(mode="ptq", weight_bits=4, act_bits=8)
    >>> quantize_(model, cfg, calib_loader=train_loader)
    >>> acc = robust_accuracy(model, val_loader, threat)          # BPDA: attacks through the STE
    >>> with hard_rounding(model):                                # what a naive attack sees
    ...     masked = robust_accuracy(model, val_loader, threat)
    >>> count_bitops(model, (1, 28, 28))
    >>> fast = to_int8(model, train_loader, num_batches=cfg.calib_batches)  # real int8 kernels
"""

from __future__ import annotations

from ._api import (
    QUANTIZABLE,
    calibrate_,
    dequantize_,
    hard_rounding,
    is_quantized,
    layer_bitwidths,
    quantizable_layers,
    quantize_,
    set_ste_,
)
from ._costs import count_bitops, pruned_layer_macs, pruned_macs
from ._fake import ActFakeQuant, WeightFakeQuant
from ._int8 import fold_parametrizations_, int8_backend, to_int8

__all__ = [
    "quantize_", "calibrate_", "dequantize_", "set_ste_", "hard_rounding", "is_quantized",
    "layer_bitwidths", "quantizable_layers", "QUANTIZABLE", "count_bitops", "pruned_macs",
    "pruned_layer_macs",
    "to_int8", "int8_backend", "fold_parametrizations_", "WeightFakeQuant", "ActFakeQuant",
]
