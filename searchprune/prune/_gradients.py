"""Shared plumbing of the data-driven criteria: model modes, BatchNorm statistics, loss gradients
w.r.t. the prunable weights, and adversarial batches from the study's threat model.

Gradients are taken with ``torch.autograd.grad`` w.r.t. each layer's underlying weight tensor
(:func:`~.masks.weight_param`), so the model's ``.grad`` fields are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import attacks  # attacks.pgd looked up per call, so a test can patch it
from ..errors import ConfigError
from .context import PruneContext
from .masks import weight_param

__all__ = ["module_mode", "frozen_bn_stats", "weight_grads", "adversarial_batch"]


@contextlib.contextmanager
def module_mode(model: nn.Module, *, train: bool) -> Iterator[nn.Module]:
    """Puts the whole model in train (or eval) mode and restores every submodule's flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module, *, enabled: bool = True) -> Iterator[nn.Module]:
    """Restores BatchNorm running statistics on exit, so a train-mode forward leaves no trace.

    With ``enabled=False`` this does nothing (the statistics keep whatever the forwards did).
    The forwards update stand-in copies; the original buffers are put back untouched on exit (never
    written in place, so autograd graphs that saved the copies stay valid).
    """
    saved: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
    if enabled:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                bufs = dict(m.named_buffers(recurse=False))
                saved.append((m, bufs))
                for k, b in bufs.items():
                    setattr(m, k, b.detach().clone())
    try:
        yield model
    finally:
        for m, bufs in saved:
            for k, b in bufs.items():
                setattr(m, k, b)


def weight_grads(ctx: PruneContext, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the batch-mean cross-entropy w.r.t. every prunable layer's weight.

    Returns:
        ``{layer: gradient shaped like the weight}`` (detached).
    """
    loss = F.cross_entropy(logits, y)
    params = [weight_param(m) for m in ctx.layers.values()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g.detach())
            for n, p, g in zip(ctx.layers, params, grads)}


def adversarial_batch(
    ctx: PruneContext, x: torch.Tensor, y: torch.Tensor | None, *, method: str,
    y_from_model: bool = False, random_start: bool | None = None, overrides: dict[str, Any] | None = None,
) -> torch.Tensor:
    """PGD examples for ``x`` under the study's threat model (``searchprune.attacks.pgd``).

    Args:
        ctx: the prune context (its ``threat`` is required).
        x, y: a clean batch; ``y`` may be None with ``y_from_model``.
        method: the method's name, for error messages.
        y_from_model: attack the model's own predictions (cleverhans/GAP convention).
        random_start: override the threat model's random start.
        overrides: ``eps`` / ``alpha`` / ``steps`` that replace the threat model's (None = keep).

    Raises:
        ConfigError: no threat model was given.
    """
    if ctx.threat is None:
        raise ConfigError(f"prune.method {method!r} scores weights on adversarial examples: pass threat=")
    t = ctx.threat
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    return attacks.pgd(
        ctx.model, x, y,
        eps=float(o.get("eps", t.eps)), alpha=float(o.get("alpha", t.alpha)),
        steps=int(o.get("steps", t.steps)),
        norm=t.norm, random_start=t.random_start if random_start is None else random_start, restarts=1,
        clamp=t.clamp, y_from_model=y_from_model, early_stop=False,
    )
