"""APGD: Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), L-inf and L2, with three losses:

* ``"ce"``: cross-entropy (APGD-CE);
* ``"dlr"``: the Difference of Logits Ratio ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``, with
  ``z_pi1 >= z_pi2 >= ...`` the sorted logits: invariant to shifting and rescaling the logits, so a
  saturated softmax (a temperature, defensive distillation) cannot hide the gradient (APGD-DLR);
* ``"dlr-targeted"``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` towards a target class ``t``,
  run once for each of the ``n_targets`` most likely wrong classes of the clean input (the 2nd,
  3rd, ... largest clean logit), each run attacking only the examples no earlier run fooled
  (APGD-T; AutoAttack uses 9 targets, 100 iterations and 1 restart each).

PGD needs a step size, and a badly chosen one makes a model look more robust than it is. APGD
replaces it with a budget-aware schedule:

* the step size starts at ``eta = 2 * eps`` and is halved (per example) at checkpoints
  ``w_j = ceil(p_j * N)`` with ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
  (for N = 100: 22, 41, 57, 70, 80, 87, 93, 99) when either
  condition 1: fewer than ``rho`` (0.75) of the steps since the last checkpoint increased the loss, or
  condition 2: the step size was not halved at the last checkpoint and the best loss has not improved
  since it;
* after a halving the iterate restarts from the best point found so far (with its gradient);
* each step mixes the projected gradient step ``z`` with the previous move:
  ``x_{k+1} = P(x_k + 0.75 (z_{k+1} - x_k) + 0.25 (x_k - x_{k-1}))`` (no momentum on the first step).

Per example the attack keeps the first input that fools the model (a fooled example is dropped
from the batch: in eval mode examples do not interact, so this only saves compute) and, for the
others, the input with the highest loss. Restarts attack only examples no earlier restart fooled.
An example misclassified on the clean input is returned unchanged (delta = 0 already fools it), so
robust accuracy can never exceed clean accuracy because of a random start.

Speed: input gradients only (``torch.autograd.grad``), channels_last inputs and conv weights on
CPU (as PGD does), optional bf16 autocast; fooled rows leave the batch.
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
    autocast,
    call_with_options,
    check_precision,
    conv_layout,
    eval_mode,
    fast_layout,
    input_grad,
    project,
    register_attack,
)

__all__ = ["apgd", "apgd_checkpoints", "dlr_loss", "dlr_targeted_loss", "LOSSES"]

LOSSES = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75  # weight of the new gradient step; 1 - MOMENTUM goes to the previous move


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size, for a budget of ``steps``.

    ``w_j = ceil(p_j * steps)`` with ``p_1 = 0.22`` and increments shrinking by 0.03 down to 0.06.
    Computed in integer hundredths so that 0.22 * 100 is 22, not 23.

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    ws: list[int] = []
    p_prev, p = 0, 22  # p_j in hundredths
    while True:
        w = max(1, -(-p * steps // 100))  # ceil(p * steps / 100)
        if w > steps:
            return ws
        if not ws or w > ws[-1]:
            ws.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)


def _bview(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b,) -> (b, 1, ..., 1) to broadcast against ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def _l2(t: torch.Tensor) -> torch.Tensor:
    return _bview(t.flatten(1).norm(p=2, dim=1), t)


def _seeded_start(x: torch.Tensor, *, norm: str, eps: float, clamp: bool,
                  gen: torch.Generator) -> torch.Tensor:
    """A random point of the eps-ball around ``x`` from ``gen``: uniform per entry for L-inf, on the
    sphere of radius eps for L2 (as in the paper's code)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x0 = x + eps * (2 * u - 1)
    else:
        d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x0 = x + eps * d / _l2(d).clamp_min(1e-12)
    return x0.clamp(0.0, 1.0) if clamp else x0


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss per example (b,): ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)``.

    Positive once the example is misclassified; needs at least 3 classes.
    """
    z_sorted = logits.sort(dim=1).values  # (b, C) ascending
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_other = logits.scatter(1, y[:, None], -float("inf")).amax(dim=1)
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per example (b,): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

    Needs at least 4 classes.
    """
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def _loss_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, precision: Precision, loss_name: str,
               target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss (b,), its input gradient (b, ...) and the predicted labels (b,)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x_adv.device, precision):
            logits = model(x_adv).float()  # (b, classes)
        if loss_name == "ce":
            loss = F.cross_entropy(logits, y, reduction="none")  # (b,)
        elif loss_name == "dlr":
            loss = dlr_loss(logits, y)
        else:
            assert target is not None
            loss = dlr_targeted_loss(logits, y, target)
        # the sum's gradient w.r.t. x is each example's own gradient: rows do not interact
        grad = input_grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach(), logits.detach().argmax(dim=1)


