"""Transfer (black-box) attack: PGD examples crafted on a source model, scored on another.

Used as a gradient-masking check: a compressed (pruned, quantized) model whose white-box PGD
accuracy is *higher* than its accuracy on examples crafted against the dense source model is
masking its gradients rather than being robust.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import ThreatModel
from ._base import _batches, eval_mode, predict
from .pgd import pgd

__all__ = ["transfer_examples", "transfer_accuracy"]


def transfer_examples(source: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                      **options: Any) -> torch.Tensor:
    """PGD examples against ``source`` under ``threat`` (returned on ``x``'s device).

    Textbook PGD (``early_stop=False``, the last iterate) is used: stopping at the first input
    that fools the source leaves examples just across its decision boundary, which transfer
    poorly. ``options`` go to :func:`~searchprune.attacks.pgd` and may override this.
    """
    ref = next(iter(source.parameters()), None)
    device = x.device if ref is None else ref.device
    kw: dict[str, Any] = dict(eps=threat.eps, alpha=threat.alpha, steps=threat.steps, norm=threat.norm,
                              random_start=threat.random_start, restarts=threat.restarts,
                              clamp=threat.clamp, early_stop=False)
    kw.update(options)
    x_adv = pgd(source, x.to(device), y.to(device), **kw)
    return x_adv.to(x.device)


def transfer_accuracy(model: nn.Module, source: nn.Module,
                      loader: Iterable[tuple[torch.Tensor, torch.Tensor]], threat: ThreatModel, *,
                      max_images: int | None = None, **options: Any) -> float:
    """Accuracy of ``model`` on PGD examples crafted against ``source``.

    Args:
        model: the model scored (the target).
        source: the model attacked (typically the dense base model).
        loader: iterable of ``(x, y)`` batches in [0, 1].
        threat: the threat model.
        max_images: score only the first this many images.
        **options: passed to :func:`transfer_examples`.
    """
    correct = total = 0
    with eval_mode(model):
        for x, y in _batches(model, loader, max_images):
            x_adv = transfer_examples(source, x, y, threat, **options)
            correct += int((predict(model, x_adv) == y).sum())
            total += len(y)
    return correct / total if total else 0.0
