"""First-order Taylor importance (Molchanov et al., CVPR 2019).

The loss change from removing a set S of weights is approximated to first order by
``sum_{s in S} g_s w_s``; its square is the importance, accumulated over minibatches:

* per weight: ``I_m = mean_b (g_{b,m} w_m)^2``;
* per kernel / filter S: ``I_S = mean_b (sum_{s in S} g_{b,s} w_s)^2``: the sum is taken *inside* the
  square, per batch, so weights of one filter whose contributions cancel are judged together.

``g_b`` is the gradient of batch b's mean cross-entropy, with the model in ``train()`` mode; the
BatchNorm running statistics are restored afterwards. With one batch the per-weight ranking equals
``|w * g|`` (``gradient``); the criteria differ with several batches and for kernels/channels.
"""

from __future__ import annotations

import torch

from ._gradients import adversarial_batch, frozen_bn_stats, module_mode, weight_grads
from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method
from .options import boolean, positive_int
from .units import reduce_to_units

__all__ = ["Taylor"]


@register_method("taylor")
class Taylor(PruningMethod):
    """Squared first-order Taylor terms, averaged over batches.

    Options:
        n_batches: minibatches the importance is accumulated over.
        adversarial: take gradients on PGD examples of the study's threat model (true labels): the
            robust variant.
    """

    needs_data = True
    default_options = {"n_batches": 4, "adversarial": False}
    option_checks = {"n_batches": positive_int(), "adversarial": boolean()}

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        return self.unit_scores(ctx, "weight")

    def unit_scores(self, ctx: PruneContext, granularity: str) -> dict[str, torch.Tensor]:
        n = int(self.options["n_batches"])
        acc: dict[str, torch.Tensor] = {}
        used = 0
        with frozen_bn_stats(ctx.model), module_mode(ctx.model, train=True):
            for x, y in ctx.batches(n):
                if self.options["adversarial"]:
                    x = adversarial_batch(ctx, x, y, method=self.name)
                grads = weight_grads(ctx, ctx.model(x), y)
                for k, g in grads.items():
                    wg = effective_weight(ctx.layers[k]).detach() * g
                    term = reduce_to_units(wg, granularity, "sum") ** 2
                    acc[k] = acc[k] + term if k in acc else term
                used += 1
        if used == 0:
            raise ValueError("prune: the loader yielded no batch")
        self._extra = {"batches": used}
        return {k: v / used for k, v in acc.items()}
