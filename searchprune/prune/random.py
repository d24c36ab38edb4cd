"""Random pruning (ShrinkBench's RandomPruning baseline), with an exact count.

ShrinkBench draws a Bernoulli(keep) mask per tensor, so only the *expected* kept fraction is the
target. Here every unit gets an i.i.d. U(0, 1) score and the allocation keeps the exact number,
so random pruning is comparable with the other criteria at the same sparsity. Unit scores
(kernel/channel) are drawn per unit, not summed, so every unit is equally likely to go.
"""

from __future__ import annotations

import torch

from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method
from .options import integer
from .units import reduce_to_units

__all__ = ["RandomPruning"]


@register_method("random")
class RandomPruning(PruningMethod):
    """Uniformly random scores.

    Options:
        seed: integer seed of the method's own generator; None (default) draws from torch's global
            generator, so the trial seed (``seed_everything``) decides the mask.
    """

    default_options = {"seed": None}
    option_checks = {"seed": integer(allow_none=True)}

    def _generator(self) -> torch.Generator:
        seed = self.options["seed"]
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        return torch.Generator().manual_seed(seed)

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        return self.unit_scores(ctx, "weight")

    def unit_scores(self, ctx: PruneContext, granularity: str) -> dict[str, torch.Tensor]:
        gen = self._generator()
        out = {}
        for name, m in ctx.layers.items():
            shape = reduce_to_units(torch.empty(effective_weight(m).shape, device="meta"), granularity).shape
            out[name] = torch.rand(shape, generator=gen)
        return out
