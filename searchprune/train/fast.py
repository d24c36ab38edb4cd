"""The "fast" recipe: Wong et al.'s FGSM with a random start."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ascent_step, input_grad, project, random_start
from ._api import RecipeContext, register_recipe

__all__ = ["fgsm_rs"]

@register_recipe("fast")
def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Wong et al.'s fast adversarial training (FGSM with a random start).

    ``delta ~ U(-eps, eps)`` (uniform in the L2 ball for an L2 threat), one step of
    ``alpha = cfg.fast_alpha_ratio * eps``, projected back to the eps-ball and [0, 1]. As in the
    authors' code the step is taken with the model in train mode.
    """
    a = ctx.attack
    x0 = random_start(x, norm=a.norm, eps=a.eps, clamp=a.clamp).requires_grad_(True)
    loss = F.cross_entropy(model(x0), y, reduction="sum")
    grad = input_grad(loss, x0)
    x_adv = project(ascent_step(x0.detach(), grad, norm=a.norm, alpha=ctx.cfg.fast_alpha_ratio * a.eps), x,
                    norm=a.norm, eps=a.eps, clamp=a.clamp)
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits
