"""Transfer (black-box) attack: PGD examples crafted on a source model, scored on another.

Used as a gradient-masking check: a compressed (pruned, quantized) model whose white-box PGD
accuracy is *higher* than its accuracy on examples crafted against the dense source model is
masking its gradients rather than being robust.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._torch import model_device
from ..config import ThreatModel
from .pgd import pgd

__all__ = ["transfer_examples"]  # transfer_accuracy: see .evaluate


def transfer_examples(source: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                      **options: Any) -> torch.Tensor:
    """PGD examples against ``source`` under ``threat`` (returned on ``x``'s device).

    Textbook PGD (``early_stop=False``, the last iterate) is used: stopping at the first input
    that fools the source leaves examples just across its decision boundary, which transfer
    poorly. ``options`` go to :func:`~searchprune.attacks.pgd` and may override this.
    """
    device = model_device(source) or x.device
    kw: dict[str, Any] = dict(eps=threat.eps, alpha=threat.alpha, steps=threat.steps, norm=threat.norm,
                              random_start=threat.random_start, restarts=threat.restarts,
                              clamp=threat.clamp, early_stop=False)
    kw.update(options)
    x_adv = pgd(source, x.to(device), y.to(device), **kw)
    return x_adv.to(x.device)
