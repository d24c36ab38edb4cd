"""The "trades" recipe: Zhang et al.'s TRADES."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import eval_mode
from ..attacks import ascent_step, input_grad, project
from ._api import RecipeContext, register_recipe

__all__ = ["trades"]

@register_recipe("trades")
def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x')) summed / B``.

    ``x'`` starts at ``x + 0.001 N(0, 1)`` and takes ``ctx.attack.steps`` steps of size
    ``ctx.attack.alpha`` up the KL divergence, each projected to the eps-ball and [0, 1], with the
    model in eval mode. Training accuracy is on the clean batch.
    """
    a, batch = ctx.attack, len(x)
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)  # (B, K), the fixed target of the ascent
        x_adv = x + 0.001 * torch.randn_like(x)
        for _ in range(a.steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
            grad = input_grad(kl, x_adv)
            x_adv = project(ascent_step(x_adv.detach(), grad, norm=a.norm, alpha=a.alpha), x,
                            norm=a.norm, eps=a.eps, clamp=a.clamp)
    logits = model(x)
    robust = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), F.softmax(logits.float(), dim=1),
                      reduction="sum") / batch
    return F.cross_entropy(logits, y) + ctx.cfg.trades_beta * robust, logits
