"""``per_layer``: ``PruneConfig.layer_sparsity`` gives each named layer its ratio; layers not named
stay dense."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ...config import PruneConfig
from ...errors import ConfigError
from ..context import PruneContext
from ._base import Allocation, keep_per_layer, register_allocation

__all__ = ["PerLayerAllocation", "RatioAllocation"]


class RatioAllocation(Allocation):
    """Shared by the allocations that give every layer its own ratio (per_layer, mrs, skewed).

    Class attributes:
        ratio_cap: ``(option, default)`` of the option capping every layer's ratio, or None. With a
            cap, :meth:`check` rejects a ``prune.sparsity`` above it (no allocation could meet it).
    """

    has_ratios = True
    ratio_source: ClassVar[str] = "prune.layer_sparsity"  # where the ratios come from, for messages
    ratio_cap: ClassVar[tuple[str, float] | None] = None

    @classmethod
    def check(cls, cfg: PruneConfig) -> None:
        super().check(cfg)
        if cls.ratio_cap is None:
            return
        option, default = cls.ratio_cap
        cap = float(cfg.options.get(option, default))
        if cfg.sparsity is not None and cfg.sparsity > cap:
            raise ConfigError(f"prune.sparsity: a target of {cfg.sparsity} cannot be met with every layer capped "
                              f"at {option}={cap}; expected a sparsity in [0, {cap}]")

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
