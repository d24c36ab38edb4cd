"""Magnitude pruning: ShrinkBench's GlobalMagWeight / LayerMagWeight (importance ``|w|``).

Kernel and channel scores are the mean ``|w|`` of the kernel / filter (the L1 norm divided by the
unit's size: the same ranking as the L1 norm within a layer).
"""

from __future__ import annotations

import torch

from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method

__all__ = ["Magnitude"]


@register_method("magnitude")
class Magnitude(PruningMethod):
    """Keeps the largest-magnitude weights: importance ``|w|`` of the effective weight.

    ``allocation="global"`` is ShrinkBench's GlobalMagWeight, ``"uniform"`` its LayerMagWeight.
    No options.
    """

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        return {name: effective_weight(m).detach().abs() for name, m in ctx.layers.items()}
