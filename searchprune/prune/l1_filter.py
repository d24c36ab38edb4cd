"""L1-norm filter pruning (Li et al., ICLR 2017; Adver-Fine's NNI ``L1NormPruner``).

Structured only: each conv filter is scored by the L1 norm of its weights, the lowest-norm
filters are removed physically together with their BatchNorm channels and the next layers' input
channels. As in the reference (``op_types: ['Conv2d']``), only convolutions are pruned: fully
connected layers keep their outputs. Use ``allocation="uniform"`` for the reference's "same ratio
in every conv layer".
"""

from __future__ import annotations

import torch
from torch import nn

from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method

__all__ = ["L1Filter"]


@register_method("l1_filter")
class L1Filter(PruningMethod):
    """Filters scored by ``sum |w|`` over the filter (``(C_in, kh, kw)``); convs only. No options."""

    granularities = ("channel",)
    reduction = "sum"  # the filter's L1 norm

    def select_layers(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        return {n: m for n, m in layers.items() if isinstance(m, nn.modules.conv._ConvNd)}

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        return {name: effective_weight(m).detach().abs() for name, m in ctx.layers.items()}
