"""``per_layer``: ``PruneConfig.layer_sparsity`` gives each named layer its ratio; layers not named
stay dense."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ..context import PruneContext
from ._base import Allocation, keep_per_layer, register_allocation

__all__ = ["PerLayerAllocation", "RatioAllocation"]


class RatioAllocation(Allocation):
    """Shared by the allocations that give every layer its own ratio (per_layer, mrs)."""

    has_ratios = True
    ratio_source: ClassVar[str] = "prune.layer_sparsity"  # where the ratios come from, for messages

    @classmethod
    def select(cls, flat: Mapping[str, torch.Tensor], sizes: Mapping[str, int], *, sparsity: float | None,
               ratios: Mapping[str, float] | None, min_keep: int) -> dict[str, torch.Tensor]:
        if ratios is None:
            raise ValueError(f"{cls.name} allocation needs per-layer ratios")
        return keep_per_layer(flat, {n: float(ratios.get(n, 0.0)) for n in flat}, min_keep)


@register_allocation("per_layer")
class PerLayerAllocation(RatioAllocation):
    """The ratios of ``PruneConfig.layer_sparsity``."""

    @classmethod
    def layer_ratios(cls, ctx: PruneContext) -> dict[str, float]:
        return dict(ctx.cfg.layer_sparsity or {})
