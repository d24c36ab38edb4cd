"""The fake quantizers: round to a uniform integer grid in the forward pass, keep floats.

* :class:`WeightFakeQuant` is a ``torch.nn.utils.parametrize`` parametrization on ``weight``:
  symmetric, per output channel (or per tensor), scale from ``max |W|`` of the weight it receives.
  Registered after a pruning mask, it receives the *masked* weight, so zeros stay exactly zero.
* :class:`ActFakeQuant` is a child module of a conv / linear layer (``layer.act_quant``) that a
  forward pre-hook runs on the layer's input: asymmetric per tensor, with a range ``[lo, hi]``
  calibrated on data and stored as buffers (so it travels with the ``state_dict``).

Both have two backward modes, switched by their ``ste`` flag:

* ``ste=True`` (default, training and attacks): a straight-through estimator. ``round`` is treated
  as the identity in backward. Weights: the gradient reaches ``weight`` unchanged (the symmetric
  max-abs range never clips a weight). Activations: the *clipped* STE of Jacob et al. 2018 and
  ``torch.fake_quantize_per_tensor_affine``: identity for inputs inside the calibrated range,
  zero for inputs the clamp cuts off (their output really does not depend on them).
  Attacking through it is BPDA (Athalye et al. 2018).
* ``ste=False``: hard rounding, the true derivative of the quantized function (zero almost
  everywhere). This is what a naive attack on a deployed quantized model sees: its input
  gradient is zero, so a gradient attack stalls (gradient masking).

The forward values are bit-identical in both modes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["WeightFakeQuant", "ActFakeQuant", "weight_qrange", "act_qrange"]


def weight_qrange(bits: int) -> int:
    """Largest integer of the symmetric ``bits``-bit weight grid ``[-qmax, qmax]``.

    The grid is restricted (``-qmax`` instead of ``-qmax - 1``) so that it is symmetric and zero is
    exactly representable: 2 bits give the ternary grid {-1, 0, 1} x scale.
    """
    return 2 ** (bits - 1) - 1


def act_qrange(bits: int) -> int:
    """Largest integer of the asymmetric ``bits``-bit activation grid ``[0, qmax]``."""
    return 2**bits - 1


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` forward, identity backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _round(x: torch.Tensor, ste: bool) -> torch.Tensor:
    # torch.round's own derivative is zero everywhere: that is the "hard" mode
    return _RoundSTE.apply(x) if ste else torch.round(x)


class WeightFakeQuant(nn.Module):
    """Symmetric fake quantization of a weight; use it as a parametrization.

    ``q(W) = clamp(round(W / s), -qmax, qmax) * s`` with ``qmax = 2**(bits-1) - 1`` and
    ``s = max|W| / qmax`` per output channel (dim 0 of conv and linear weights) or over the whole
    tensor. ``s`` is computed from the weight it receives on every call (no state), detached: the
    STE passes the gradient straight to the weight. An all-zero channel keeps scale 1 (it is
    quantized to zeros either way).

    Args:
        bits: 2..16.
        per_channel: one scale per output channel (default) or one for the whole tensor.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> parametrize.register_parametrization(conv, "weight", WeightFakeQuant(4))
        >>> conv.weight  # the quantized weight: at most 15 distinct values per output channel
    """

    def __init__(self, bits: int, *, per_channel: bool = True) -> None:
        super().__init__()
        if not 2 <= int(bits) <= 16:
            raise ValueError(f"expected 2..16 weight bits, got {bits}")
        self.bits = int(bits)
        self.per_channel = bool(per_channel)
        self.ste = True

    @property
    def qmax(self) -> int:
        return weight_qrange(self.bits)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The quantization step: shape ``(C_out, 1, ..., 1)`` per channel, ``()`` per tensor."""
        w = w.detach()
        if self.per_channel and w.dim() > 1:
            rows = w.reshape(w.shape[0], -1)
            # max(max, -min): no |W| temporary (and aminmax along a dim is 20x slower on CPU)
            amax = torch.maximum(rows.amax(1), rows.amin(1).neg_()).reshape(-1, *([1] * (w.dim() - 1)))
        else:
            amax = torch.maximum(w.amax(), w.amin().neg_())
        return (amax / self.qmax).masked_fill_(amax == 0, 1.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.scale(w)
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.clamp(_round(w / s, self.ste), -self.qmax, self.qmax) * s
        q = torch.div(w, s)  # inference: the same arithmetic in place
        return q.round_().clamp_(-self.qmax, self.qmax).mul_(s)

    def extra_repr(self) -> str:
        gran = "per_channel" if self.per_channel else "per_tensor"
        return f"bits={self.bits}, {gran}, ste={self.ste}"


class ActFakeQuant(nn.Module):
    """Asymmetric per-tensor fake quantization of a layer's input with a calibrated range.

    ``q(x) = (clamp(round(x / s) + z, 0, qmax) - z) * s`` with ``qmax = 2**bits - 1``,
    ``s = (hi - lo) / qmax`` and zero point ``z = round(-lo / s)``. The range always contains 0
    (``lo <= 0 <= hi``) so that zero padding and ReLU zeros are exact; these are the formulas of
    ``torch.ao.quantization.MinMaxObserver`` (quint8 for 8 bits), so an int8 export calibrated on
    the same data gets the same grid.

    Buffers (saved in the ``state_dict``): ``lo``, ``hi`` (scalars) and ``calibrated`` (bool).
    Running an uncalibrated quantizer raises: a silently unquantized layer would make every
    measurement of the model wrong. Calibrate with :func:`searchprune.quantize.calibrate_` or load
    a calibrated ``state_dict``.

    Args:
        bits: 2..16.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    calibrated: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= int(bits) <= 16:
            raise ValueError(f"expected 2..16 activation bits, got {bits}")
        self.bits = int(bits)
        self.ste = True
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("calibrated", torch.tensor(False))
        # (scale, zero point) as Python floats, derived from the buffers whenever they are set or
        # loaded; None = uncalibrated. Reading the buffers every forward would sync a GPU.
        self._qp: tuple[float, float] | None = None
        # calibration state (not saved): None, or the statistics gathered so far
        self._observer: _RangeObserver | None = None
        self._bypass = False

    @property
    def qmax(self) -> int:
        return act_qrange(self.bits)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` as float32 scalars (on the buffers' device)."""
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)  # 0 always on the grid
        scale = torch.clamp((hi - lo) / self.qmax, min=torch.finfo(torch.float32).eps)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, self.qmax)
        return scale, zero_point

    def _refresh(self) -> None:
        if bool(self.calibrated):
            scale, zero_point = self.qparams()
            self._qp = (float(scale), float(zero_point))  # float32 values, held exactly
        else:
            self._qp = None

    def set_range_(self, lo: torch.Tensor | float, hi: torch.Tensor | float) -> None:
        """Sets the range ``[lo, hi]`` (widened to contain 0) and marks the quantizer calibrated."""
        self.lo.fill_(min(float(lo), 0.0))
        self.hi.fill_(max(float(hi), 0.0))
        self.calibrated.fill_(True)
        self._refresh()

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observer is not None:  # calibrating: watch the float activations, change nothing
            self._observer.observe(x)
            return x
        if self._bypass:
            return x
        if self._qp is None:
            raise RuntimeError(
                "activation quantizer is not calibrated: pass calib_loader to quantize_, call "
                "searchprune.quantize.calibrate_, or load a state_dict of a calibrated model"
            )
        s, z = self._qp
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # round in >= fp32
        if torch.is_grad_enabled() and xf.requires_grad:
            y = (torch.clamp(_round(xf / s, self.ste) + z, 0, self.qmax) - z) * s
        else:  # inference: the same arithmetic in place, about 3x faster on CPU
            y = torch.div(xf, s)
            y.round_().add_(z).clamp_(0, self.qmax).sub_(z).mul_(s)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        rng = f"[{float(self.lo):.4g}, {float(self.hi):.4g}]" if self._qp is not None else "uncalibrated"
        return f"bits={self.bits}, range={rng}, ste={self.ste}"


