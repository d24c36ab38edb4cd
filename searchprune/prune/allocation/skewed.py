"""``skewed``: per-layer ratios from three numbers a sampler can search: sparsity, depth skew, size skew.

Independent per-layer ratios (``per_layer``: one search parameter per layer) dilute a sampler in a
deep net. ``skewed`` spans the usual shapes of a per-layer schedule with two options on top of the
global ``sparsity``::

    r_i = min(max_ratio, sigmoid(c + 3 * depth_skew * d_i + 3 * size_skew * z_i))

``d_i`` is the layer's depth in [-1, 1] (first to last prunable layer), ``z_i`` its log size
centered and scaled into [-1, 1] (size: weights, or output channels for channel granularity).
``depth_skew > 0`` prunes late layers more, ``size_skew > 0`` prunes large layers more; both 0 is
``uniform``. ``c`` is solved (bisection) so that the size-weighted mean ratio equals the target,
and the per-layer removal counts are rounded by largest remainder so the total is the target's
count exactly (in weights for weight granularity, in channels for channel granularity; in kernels
of the layer's kernel size for kernel granularity, so within one kernel per layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from ..context import PruneContext
from ..masks import weight_param
from ..options import number
from ._base import register_allocation
from .per_layer import RatioAllocation

__all__ = ["SkewedAllocation", "skewed_ratios", "SKEWED_DEFAULTS"]

SKEWED_DEFAULTS: dict[str, Any] = {"depth_skew": 0.0, "size_skew": 0.0, "max_ratio": 0.98}
_GAIN = 3.0  # a skew of 1 moves the logit of the ratio by 3 between the extreme layers


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def skewed_ratios(units: Mapping[str, int], unit_size: Mapping[str, int], sparsity: float, *,
                  depth_skew: float = 0.0, size_skew: float = 0.0, max_ratio: float = 0.98) -> dict[str, float]:
    """Per-layer ratios (fractions of each layer's units removed) for the skewed schedule.

    Args:
        units: pruning units per layer, in depth order (weights, kernels or channels).
        unit_size: what one unit counts toward the target (1 for weights and channels, the kernel size
            for kernels).
        sparsity: the target: removed size / total size, in [0, max_ratio].
        depth_skew, size_skew: in [-1, 1] (see the module docstring).
        max_ratio: no layer loses more than this fraction.

    Returns:
        ``{layer: k / units}`` with integer removal counts ``k`` whose total size is the target's
        (``round(sparsity * total)``, to within one unit per layer for kernels).

    Raises:
        ConfigError: the target exceeds ``max_ratio``.
    """
    names = list(units)
    if not names:
        return {}
    if not 0 <= sparsity <= max_ratio:
        raise ConfigError(f"prune.sparsity: a target of {sparsity} cannot be met with every layer capped at "
                          f"max_ratio={max_ratio}; expected a sparsity in [0, {max_ratio}]")
    size = {n: units[n] * unit_size[n] for n in names}
    total = sum(size.values())
    n = len(names)
    depth = {name: (2 * i / (n - 1) - 1) if n > 1 else 0.0 for i, name in enumerate(names)}
    logs = {name: math.log(max(size[name], 1)) for name in names}
    mid = sum(logs.values()) / n
    spread = max(abs(v - mid) for v in logs.values()) or 1.0
    z = {name: (logs[name] - mid) / spread for name in names}
    offset = {name: _GAIN * (depth_skew * depth[name] + size_skew * z[name]) for name in names}

    def ratios(c: float) -> dict[str, float]:
        return {name: min(max_ratio, _sigmoid(c + offset[name])) for name in names}

    def mean(c: float) -> float:
        r = ratios(c)
        return sum(r[name] * size[name] for name in names) / total

    target = round(sparsity * total)
    if target == 0:
        return dict.fromkeys(names, 0.0)
    lo, hi = -60.0, 60.0
    for _ in range(200):  # mean(c) increases with c; mean(hi) = max_ratio >= sparsity
        mid_c = 0.5 * (lo + hi)
        if mean(mid_c) < sparsity:
            lo = mid_c
        else:
            hi = mid_c
    r = ratios(hi)
    # integer removals per layer, largest remainder so the total size is the target's
    cap = {name: math.floor(max_ratio * units[name]) for name in names}
    exact = {name: min(r[name] * units[name], cap[name]) for name in names}
    k = {name: math.floor(exact[name]) for name in names}
    left = target - sum(k[name] * unit_size[name] for name in names)
    for name in sorted(names, key=lambda m: (exact[m] - k[m], -names.index(m)), reverse=True):
        if left < unit_size[name] / 2:
            break
        if k[name] < cap[name]:
            k[name] += 1
            left -= unit_size[name]
    return {name: k[name] / units[name] if units[name] else 0.0 for name in names}


def _units(module: Any, granularity: str) -> tuple[int, int]:
    """(units, size of one unit) of a layer for the granularity."""
    w = weight_param(module)
    if granularity == "channel":
        return int(w.shape[0]), 1
    if granularity == "kernel":
        per = int(w[0, 0].numel()) if w.dim() > 2 else 1
        return int(w.numel()) // per, per
    return int(w.numel()), 1


@register_allocation("skewed")
class SkewedAllocation(RatioAllocation):
    """Per-layer ratios from ``sparsity``, ``depth_skew`` and ``size_skew`` (:func:`skewed_ratios`)."""

    ratio_source = "skewed_ratios"
    default_options = SKEWED_DEFAULTS
    option_checks = {"depth_skew": number(low=-1, high=1), "size_skew": number(low=-1, high=1),
                     "max_ratio": number(low=0, high=1, low_open=True, high_open=True)}
    ratio_cap = ("max_ratio", float(SKEWED_DEFAULTS["max_ratio"]))

    @classmethod
    def layer_ratios(cls, ctx: PruneContext) -> dict[str, float]:
        if ctx.sparsity is None:
            raise ConfigError("the skewed allocation needs prune.sparsity (or a compression the base resolves)")
        opts = {k: float(ctx.cfg.options.get(k, v)) for k, v in SKEWED_DEFAULTS.items()}
        sizes = {name: _units(m, ctx.cfg.granularity) for name, m in ctx.layers.items()}
        return skewed_ratios({n: u for n, (u, _) in sizes.items()}, {n: s for n, (_, s) in sizes.items()},
                             float(ctx.sparsity), **opts)
