"""``latency_ms``: measured inference time of a model's deployable form, cached by shape signature.

The number a user deploying the model pays: the median of repeated timed forwards of
:func:`~.form.deployable` (BN folded, channels_last where it helps, int8 where the weights are
8-bit) at a stated batch size, on the model's device. Models whose conv / linear shapes, bit widths
and settings agree (:func:`~._measure.signature_key`) share one measurement: a study times each
distinct shape once, and with ``LatencyCache(directory)`` once across processes and restarts.

Example:
    >>> cache = LatencyCache("runs/my_study/latency")
    >>> latency_ms(model, torch.rand(1, 1, 28, 28), batch_size=128, cache=cache)
    41.7
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import _measure
from ._measure import DEFAULT_CACHE, LatencyCache, model_device, resolve_bits, signature_key
from .form import ChannelsLast, deployable

__all__ = ["latency_ms", "LatencyCache", "DEFAULT_CACHE"]


def latency_ms(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    batch_size: int = 128,
    repeats: int = 10,
    warmup: int = 2,
    quant_bits: int | None = None,
    channels_last: ChannelsLast = "auto",
    calib_loader: Iterable[Any] | None = None,
    cache: LatencyCache | None = None,
) -> float:
    """Median milliseconds per batch of ``batch_size`` images through ``model``'s deployable form.

    Args:
        model: the model as trained (float, masked, channel-pruned or fake-quantized); it is not changed.
        example_input: one image or a batch (``[0, 1]`` pixels); its first image, repeated
            ``batch_size`` times, is the timed batch.
        batch_size: images per timed forward.
        repeats: timed forwards; the median is returned.
        warmup: untimed forwards first (allocator, oneDNN primitive caches).
        quant_bits: weight bits (None: read from the model's quantizers).
        channels_last: passed to :func:`~.form.deployable`.
        calib_loader: int8 calibration batches (None: the timed batch; ranges do not change the time).
        cache: the cache to read and fill (default: the process-wide one).

    Raises:
        ConfigError: ``batch_size``, ``repeats`` or ``warmup`` out of range.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"latency_ms {name}: expected an integer >= {low}, got {value!r}")
    cache = cache if cache is not None else DEFAULT_CACHE
    device = model_device(model)
    one = example_input[:1].to(device)
    bits = resolve_bits(model, quant_bits)
    key, sig = signature_key("latency_ms", model, one, batch=batch_size, bits=bits, channels_last=channels_last,
                             repeats=repeats)
    hit = cache.get(key)
    if hit is not None:
        return float(hit)
    x = one.expand(batch_size, *one.shape[1:]).contiguous()  # (B, C, H, W)
    form = deployable(model, quant_bits=bits, example_input=x, channels_last=channels_last,
                      calib_loader=calib_loader, cache=cache)
    ms = _measure.median_ms(form, x, repeats=repeats, warmup=warmup)
    cache.put(key, ms, sig)
    return ms