class _RangeObserver:
    """Accumulates an activation range over calibration batches.

    ``minmax``: the min and max over all batches (``MinMaxObserver``). ``percentile``: per batch
    the ``p``-th and ``(100 - p)``-th percentiles of the values (both tails: the quantizer is
    asymmetric), averaged over batches. A per-batch percentile never exceeds the batch's extreme,
    so the percentile range is always inside the min-max range. ``kthvalue`` has no size limit
    (``torch.quantile`` stops at 16M elements) and is deterministic.
    """

    def __init__(self, method: str, percentile: float) -> None:
        if method not in ("minmax", "percentile"):
            raise ValueError(f"expected calibration 'minmax' or 'percentile', got {method!r}")
        self.method = method
        self.percentile = float(percentile)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.batches = 0

    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        if flat.numel() == 0:
            return
        if self.method == "minmax":
            lo, hi = flat.min(), flat.max()
            self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        else:
            n = flat.numel()
            k = min(n, max(1, int(round(self.percentile / 100.0 * n))))
            hi = flat.kthvalue(k).values
            lo = flat.kthvalue(n - k + 1).values
            self.lo = lo if self.lo is None else self.lo + lo
            self.hi = hi if self.hi is None else self.hi + hi
        self.batches += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.lo is None or self.hi is None:
            return None
        if self.method == "minmax":
            return self.lo, self.hi
        return self.lo / self.batches, self.hi / self.batches
