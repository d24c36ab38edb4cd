"""``uniform``: the same ratio in every layer, exact per layer (``round(ratio * units)``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ._base import Allocation, keep_per_layer, register_allocation

__all__ = ["UniformAllocation"]


@register_allocation("uniform")
class UniformAllocation(Allocation):
    """Every layer loses the target fraction of its units."""

    @classmethod
    def select(cls, flat: Mapping[str, torch.Tensor], sizes: Mapping[str, int], *, sparsity: float | None,
               ratios: Mapping[str, float] | None, min_keep: int) -> dict[str, torch.Tensor]:
        if sparsity is None:
            raise ValueError("uniform allocation needs a sparsity")
        return keep_per_layer(flat, {n: float(sparsity) for n in flat}, min_keep)
