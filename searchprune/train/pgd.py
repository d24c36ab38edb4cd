"""The "pgd" recipe: Madry et al.'s PGD adversarial training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import fast_layout, pgd
from ._api import RecipeContext, register_recipe

__all__ = ["pgd_at"]

@register_recipe("pgd")
def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Madry et al.'s PGD adversarial training: cross-entropy on PGD examples of ``ctx.attack``.

    The examples are crafted in eval mode (BatchNorm uses running statistics, as in Adver-Fine and
    HYDRA) and are the last PGD iterate (no early stopping); the loss is computed in train mode.
    Training accuracy is on the adversarial examples.
    """
    a = ctx.attack
    x_adv = pgd(model, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, norm=a.norm,
                random_start=a.random_start, restarts=a.restarts, clamp=a.clamp, early_stop=False,
                precision=ctx.precision)
    logits = model(fast_layout(x_adv))
    return F.cross_entropy(logits, y), logits
