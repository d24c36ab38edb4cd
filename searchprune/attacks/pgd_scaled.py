"""Temperature-scaled PGD ("PGD++", Gupta & Ajanthan, AAAI 2022, "Improved gradient-based adversarial
attacks for quantized networks").

Low-bit and binary networks, and any model whose logits are large (an unscaled output layer, a
distillation temperature), saturate the softmax: the cross-entropy gradient of a confidently
classified example underflows to zero and PGD stands still, a "fake sense of robustness". Scaling
the logits changes no prediction (the decision boundary is the same) but restores the gradient:

* optionally the logits are divided by a temperature ``T``; ``temperature=None`` uses the paper's
  network Jacobian scaling (NJS), ``T`` = the mean singular value of the input-to-logit Jacobian
  over (up to 100 of) the attacked inputs;
* an example whose (scaled) softmax gives the true class ``p_y > 1 - 0.01`` has its logits
  multiplied by ``-log(0.01 / (0.99 (C - 1))) / (z_max - z_min)``, which brings ``p_y`` down to
  about 0.99 at most (the gradient threshold of the paper's code). This factor is invariant to
  any rescaling of the logits, so it undoes a temperature hidden in the model;
* then PGD ascends the cross-entropy of these logits, with the threat model's step settings.

The default ``temperature=1.0`` applies the gradient threshold alone: on the tests' small CNN the
NJS temperature (about 23) flattened the softmax so much that PGD-20 robust accuracy rose from 37%
to 58%, while the threshold alone matched plain PGD on the plain model and broke the model with
10x logits as well (39% vs 76% for plain PGD).

Registered as ``"pgd_scaled"``; used by the masking checks next to PGD, transfer and Square.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ThreatModel
from ..errors import ConfigError
from ._base import Precision, autocast, call_with_options, conv_layout, eval_mode, register_attack
from .pgd import pgd

__all__ = ["jacobian_temperature", "pgd_scaled", "scaled_ce"]

SATURATION = 1e-2  # a softmax within this of 1 for the true class counts as saturated


def jacobian_temperature(model: nn.Module, x: torch.Tensor, *, max_images: int = 100,
                         precision: Precision = "fp32") -> float:
    """Mean singular value of d logits / d x over the first ``max_images`` inputs (1.0 when the
    Jacobian vanishes, e.g. a constant model). One backward pass per class; mode left as it is."""
    xs = x[:max_images].detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(xs.device, precision):
            logits = model(xs).float()  # (n, C)
        if not logits.requires_grad:
            return 1.0
        classes = logits.shape[1]
        rows = []
        for j in range(classes):
            (g,) = torch.autograd.grad(logits[:, j].sum(), xs, retain_graph=j < classes - 1, allow_unused=True)
            rows.append(torch.zeros_like(xs).flatten(1) if g is None else g.flatten(1))
    jac = torch.stack(rows, dim=1)  # (n, C, D); rows do not interact, so each slice is one Jacobian
    mean_sv = float(torch.linalg.svdvals(jac).mean())
    return mean_sv if math.isfinite(mean_sv) and mean_sv > 0 else 1.0


def scaled_ce(logits: torch.Tensor, y: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Summed cross-entropy of ``logits / temperature``, saturated rows rescaled (see module doc)."""
    z = logits / temperature
    with torch.no_grad():
        classes = z.shape[1]
        gap = (z.amax(dim=1) - z.amin(dim=1)).clamp_min(1e-6)  # finite factors: no 0 * inf in backward
        factor = -math.log(SATURATION / ((1 - SATURATION) * max(classes - 1, 1))) / gap  # (b,)
        p_y = z.softmax(dim=1).gather(1, y[:, None]).squeeze(1)
        saturated = (1 - p_y) < SATURATION
    z = torch.where(saturated[:, None], z * factor[:, None], z)
    return F.cross_entropy(z, y, reduction="sum")


@torch.enable_grad()
def pgd_scaled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
               norm: str = "linf", random_start: bool = True, restarts: int = 1, clamp: bool = True,
               temperature: float | None = 1.0, early_stop: bool = True,
               precision: Precision = "fp32") -> torch.Tensor:
    """PGD on temperature-scaled logits (PGD++).

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
        x: clean inputs (B, ...) in [0, 1].
        y: true labels (B,).
        eps, alpha, steps, norm, random_start, restarts, clamp, early_stop, precision: as in
            :func:`~searchprune.attacks.pgd.pgd`.
        temperature: divide the logits by this before the gradient threshold (default 1: the
            threshold alone); None estimates it from ``x`` with :func:`jacobian_temperature` (NJS).

    Returns:
        ``x_adv`` with the shape of ``x``, within the ball (and [0, 1] if ``clamp``).

    Raises:
        ConfigError: a temperature <= 0, or any error of :func:`~searchprune.attacks.pgd.pgd`.
    """
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"pgd_scaled temperature: expected > 0 or None, got {temperature}")
    with eval_mode(model), conv_layout(model):
        t = jacobian_temperature(model, x, precision=precision) if temperature is None else temperature
        return pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                   restarts=restarts, clamp=clamp, early_stop=early_stop, precision=precision,
                   loss_fn=lambda logits, labels: scaled_ce(logits, labels, temperature=t))


@register_attack("pgd_scaled")
def pgd_scaled_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                      **options: Any) -> torch.Tensor:
    """Registered PGD++: the threat model's PGD settings (as ``"pgd"``, early stopping) on
    temperature-scaled logits; ``options`` (``temperature``, ``precision``, ...) go to
    :func:`pgd_scaled`."""
    kw = dict(eps=threat.eps, alpha=threat.alpha, steps=threat.steps, norm=threat.norm,
              random_start=threat.random_start, restarts=threat.restarts, clamp=threat.clamp)
    return call_with_options(pgd_scaled, "pgd_scaled", kw, dict(options), model, x, y)
