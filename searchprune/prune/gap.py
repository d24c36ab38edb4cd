"""Greedy Adversarial Pruning (GAP; O'Brien Weiss, Alves, Kundu, AICAS 2022).

GAP removes the weights with the *highest* adversarial gradient, so the pruned model loses what
made it fall for a known set of adversarial examples (it then resists transfer attacks from its
uncompressed parent). As in the authors' ShrinkBench fork (``jonahobw/shrinkbench``):

1. Put the model in ``train()`` mode (BatchNorm on batch statistics; its running statistics are
   updated as a side effect, so later batches' attacks see them, unless ``update_bn_stats=False``).
2. For each batch (x, y) of the loader (all, or the first ``n_batches``): x_adv = PGD(model, x)
   labelled by the model's own predictions (cleverhans with ``y=None``), with random start and no
   early stopping; loss = mean CE(model(x_adv), y); the gradients are **summed** over batches:
   ``G = sum_batches grad_w L(w, x_adv, y)``.
3. Variants (``variant`` option):

   * ``"signed"`` (GreedyPGDGlobalMagGrad, the paper's method with ``allocation="global"``):
     importance = G, signed; the largest (most positive) values are pruned.
   * ``"abs"`` (GreedyPGDLayerMagGrad, with ``allocation="uniform"``): importance = |G|; the
     largest magnitudes are pruned in every layer.
   * ``"param"`` (GreedyPGDGlobalMagGrad_param): importance = w * G, signed.

   The score handed to the allocation is ``-importance`` (higher = keep), i.e. the paper's
   ``s(theta) = -sum grad``.
4. Ties at zero (``map_zeros``): signed importances go through x<0 -> x, x=0 -> U(0, 0.5),
   x>0 -> x+1, which keeps the order of nonzero values and puts zero gradients in random order
   between the negative and positive ones. The reference maps only when its threshold lands on 0;
   mapping always is equivalent for an exact-count cut (zeros that do not straddle the cut are all
   kept or all pruned either way).

Differences from the reference, by design of this package: only weights are pruned (biases are
never masked here; the reference ranks biases too), the attack runs with the model in eval mode
(``searchprune.attacks`` contract; cleverhans attacks a train-mode model) and ``eps``/``alpha`` are on
the [0, 1] pixel scale (the reference's 8/255 is in normalized units). The pruned entries get exact
counts instead of ShrinkBench's tie-keeping quantile.
"""

from __future__ import annotations

from typing import Any

import torch

from ._gradients import adversarial_batch, frozen_bn_stats, module_mode, weight_grads
from .context import PruneContext
from .masks import effective_weight
from .method import PruningMethod, register_method
from .options import boolean, integer, number, one_of, positive_int

__all__ = ["GreedyAdversarialPruning", "map_zeros", "adversarial_gradients"]

VARIANTS = ("signed", "abs", "param")


def map_zeros(t: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """ShrinkBench-GAP's tie breaker: x<0 -> x, x=0 -> U(0, 0.5), x>0 -> x + 1."""
    noise = torch.rand(t.shape, generator=generator, dtype=torch.float32).to(t) * 0.5
    return torch.where(t > 0, t + 1, torch.where(t == 0, noise, t))


def adversarial_gradients(ctx: PruneContext, *, n_batches: int | None, update_bn_stats: bool = True,
                          random_start: bool = True, attack: dict[str, Any] | None = None,
                          ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``G = sum_batches grad_w mean CE(model(PGD(x)), y)`` for every layer of ``ctx.layers``.

    The model runs in train mode (BatchNorm batch statistics); PGD labels are the model's
    predictions. Returns ``(G per layer, diagnostics)``.
    """
    total: dict[str, torch.Tensor] = {}
    batches, loss_sum, images = 0, 0.0, 0
    with module_mode(ctx.model, train=True):
        for x, y in ctx.batches(n_batches):
            # with update_bn_stats=False every batch sees the caller's running statistics
            with frozen_bn_stats(ctx.model, enabled=not update_bn_stats):
                x_adv = adversarial_batch(ctx, x, None, method="gap", y_from_model=True,
                                          random_start=random_start, overrides=attack)
                logits = ctx.model(x_adv)
            grads = weight_grads(ctx, logits, y)
            with torch.no_grad():
                loss_sum += float(torch.nn.functional.cross_entropy(logits, y)) * len(y)
            for k, g in grads.items():
                total[k] = total[k] + g if k in total else g
            batches += 1
            images += len(y)
    if batches == 0:
        raise ValueError("prune: the loader yielded no batch")
    return total, {"batches": batches, "images": images, "adv_loss": loss_sum / max(1, images)}


@register_method("gap")
class GreedyAdversarialPruning(PruningMethod):
    """Prunes the weights with the highest accumulated adversarial gradient.

    Options:
        variant: "signed" (default; the paper's global GAP), "abs" (layerwise GAP, use with
            ``allocation="uniform"``) or "param" (``w * G``).
        n_batches: batches the gradient is summed over; None (default) = the whole loader.
        eps, alpha, steps: override the threat model's PGD budget, step and iterations (None = the
            study's threat model). The reference: eps 8/255, alpha 2/255, 10 steps.
        random_start: PGD from a uniform point of the ball (cleverhans default: True).
        update_bn_stats: keep the BatchNorm running statistics the train-mode forwards produced (the
            reference's side effect, True) or restore them (False).
        seed: seed of ``map_zeros``'s tie noise; None draws from torch's global generator.
    """

    needs_data = True
    needs_threat = True
    default_options = {"variant": "signed", "n_batches": None, "eps": None, "alpha": None, "steps": None,
                       "random_start": True, "update_bn_stats": True, "seed": None}
    option_checks = {"variant": one_of(*VARIANTS), "n_batches": positive_int(allow_none=True),
                     "eps": number(low=0, low_open=True, allow_none=True),
                     "alpha": number(low=0, low_open=True, allow_none=True),
                     "steps": positive_int(allow_none=True), "random_start": boolean(),
                     "update_bn_stats": boolean(), "seed": integer(allow_none=True)}

    def importance(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """The reference's importance (prune the largest), before ``map_zeros``."""
        o = self.options
        G, diag = adversarial_gradients(
            ctx, n_batches=o["n_batches"], update_bn_stats=o["update_bn_stats"],
            random_start=o["random_start"],
            attack={"eps": o["eps"], "alpha": o["alpha"], "steps": o["steps"]},
        )
        n_zero = sum(int((g == 0).sum()) for g in G.values())
        n_all = sum(g.numel() for g in G.values())
        self._extra = {**diag, "variant": o["variant"], "zero_gradient_fraction": n_zero / max(1, n_all)}
        if o["variant"] == "abs":
            return {k: g.abs() for k, g in G.items()}
        if o["variant"] == "param":
            return {k: effective_weight(ctx.layers[k]).detach() * g for k, g in G.items()}
        return G

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        imp = self.importance(ctx)
        if self.options["variant"] == "abs":  # the layerwise reference has no map_zeros
            return {k: -v for k, v in imp.items()}
        seed = self.options["seed"]
        gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed))
        return {k: -map_zeros(v.float().cpu(), generator=gen) for k, v in imp.items()}
