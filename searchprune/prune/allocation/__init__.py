"""How a sparsity target is spread over layers, and how scores become keep/prune decisions.

Allocations (``PruneConfig.allocation``), one file each, registered with ``@register_allocation``:

* ``global`` (``global_.py``): one exact threshold over the unit scores of all prunable layers.
* ``uniform``: the same ratio in every layer, exact per layer (``round(ratio * units)``).
* ``per_layer``: ``PruneConfig.layer_sparsity`` gives each named layer its ratio; others stay dense.
* ``mrs``: per-layer ratios from module robustness sensitivity (``mrs.py``: the scores live there).
* ``learned``: the method decides (HYDRA, in-train pruning); no allocation happens here.

Units are weights, kernels or (for channel granularity) coupled channel groups; a unit's size is
the number of weights (or of prunable output channels) it stands for, so global ratios are always
counted in the config's units.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..context import PruneContext
from . import global_, learned, mrs, per_layer, uniform  # noqa: F401  (each registers its allocation)
from ._base import (
    ALLOCATION_REGISTRY,
    Allocation,
    check_finite,
    get_allocation,
    list_allocations,
    register_allocation,
    validated_ratios,
)
from .per_layer import RatioAllocation

__all__ = ["Allocation", "ALLOCATION_REGISTRY", "register_allocation", "get_allocation", "list_allocations",
           "allocate", "layer_ratios", "has_ratios"]


def has_ratios(allocation: str) -> bool:
    """True for allocations that give every layer its own ratio (per_layer, mrs)."""
    return get_allocation(allocation).has_ratios


def layer_ratios(ctx: PruneContext) -> dict[str, float]:
    """Per-layer sparsity for the ratio allocations (per_layer, mrs), for every layer in ``ctx.layers``.

    Raises:
        ConfigError: a named layer is not prunable (the message lists the valid names), or a ratio is
            out of [0, 1).
        ValueError: the allocation has no per-layer ratios.
    """
    cls = get_allocation(ctx.cfg.allocation)
    if not issubclass(cls, RatioAllocation):
        raise ValueError(f"layer_ratios: allocation {cls.name!r} has no per-layer ratios")
    return validated_ratios(ctx, cls.layer_ratios(ctx), cls.ratio_source)


def allocate(
    unit_scores: Mapping[str, torch.Tensor],
    *,
    allocation: str,
    sparsity: float | None,
    ratios: Mapping[str, float] | None = None,
    unit_sizes: Mapping[str, int] | None = None,
    min_keep: int = 0,
) -> dict[str, torch.Tensor]:
    """Chooses which units to keep.

    Args:
        unit_scores: ``{layer: scores of its units}`` (any shape; higher = keep). ``-inf`` marks units
            already pruned: they are always pruned and count toward the target.
        allocation: a score allocation: "global", "uniform", "per_layer" or "mrs" (the last two need
            ``ratios``).
        sparsity: fraction of all units' size to remove (global, uniform).
        ratios: ``{layer: fraction to remove}`` for per_layer / mrs (missing layers: 0).
        unit_sizes: weights (or channels) each unit of a layer stands for; default 1.
        min_keep: units every layer keeps whatever its ratio (1 for channel groups).

    Returns:
        ``{layer: bool tensor shaped like its scores, True = keep}``.

    Raises:
        ConfigError: the allocation is unknown or not a score allocation (``learned``).
    """
    names = list(unit_scores)
    sizes = {n: int((unit_sizes or {}).get(n, 1)) for n in names}
    flat = {n: unit_scores[n].detach().reshape(-1).float().cpu() for n in names}
    for n in names:
        check_finite(n, flat[n])
    keep = get_allocation(allocation).select(flat, sizes, sparsity=sparsity, ratios=ratios, min_keep=min_keep)
    return {n: keep[n].reshape(unit_scores[n].shape) for n in names}
