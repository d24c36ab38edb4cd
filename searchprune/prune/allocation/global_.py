"""``global``: one threshold over the unit scores of all prunable layers.

Exact: the number of weights removed is the closest achievable to ``round(sparsity * prunable
weights)`` (within one unit), ties broken deterministically by layer order then flat index
(ShrinkBench keeps ties and may overshoot; we do not). (The file name avoids the keyword.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ._base import Allocation, register_allocation

__all__ = ["GlobalAllocation"]


def _n_protected_order(s: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Bool mask of the ``min_keep`` highest-scoring units (ties: the later index wins)."""
    prot = torch.zeros_like(s, dtype=torch.bool)
    if min_keep > 0:
        order = torch.sort(s, stable=True).indices  # ascending, ties by index
        prot[order[-min_keep:]] = True
    return prot


@register_allocation("global")
class GlobalAllocation(Allocation):
    """One exact threshold over all layers' units, counted in unit sizes."""

    @classmethod
    def select(cls, flat: Mapping[str, torch.Tensor], sizes: Mapping[str, int], *, sparsity: float | None,
               ratios: Mapping[str, float] | None, min_keep: int) -> dict[str, torch.Tensor]:
        if sparsity is None:
            raise ValueError("global allocation needs a sparsity")
        names = list(flat)
        scores = torch.cat([flat[n] for n in names])
        size = torch.cat([torch.full((flat[n].numel(),), sizes[n], dtype=torch.float64) for n in names])
        prot = torch.cat([_n_protected_order(flat[n], min(min_keep, flat[n].numel())) for n in names])
        target = round(sparsity * float(size.sum()))
        pool = torch.nonzero(~prot).flatten()
        order = pool[torch.sort(scores[pool], stable=True).indices]  # ascending; ties by position
        cum = torch.cumsum(size[order], 0)
        n_dead = int(torch.isneginf(scores).sum())
        # remove p units: the prefix whose size is closest to the target (at least every dead one)
        lo = int(torch.searchsorted(cum, torch.tensor(float(target), dtype=torch.float64), right=True))
        p = lo
        if lo < len(cum):
            below = float(cum[lo - 1]) if lo > 0 else 0.0
            if abs(float(cum[lo]) - target) < abs(target - below):
                p = lo + 1
        p = max(p, n_dead)
        keep_all = torch.ones_like(scores, dtype=torch.bool)
        keep_all[order[:p]] = False
        keep: dict[str, torch.Tensor] = {}
        offset = 0
        for n in names:
            k = flat[n].numel()
            keep[n] = keep_all[offset:offset + k]
            offset += k
        return keep
