"""The fast gradient sign method (Goodfellow et al. 2015): one step of size eps.

For an L2 threat model the step is ``eps * grad / ||grad||_2`` (the "fast gradient method").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ThreatModel
from ..errors import ConfigError
from ._base import (
    Precision,
    _check_norm,
    ascent_step,
    autocast,
    call_with_options,
    conv_layout,
    eval_mode,
    fast_layout,
    input_grad,
    project,
    register_attack,
)

__all__ = ["fgsm"]


@torch.enable_grad()  # an attack needs input gradients even when called under no_grad
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, clamp: bool = True,
         norm: str = "linf", precision: Precision = "fp32") -> torch.Tensor:
    """One-step adversarial examples ``x + eps * sign(grad_x CE)``.

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
        x: clean inputs (B, C, H, W) in [0, 1].
        y: labels (B,).
        eps: step and budget on the [0, 1] pixel scale.
        clamp: keep the result in [0, 1].
        norm: "linf" (sign step) or "l2" (normalized-gradient step of length eps).
        precision: "fp32" or "bf16" autocast.

    Returns:
        ``x_adv``, detached, shaped like ``x``.
    """
    _check_norm(norm)
    if eps < 0:
        raise ConfigError(f"fgsm: expected eps >= 0, got {eps}")
    x = fast_layout(x.detach())
    with eval_mode(model), conv_layout(model):
        x_adv = x.clone().requires_grad_(True)
        with autocast(x.device, precision):
            loss = F.cross_entropy(model(x_adv).float(), y, reduction="sum")
        grad = input_grad(loss, x_adv)
    x_adv = ascent_step(x, grad, norm=norm, alpha=eps)
    # the projection only matters for rounding at the ball's edge; the clamp keeps [0, 1]
    return project(x_adv, x, norm=norm, eps=eps, clamp=clamp).contiguous()


@register_attack("fgsm")
def fgsm_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                **options: object) -> torch.Tensor:
    """Registered FGSM: the threat model's eps, norm and clamp (``options`` go to :func:`fgsm`)."""
    kw = dict(eps=threat.eps, norm=threat.norm, clamp=threat.clamp)
    return call_with_options(fgsm, "fgsm", kw, dict(options), model, x, y)
