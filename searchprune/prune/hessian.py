"""Diagonal-Fisher (OBD-style) importance, as Torch-Pruning's ``GroupHessianImportance``.

``I = w^2 * E[g^2]``, where the expectation is over **per-sample** gradients of the cross-entropy:
the empirical Fisher's diagonal approximates the Hessian's. Per-sample gradients come from one
forward of a batch in ``eval()`` mode (BatchNorm on running statistics, so samples do not interact)
and one backward per sample. Kernel and channel scores are the sum of ``I`` over the unit
(Torch-Pruning: ``I_c = sum_i w_{c,i}^2 E[g_{c,i}^2]``), divided by the unit's size so kernels of
different layers compare on one scale (the ranking within a layer is the sum's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._gradients import adversarial_batch, module_mode
from .context import PruneContext
from .masks import effective_weight, weight_param
from .method import PruningMethod, register_method
from .options import boolean, positive_int

__all__ = ["Hessian"]


@register_method("hessian")
class Hessian(PruningMethod):
    """``w^2 * mean_i g_i^2`` over per-sample gradients ``g_i``.

    Options:
        n_samples: samples (taken from the loader's first batches) the expectation is averaged over.
        adversarial: use PGD examples of the study's threat model (true labels).
    """

    needs_data = True
    default_options = {"n_samples": 64, "adversarial": False}
    option_checks = {"n_samples": positive_int(), "adversarial": boolean()}

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        n = int(self.options["n_samples"])
        params = [weight_param(m) for m in ctx.layers.values()]
        sq = [torch.zeros_like(p) for p in params]
        seen = 0
        with module_mode(ctx.model, train=False):
            for x, y in ctx.batches():
                x, y = x[: n - seen], y[: n - seen]
                if self.options["adversarial"]:
                    x = adversarial_batch(ctx, x, y, method=self.name)
                losses = F.cross_entropy(ctx.model(x), y, reduction="none")  # (B,)
                for i in range(len(losses)):
                    grads = torch.autograd.grad(losses[i], params, retain_graph=i < len(losses) - 1,
                                                allow_unused=True)
                    for acc, g in zip(sq, grads):
                        if g is not None:
                            acc.add_(g.detach() ** 2)
                seen += len(losses)
                if seen >= n:
                    break
        if seen == 0:
            raise ValueError("prune: the loader yielded no sample")
        self._extra = {"samples": seen}
        return {name: effective_weight(m).detach() ** 2 * (s / seen)
                for (name, m), s in zip(ctx.layers.items(), sq)}
