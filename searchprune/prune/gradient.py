"""Gradient-magnitude pruning: ShrinkBench's GlobalMagGrad / LayerMagGrad (importance ``|w * g|``).

``g`` is the gradient of the batch-mean cross-entropy w.r.t. the weights, computed as ShrinkBench's
``get_param_gradients`` does: the model in ``train()`` mode (BatchNorm on batch statistics) on the
first batch of the loader. With ``n_batches > 1`` the per-batch gradients are averaged. Kernel and
channel scores average ``|w * g|`` over the unit.
"""

from __future__ import annotations

import torch

from ._gradients import adversarial_batch, frozen_bn_stats, module_mode, weight_grads
from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method
from .options import boolean, positive_int

__all__ = ["MagGrad"]


@register_method("gradient")
class MagGrad(PruningMethod):
    """Keeps the weights with the largest ``|w * g|``.

    Options:
        n_batches: batches the gradient is averaged over (ShrinkBench: 1).
        adversarial: take the gradient on PGD examples of the study's threat model (true labels)
            instead of clean inputs.
        update_bn_stats: let the train-mode forwards update BatchNorm running statistics, as
            ShrinkBench does (True); False restores them afterwards.
    """

    needs_data = True
    default_options = {"n_batches": 1, "adversarial": False, "update_bn_stats": True}
    option_checks = {"n_batches": positive_int(), "adversarial": boolean(), "update_bn_stats": boolean()}

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        n = int(self.options["n_batches"])
        total: dict[str, torch.Tensor] = {}
        used = 0
        with module_mode(ctx.model, train=True):
            for x, y in ctx.batches(n):
                with frozen_bn_stats(ctx.model, enabled=not self.options["update_bn_stats"]):
                    if self.options["adversarial"]:
                        x = adversarial_batch(ctx, x, y, method=self.name)
                    logits = ctx.model(x)
                grads = weight_grads(ctx, logits, y)
                for k, g in grads.items():
                    total[k] = total[k] + g if k in total else g
                used += 1
        if used == 0:
            raise ValueError("prune: the loader yielded no batch")
        self._extra = {"batches": used}
        return {k: (effective_weight(ctx.layers[k]).detach() * (g / used)).abs() for k, g in total.items()}
