"""Every cost a trial reports, one per question a user asks (issue 9), measured in one call.

* ``macs``: effective multiply-adds after pruning (nonzero weights *before* fake quantization x
  output positions; the papers' convention). Quantization never changes it.
* ``dense_macs``: what a dense kernel executes: only physically removed channels and layers count.
* ``bitops``: per layer ``macs x weight bits x activation bits`` (32 for float), with those MACs.
* ``size_bytes``: the smallest honest storage of the deployed weights (:func:`~.size.size_bytes`,
  format "auto": dense at its bit width, or nonzero values plus the indices of a sparse format).
* ``latency_ms``: median time per batch of the deployable form on the model's device
  (:func:`~.latency.latency_ms`), cached by the layers' shape signature and bit widths.

Example:
    >>> costs = measure_costs(model, (1, 28, 28), latency=LatencySpec(batch_size=128), cache=cache)
    >>> costs.value("dense_macs"), costs.as_dict()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import COST_KINDS
from ..errors import ConfigError
from ..quantize import count_bitops, pruned_macs
from ._measure import LatencyCache, model_device
from .latency import latency_ms
from .size import dense_macs, size_bytes

__all__ = ["COST_KINDS", "Costs", "LatencySpec", "measure_costs"]


@dataclass(frozen=True)
class LatencySpec:
    """How ``latency_ms`` is timed: images per timed forward and timed runs (median)."""

    batch_size: int = 128
    repeats: int = 10
    warmup: int = 2


@dataclass(frozen=True)
class Costs:
    """What one model costs per image (``latency_ms``: per batch of ``latency_batch_size``).

    ``latency_ms`` is None when it was not measured; ``latency_error`` then says why, when the
    measurement was attempted and failed (e.g. a model torch.ao cannot export to int8).
    """

    macs: int
    dense_macs: int
    bitops: int
    size_bytes: int
    latency_ms: float | None = None
    latency_batch_size: int | None = None
    latency_error: str | None = None

    def value(self, kind: str) -> float:
        """The cost ``kind`` (one of :data:`COST_KINDS`) as a float.

        Raises:
            ConfigError: an unknown kind, or ``latency_ms`` that was not measured.
        """
        if kind not in COST_KINDS:
            raise ConfigError(f"cost {kind!r}: expected one of {', '.join(COST_KINDS)}")
        v = getattr(self, kind)
        if v is None:
            raise ConfigError(f"cost {kind!r} was not measured ({self.latency_error or 'latency off'})")
        return float(v)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe ``{kind: value}`` for every cost (and the latency batch / error when set)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in COST_KINDS}
        if self.latency_batch_size is not None:
            out["latency_batch_size"] = self.latency_batch_size
        if self.latency_error is not None:
            out["latency_error"] = self.latency_error
        return out


def measure_costs(model: nn.Module, input_shape: tuple[int, ...], *, latency: LatencySpec | None = None,
                  cache: LatencyCache | None = None, calib_loader: Iterable[Any] | None = None,
                  latency_required: bool = False) -> Costs:
    """Measures every cost of :data:`COST_KINDS` on ``model`` (which is not changed).

    Args:
        model: the trial's model: masked, channel-pruned and/or fake-quantized.
        input_shape: one image's shape, e.g. ``(1, 28, 28)``.
        latency: how to time ``latency_ms``; None skips it.
        cache: the latency cache (a study keeps one per output directory, so each distinct shape
            is timed once).
        calib_loader: int8 calibration batches for 8-bit models (the training data).
        latency_required: re-raise a failed latency measurement instead of recording its error
            (when ``latency_ms`` is the study's objective).
    """
    ms: float | None = None
    error = None
    if latency is not None:
        x = torch.rand(1, *input_shape, device=model_device(model))  # only the shapes matter to the time
        try:
            ms = latency_ms(model, x, batch_size=latency.batch_size, repeats=latency.repeats,
                            warmup=latency.warmup, calib_loader=calib_loader, cache=cache)
        except (ConfigError, RuntimeError) as e:  # e.g. torch.ao cannot trace a user's model
            if latency_required:
                raise
            error = f"{type(e).__name__}: {e}"
    return Costs(macs=pruned_macs(model, input_shape), dense_macs=dense_macs(model, input_shape),
                 bitops=count_bitops(model, input_shape), size_bytes=size_bytes(model), latency_ms=ms,
                 latency_batch_size=latency.batch_size if latency is not None else None, latency_error=error)
