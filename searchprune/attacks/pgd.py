"""Projected gradient descent (Madry et al. 2018), L-inf and L2, with restarts.

Each step is ``x <- Proj_{B(x0, eps)}(x + alpha * direction(grad_x loss))`` followed by a clamp to
[0, 1]; the direction is ``sign(grad)`` for L-inf and ``grad / ||grad||_2`` for L2.

Speed on CPU: the gradient is taken with ``torch.autograd.grad(loss, x)``, so no weight
gradients are computed; inputs and conv weights run in channels_last layout (``conv_layout``);
``precision="bf16"`` autocasts convs and linears to bfloat16; and with ``early_stop`` an *active
set* shrinks the batch as soon as an example is misclassified.

Early stopping: an example fooled at some step keeps that fooling input. It already counts as
non-robust, and attacking on could only walk it back across the decision boundary. Textbook PGD
returns the last iterate instead, so with the same start early stopping never reports a higher
robust accuracy than textbook PGD (Wong et al.'s ``attack_pgd`` does the same). The registered
``"pgd"`` attack, used for evaluation, stops early by default; the keyword function :func:`pgd`
does not, because training and pruning criteria want the last iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    check_precision,
    conv_layout,
    eval_mode,
    fast_layout,
    input_grad,
    predict,
    project,
    random_start,
    register_attack,
)

__all__ = ["pgd"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # sum, not mean: each example's gradient is independent of the batch size (and of how many
    # examples the active set still holds)
    return F.cross_entropy(logits, y, reduction="sum")


def _pgd_once(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
              norm: str, random_init: bool, clamp: bool, loss_fn: LossFn, early_stop: bool,
              precision: Precision) -> torch.Tensor:
    """One PGD run from one starting point; the model is already in eval mode."""
    x = fast_layout(x)
    x_adv = random_start(x, norm=norm, eps=eps, clamp=clamp) if random_init else x.clone()
    if not early_stop:
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast(x.device, precision):
                loss = loss_fn(model(x_adv).float(), y)
            grad = input_grad(loss, x_adv)
            x_adv = project(ascent_step(x_adv.detach(), grad, norm=norm, alpha=alpha), x,
                            norm=norm, eps=eps, clamp=clamp)
        return x_adv.detach()

    # Active set: `idx` are the rows of the batch still classified correctly; xa / xo / ya are
    # their current iterate, clean input and label. Fooled rows are written to x_adv and dropped.
    idx = torch.arange(len(x), device=x.device)
    xa, xo, ya = x_adv.clone(), x, y  # xa gets requires_grad; x_adv is only written into
    for _ in range(steps):
        xa.requires_grad_(True)
        with autocast(x.device, precision):
            logits = model(xa).float()  # (b, num_classes)
            loss = loss_fn(logits, ya)
        grad = input_grad(loss, xa)
        xa = xa.detach()
        alive = logits.detach().argmax(dim=1) == ya  # (b,) bool
        if precision != "fp32" and not bool(alive.all()):
            # bf16 logits can disagree with fp32 right at the decision boundary: freeze only
            # inputs that also fool the model at full precision, the precision accuracy is scored in
            (cand,) = (~alive).nonzero(as_tuple=True)
            with torch.no_grad():
                alive[cand] = model(xa[cand]).argmax(dim=1) == ya[cand]
        if not bool(alive.all()):
            x_adv[idx[~alive]] = xa[~alive]  # freeze the fooling inputs
            idx, xa, xo, ya, grad = idx[alive], xa[alive], xo[alive], ya[alive], grad[alive]
            if len(idx) == 0:
                return x_adv
        xa = project(ascent_step(xa, grad, norm=norm, alpha=alpha), xo, norm=norm, eps=eps, clamp=clamp)
    x_adv[idx] = xa
    return x_adv


@torch.enable_grad()  # an attack needs input gradients even when called under no_grad
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float, alpha: float,
        steps: int, norm: str = "linf", random_start: bool = True, restarts: int = 1, clamp: bool = True,
        loss_fn: LossFn | None = None, y_from_model: bool = False, early_stop: bool = False,
        precision: Precision = "fp32") -> torch.Tensor:
    """Untargeted PGD adversarial examples.

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
        x: clean inputs (B, C, H, W) in [0, 1], on the model's device.
        y: true labels (B,); may be None when ``y_from_model``.
        eps: radius of the L-inf / L2 ball on the [0, 1] pixel scale.
        alpha: step size, same scale (L2: length of each step).
        steps: gradient steps per restart.
        norm: "linf" or "l2".
        random_start: start each restart from a uniform point of the ball instead of ``x``.
        restarts: independent runs; per example the first input that fools the model is kept, so
            an example is robust only if no restart fools it. Restarts after the first attack
            only the examples not fooled yet; unfooled examples return the last restart's input.
            Without ``random_start`` all restarts would be identical, so one run is made.
        clamp: keep inputs in [0, 1].
        loss_fn: ``loss_fn(logits, y) -> scalar`` to ascend (default: cross-entropy, summed).
            With a loss that is not about misclassifying ``y``, set ``early_stop=False``.
        y_from_model: attack the model's own predictions instead of ``y`` (the cleverhans
            convention GAP uses when no labels are given).
        early_stop: stop attacking an example once it is misclassified and keep that input
            (faster, and never weaker for evaluation). False gives textbook PGD, the last
            iterate, as adversarial training and transfer examples want.
        precision: "fp32", or "bf16" to autocast convs/linears to bfloat16 (1.6-2x faster on
            CPUs with AVX-512 bf16). Early stopping then confirms each fooling input in fp32
            before freezing it, so bf16 only changes the gradient directions.

    Returns:
        ``x_adv`` with the shape of ``x``, detached, within the ball (and [0, 1] if ``clamp``).

    Raises:
        ConfigError: a bad norm, eps, alpha, steps, restarts or precision.
    """
    _check_norm(norm)
    if eps < 0 or alpha <= 0 or steps < 0 or restarts < 1:
        raise ConfigError(f"pgd: expected eps >= 0, alpha > 0, steps >= 0, restarts >= 1; got eps={eps}, "
                          f"alpha={alpha}, steps={steps}, restarts={restarts}")
    check_precision(precision, "pgd")
    if y is None and not y_from_model:
        raise ConfigError("pgd: labels y are required unless y_from_model=True")
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    loss_fn = loss_fn or _ce_sum
    with eval_mode(model), conv_layout(model):
        if y_from_model:
            y = predict(model, x)  # fp32: the labels the model really predicts
        assert y is not None
        kw: dict[str, Any] = dict(eps=eps, alpha=alpha, steps=steps, norm=norm, random_init=random_start,
                                  clamp=clamp, loss_fn=loss_fn, early_stop=early_stop, precision=precision)
        if restarts == 1 or not random_start:  # without a random start every restart is identical
            return _pgd_once(model, x, y, **kw).contiguous()

        x_best = x.clone()
        todo = torch.arange(len(x), device=x.device)  # rows no restart has fooled yet
        for r in range(restarts):
            x_r = _pgd_once(model, x[todo], y[todo], **kw)
            x_best[todo] = x_r
            if r == restarts - 1:
                break
            todo = todo[predict(model, x_r) == y[todo]]  # fooled in fp32, where accuracy is scored
            if len(todo) == 0:
                break
        return x_best


@register_attack("pgd")
def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
               **options: object) -> torch.Tensor:
    """Registered PGD for evaluation: the threat model's norm, eps, alpha, steps, random start,
    restarts and clamp, with ``early_stop=True``; ``options`` (e.g. ``precision="bf16"``,
    ``early_stop=False``) go to :func:`pgd` and override these."""
    kw = dict(eps=threat.eps, alpha=threat.alpha, steps=threat.steps, norm=threat.norm,
              random_start=threat.random_start, restarts=threat.restarts, clamp=threat.clamp,
              early_stop=True)
    return call_with_options(pgd, "pgd", kw, dict(options), model, x, y)
