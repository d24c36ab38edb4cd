"""LAMP: layer-adaptive magnitude-based pruning (Lee et al., ICLR 2021).

Per layer, sort the squared weights ascending, ``W[1]^2 <= W[2]^2 <= ...``; the score of the u-th is
``W[u]^2 / sum_{v >= u} W[v]^2`` (the denominator includes u). One global threshold over all layers
then gives the per-layer amounts. Every layer's largest weight scores exactly 1, so every layer keeps
at least one weight (also enforced by the allocation). For kernel/channel granularity the unit's
squared L2 norm takes the place of ``W^2`` (Torch-Pruning's ``LAMPImportance``). The reference prunes
the classifier too: set ``include_classifier=True`` to match it.
"""

from __future__ import annotations

import torch

from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method
from .units import reduce_to_units

__all__ = ["LAMP", "lamp_scores"]


def lamp_scores(sq: torch.Tensor) -> torch.Tensor:
    """LAMP scores of a tensor of squared magnitudes (any shape; ties ordered by flat index).

    Example:
        >>> lamp_scores(torch.tensor([1.0, 4.0, 2.0]))  # sorted 1, 2, 4 -> 1/7, 2/6, 4/4
        tensor([0.1429, 1.0000, 0.3333])
    """
    flat = sq.reshape(-1).double()
    order = torch.sort(flat, stable=True).indices
    s = flat[order]
    tail = torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0])  # sum_{v >= u} s[v]
    ratio = torch.where(tail > 0, s / tail.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(s))
    out = torch.empty_like(flat)
    out[order] = ratio
    return out.reshape(sq.shape).float()


@register_method("lamp")
class LAMP(PruningMethod):
    """LAMP scores of the effective weights; global allocation only (its point). No options."""

    allocations = ("global",)
    normalize_channels = False  # LAMP scores are already comparable across layers
    min_keep_per_layer = 1

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        return {name: lamp_scores(effective_weight(m).detach().float() ** 2)
                for name, m in ctx.layers.items()}

    def unit_scores(self, ctx: PruneContext, granularity: str) -> dict[str, torch.Tensor]:
        out = {}
        for name, m in ctx.layers.items():
            sq = reduce_to_units(effective_weight(m).detach().float() ** 2, granularity, "sum")
            out[name] = lamp_scores(sq)
        return out