def _ascent(x_adv: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent step with a per-example step size ``eta`` (b,); zero gradients stay put."""
    if norm == "linf":
        return x_adv + _bview(eta, x_adv) * grad.sign()
    return x_adv + _bview(eta, x_adv) * grad / _l2(grad).clamp_min(1e-12)


def _apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
              rho: float, clamp: bool, gen: torch.Generator, precision: Precision, loss_name: str = "ce",
              target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start; the model is already in eval mode. ``target`` (b,) holds
    the target classes of ``loss_name == "dlr-targeted"``.

    Returns:
        ``(x_out, fooled, best_loss)``: per example the first fooling iterate if any (``fooled``
        True), else the highest-loss iterate, whose loss is ``best_loss``.
    """
    n = len(x)
    ckpts = set(apgd_checkpoints(steps))

    x_k = _seeded_start(x, norm=norm, eps=eps, clamp=clamp, gen=gen)  # x^(0)
    f_k, g_k, pred = _loss_grad(model, x_k, y, precision, loss_name, target)
    x_out = x_k.clone()  # the answer per example; fooled rows are final
    fooled = pred != y
    best_loss = f_k.clone()

    # Active set: `idx` are rows of the batch not fooled yet; every state tensor below holds only
    # those rows, in that order. Rows fooled at x^(0) leave at once.
    alive = ~fooled
    idx = torch.arange(n, device=x.device)[alive]
    xo, ya = x[alive], y[alive]  # clean inputs and labels
    ta = None if target is None else target[alive]
    x_k, f_k, g_k = x_k[alive], f_k[alive], g_k[alive]
    x_prev = x_k  # x^(k-1); the first step has no momentum, so its value is unused then
    x_max, f_max, g_max = x_k.clone(), f_k.clone(), g_k.clone()  # best point, loss and gradient
    eta = torch.full((len(idx),), 2.0 * eps, device=x.device, dtype=x.dtype)
    n_up = torch.zeros(len(idx), device=x.device, dtype=torch.long)  # loss increases since checkpoint
    f_max_ckpt = f_max.clone()  # best loss at the last checkpoint
    halved_ckpt = torch.zeros(len(idx), device=x.device, dtype=torch.bool)  # halved at the last one?
    last_ckpt = 0

    for k in range(steps):
        if len(idx) == 0:
            break
        z = project(_ascent(x_k, g_k, eta, norm), xo, norm=norm, eps=eps, clamp=clamp)
        if k == 0:
            x_new = z
        else:
            x_new = project(x_k + MOMENTUM * (z - x_k) + (1 - MOMENTUM) * (x_k - x_prev), xo,
                            norm=norm, eps=eps, clamp=clamp)
        f_new, g_new, pred = _loss_grad(model, x_new, ya, precision, loss_name, ta)

        n_up += (f_new > f_k).long()
        better = f_new > f_max
        x_max = torch.where(_bview(better, x_max), x_new, x_max)
        g_max = torch.where(_bview(better, g_max), g_new, g_max)
        f_max = torch.where(better, f_new, f_max)
        x_prev, x_k, f_k, g_k = x_k, x_new, f_new, g_new

        it = k + 1
        if it in ckpts:
            cond1 = n_up.double() < rho * (it - last_ckpt)
            cond2 = ~halved_ckpt & (f_max <= f_max_ckpt)
            halve = cond1 | cond2
            eta = torch.where(halve, eta / 2, eta)
            hv = _bview(halve, x_k)
            x_k, g_k = torch.where(hv, x_max, x_k), torch.where(hv, g_max, g_k)
            f_k = torch.where(halve, f_max, f_k)
            n_up.zero_()
            f_max_ckpt, halved_ckpt, last_ckpt = f_max.clone(), halve, it

        hit = pred != ya  # x_new fools the model: keep it and drop the row
        if bool(hit.any()):
            x_out[idx[hit]] = x_new[hit]
            fooled[idx[hit]] = True
            keep = ~hit
            idx, xo, ya, eta, n_up = idx[keep], xo[keep], ya[keep], eta[keep], n_up[keep]
            ta = None if ta is None else ta[keep]
            x_k, x_prev, f_k, g_k = x_k[keep], x_prev[keep], f_k[keep], g_k[keep]
            x_max, f_max, g_max = x_max[keep], f_max[keep], g_max[keep]
            f_max_ckpt, halved_ckpt = f_max_ckpt[keep], halved_ckpt[keep]

    x_out[idx] = x_max
    best_loss[idx] = f_max
    return x_out, fooled, best_loss


@torch.enable_grad()  # an attack needs input gradients even when called under no_grad
def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         steps: int = 100, restarts: int = 1, rho: float = 0.75, seed: int = 0, clamp: bool = True,
         precision: Precision = "fp32", loss: str = "ce", n_targets: int = 9) -> torch.Tensor:
    """APGD adversarial examples: APGD-CE (default), APGD-DLR or APGD-T (targeted DLR).

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
            Only input gradients are taken (parameter ``.grad`` is never written).
        x: clean inputs (B, C, H, W) in [0, 1], on the model's device.
        y: true labels (B,).
        eps: radius of the L-inf / L2 ball on the [0, 1] pixel scale.
        norm: "linf" or "l2".
        steps: iterations per restart (each one forward and one backward pass).
        restarts: independent random starts (per target class with "dlr-targeted"); later ones
            attack only examples not fooled yet.
        rho: condition-1 threshold: halve the step size when fewer than this fraction of the
            steps since the last checkpoint increased the loss.
        seed: seeds a private generator for the random starts (the global RNG is untouched), so
            the result is a function of the inputs and the seed.
        clamp: keep inputs in [0, 1].
        precision: "fp32" (default, the honest reference) or "bf16" autocast for speed.
        loss: "ce", "dlr" (needs >= 3 classes) or "dlr-targeted" (needs >= 4 classes).
        n_targets: with "dlr-targeted", how many of the most likely wrong classes to target in
            turn (capped at classes - 1); AutoAttack uses 9. Ignored by the other losses.

    Returns:
        ``x_adv`` with the shape of ``x``, detached, within the ball (and [0, 1] if ``clamp``).

    Raises:
        ConfigError: a bad norm, eps, steps, restarts, rho, precision, loss or n_targets, or too
            few classes for the DLR loss.

    Example:
        >>> x_adv = apgd(model, x, y, eps=8 / 255, steps=100)
        >>> robust = (model(x_adv).argmax(1) == y).float().mean()
    """
    _check_norm(norm)
    if eps < 0 or steps < 1 or restarts < 1 or not 0 < rho < 1:
        raise ConfigError(f"apgd: expected eps >= 0, steps >= 1, restarts >= 1, 0 < rho < 1; got eps={eps}, "
                          f"steps={steps}, restarts={restarts}, rho={rho}")
    check_precision(precision, "apgd")
    if loss not in LOSSES:
        raise ConfigError(f"apgd loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    if n_targets < 1:
        raise ConfigError(f"apgd n_targets: expected >= 1, got {n_targets}")
    x = x.detach()
    if eps == 0 or len(x) == 0:
        return x.clone()
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    xl = fast_layout(x)
    with eval_mode(model), conv_layout(model):
        with torch.no_grad(), autocast(x.device, precision):
            clean_logits = model(xl).float()  # (B, C)
        classes = clean_logits.shape[1]
        need = {"ce": 2, "dlr": 3, "dlr-targeted": 4}[loss]
        if classes < need:
            raise ConfigError(f"apgd loss {loss!r}: needs at least {need} classes, the model has {classes}")
        x_best = xl.clone()  # misclassified clean inputs stay as they are
        todo = torch.nonzero(clean_logits.argmax(dim=1) == y).flatten()  # rows to attack
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        # target class of each run: the 2nd, 3rd, ... most likely class of the clean input
        ranked = clean_logits.argsort(dim=1, descending=True)  # (B, C)
        ranks = range(1, min(n_targets, classes - 1) + 1) if loss == "dlr-targeted" else [None]
        for rank in ranks:
            for _ in range(restarts):
                if len(todo) == 0:
                    break
                target = None if rank is None else ranked[todo, rank]
                x_r, fooled, loss_r = _apgd_run(model, xl[todo], y[todo], eps=eps, norm=norm, steps=steps,
                                                rho=rho, clamp=clamp, gen=gen, precision=precision,
                                                loss_name=loss, target=target)
                # fooling inputs always win; otherwise keep the restart that reached the higher loss
                take = fooled | (loss_r > best_loss[todo])
                x_best[todo[take]] = x_r[take]
                best_loss[todo] = torch.maximum(best_loss[todo], loss_r)
                todo = todo[~fooled]
    return x_best.contiguous()


@register_attack("apgd")
def apgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                **options: object) -> torch.Tensor:
    """Registered APGD-CE: the threat model's norm, eps and clamp, 100 steps, one restart.

    ``options`` (``steps``, ``restarts``, ``rho``, ``seed``, ``precision``, ``loss``, ``n_targets``)
    go to :func:`apgd`; the threat model's PGD ``alpha`` / ``steps`` are ignored because APGD sets
    its own step sizes.
    """
    kw = dict(eps=threat.eps, norm=threat.norm, clamp=threat.clamp)
    return call_with_options(apgd, "apgd", kw, dict(options), model, x, y)


@register_attack("apgd_dlr")
def apgd_dlr_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                    **options: object) -> torch.Tensor:
    """Registered APGD-DLR (untargeted, scale-invariant loss): as ``"apgd"`` with ``loss="dlr"``."""
    kw = dict(eps=threat.eps, norm=threat.norm, clamp=threat.clamp, loss="dlr")
    return call_with_options(apgd, "apgd_dlr", kw, dict(options), model, x, y)


@register_attack("apgd_t")
def apgd_t_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                  **options: object) -> torch.Tensor:
    """Registered APGD-T as in AutoAttack: targeted DLR over the 9 most likely wrong classes (or
    classes - 1), 100 steps and one restart per target; ``options`` go to :func:`apgd`."""
    kw = dict(eps=threat.eps, norm=threat.norm, clamp=threat.clamp, loss="dlr-targeted", n_targets=9)
    return call_with_options(apgd, "apgd_t", kw, dict(options), model, x, y)
