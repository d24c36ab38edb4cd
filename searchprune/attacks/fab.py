"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), L-inf and L2, targeted (FAB-T) and untargeted.

FAB looks for the *smallest* perturbation that changes the decision, so it does not climb a loss
whose gradient may vanish; it follows the linearised decision boundary instead. Each iteration,
from the current point ``x_k`` and the clean input ``x_0``:

* linearise the boundary between the true class ``y`` and a class ``t`` at ``x_k``: the hyperplane
  ``f(x_k) + g . (z - x_k) = 0`` with ``f = z_t - z_y`` (logits) and ``g = grad_x f``. FAB-T uses
  a fixed target ``t``; untargeted FAB picks the class whose hyperplane is closest,
  ``|f_j| / ||g_j||_q`` with ``q`` the dual norm;
* project both ``x_k`` and ``x_0`` onto that hyperplane intersected with the box [0, 1], in the
  attack's norm: ``d_k`` and ``d_0`` (:func:`hyperplane_projection`);
* step to the convex combination biased towards the clean input,
  ``x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x_0 + eta d_0))`` with
  ``a = min(|d_k| / (|d_k| + |d_0|), alpha_max)``, ``eta = 1.05`` (overshoot), ``alpha_max = 0.1``;
* once ``x_{k+1}`` is misclassified, remember it if it is the closest so far and step back towards
  the clean input: ``x_{k+1} <- x_0 + beta (x_{k+1} - x_0)``, ``beta = 0.9``.

FAB-T runs this for each of the ``n_targets`` most likely wrong classes of the clean input (the
2nd, 3rd, ... largest clean logit), each run on the examples no earlier run has broken. An
example counts as broken when the closest adversarial point found is within ``eps``; then that
point is returned, otherwise the clean input (so the attack never reports a point outside the
ball, and an example broken anywhere stops being attacked: minimising its norm further cannot
change robust accuracy). AutoAttack runs FAB-T with 9 targets, 100 iterations, 1 restart.

FAB always keeps inputs in [0, 1] (the projection is onto the box), which is inside every threat
model, clamped or not. Restarts after the first start from a random point at half the radius,
``x_0 + eps / 2 * u / ||u||``, as in the paper's code.
"""

from __future__ import annotations

import torch
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
    register_attack,
)

__all__ = ["fab", "hyperplane_projection"]


def _norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of a flat (n, D) tensor: L-inf or L2."""
    return t.abs().amax(dim=1) if norm == "linf" else t.norm(p=2, dim=1)


def hyperplane_projection(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest ``d`` (in ``norm``) with ``w . (t + d) = b`` and ``0 <= t + d <= 1``, per row.

    With ``c = w . t - b`` (signs flipped so that ``c >= 0``), ``d`` moves each coordinate against
    ``sign(w_i)`` by ``m_i(lam)``, at most the room ``r_i`` left in the box: ``m_i = min(lam, r_i)`` for
    L-inf and ``m_i = min(lam |w_i|, r_i)`` for L2 (the KKT form of the L2 problem). The decrease
    ``sum_i |w_i| m_i(lam)`` is piecewise linear and nondecreasing in ``lam``: it is evaluated at its
    breakpoints (sorted), the segment reaching ``c`` is found by binary search and ``lam`` is solved
    on it. A hyperplane the box cannot reach gives the largest move, to the box's far corner.

    Args:
        t: points (n, D) in [0, 1].
        w: hyperplane normals (n, D).
        b: offsets (n,).
        norm: "linf" or "l2".

    Returns:
        ``d`` (n, D); rows with ``w = 0`` get ``d = 0``.
    """
    c = (w * t).sum(dim=1) - b  # (n,)
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * flip[:, None], c * flip  # now c >= 0: w . d must decrease by c
    mag = w.abs()
    room = torch.where(w > 0, t, 1 - t) * (mag > 0)  # how far each coordinate may move (n, D)
    if norm == "linf":
        keys, weights = room, mag  # decrease(lam) = sum weights * min(lam, keys)
    else:
        keys = torch.where(mag > 0, room / mag.clamp_min(1e-30), torch.zeros_like(room))
        weights = mag * mag
    keys_s, order = keys.sort(dim=1)
    weights_s = weights.gather(1, order)
    below = torch.cumsum(weights_s * keys_s, dim=1)  # contribution of saturated coordinates
    above = weights_s.sum(dim=1, keepdim=True) - torch.cumsum(weights_s, dim=1)  # weight still growing
    at_breaks = below + keys_s * above  # decrease at lam = keys_s[:, k] (n, D), nondecreasing
    k = torch.searchsorted(at_breaks.contiguous(), c[:, None].contiguous()).squeeze(1)  # first break >= c
    n, dim = t.shape
    reachable = k < dim
    prev = (k - 1).clamp(0, dim - 1)[:, None]
    below_prev = torch.where(k > 0, below.gather(1, prev).squeeze(1), torch.zeros_like(c))
    above_prev = torch.where(k > 0, above.gather(1, prev).squeeze(1), weights_s.sum(dim=1))
    lam = ((c - below_prev) / above_prev.clamp_min(1e-30)).clamp_min(0)
    lam = torch.where(reachable, lam, torch.full_like(lam, float("inf")))[:, None]
    grow = lam if norm == "linf" else lam * mag  # lam = inf (unreachable) x mag = 0 is nan: masked next
    move = torch.where(mag > 0, torch.minimum(grow, room), torch.zeros_like(room))
    return -torch.sign(w) * move


def _boundary(model: nn.Module, x1: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
              precision: Precision, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The linearised boundary at ``x1`` (b, ...): ``f`` (b,) and ``g = grad f`` (b, D) for
    ``f = z_t - z_y`` with the given target, or for the closest class when ``target`` is None."""
    xg = x1.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(xg.device, precision):
            logits = model(xg).float()  # (b, C)
        rows = torch.arange(len(y), device=y.device)
        if target is not None:
            f = logits[rows, target] - logits[rows, y]
            return f.detach(), input_grad(f.sum(), xg).flatten(1)
        # untargeted: the Jacobian, one backward pass per class (rows do not interact)
        classes = logits.shape[1]
        jac = torch.stack([torch.autograd.grad(logits[:, j].sum(), xg, retain_graph=j < classes - 1)[0].flatten(1)
                           for j in range(classes)], dim=1)  # (b, C, D)
    fs = (logits - logits[rows, y][:, None]).detach()  # (b, C)
    gs = jac - jac[rows, y][:, None]
    dual = gs.abs().sum(dim=2) if norm == "linf" else gs.norm(p=2, dim=2)
    dist = fs.abs() / (dual + 1e-12)
    dist[rows, y] = float("inf")
    j = dist.argmin(dim=1)
    return fs[rows, j], gs[rows, j]


def _fab_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, *, eps: float,
             norm: str, steps: int, alpha_max: float, eta: float, beta: float, start: torch.Tensor | None,
             precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run on correctly classified inputs; model already in eval mode.

    Returns:
        ``(x_adv, broken)``: per example the closest adversarial point found within ``eps`` and
        True, or the clean input and False.
    """
    shape = x.shape
    x0 = x.flatten(1)  # (b, D)
    x1 = x0.clone() if start is None else start.flatten(1)
    out = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best = torch.full((len(x),), float("inf"), device=x.device)
    idx = torch.arange(len(x), device=x.device)  # rows not broken yet; state below holds only these
    xa, ya, ta = x1, y, target
    x0a, best_a = x0, best.clone()
    for _ in range(steps):
        if len(idx) == 0:
            break
        f, g = _boundary(model, xa.view(-1, *shape[1:]), ya, ta, precision, norm)
        offset = (g * xa).sum(dim=1) - f  # hyperplane g . z = offset
        both = hyperplane_projection(torch.cat((xa, x0a)), torch.cat((g, g)), torch.cat((offset, offset)), norm)
        d1, d2 = both[: len(idx)], both[len(idx):]
        a1, a2 = _norm(d1, norm).clamp_min(1e-8), _norm(d2, norm).clamp_min(1e-8)
        a = (a1 / (a1 + a2)).clamp(0.0, alpha_max)[:, None]
        xa = ((xa + eta * d1) * (1 - a) + (x0a + eta * d2) * a).clamp(0.0, 1.0)
        with torch.no_grad(), autocast(xa.device, precision):
            fooled = model(fast_layout(xa.view(-1, *shape[1:]))).float().argmax(dim=1) != ya
        if bool(fooled.any()):
            dist = _norm(xa - x0a, norm)
            closer = fooled & (dist < best_a)
            best_a = torch.where(closer, dist, best_a)
            out[idx[closer]] = xa[closer].view(-1, *shape[1:])
            xa = torch.where(fooled[:, None], x0a + beta * (xa - x0a), xa)
            done = best_a <= eps  # broken: a smaller norm would not change robust accuracy
            if bool(done.any()):
                broken[idx[done]] = True
                keep = ~done
                idx, xa, ya, x0a, best_a = idx[keep], xa[keep], ya[keep], x0a[keep], best_a[keep]
                ta = None if ta is None else ta[keep]
    out[~broken] = x[~broken]  # closest points beyond eps are not adversarial in this threat model
    return out, broken


@torch.enable_grad()  # an attack needs input gradients even when called under no_grad
def fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 100,
        targeted: bool = True, n_targets: int = 9, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9, seed: int = 0, precision: Precision = "fp32") -> torch.Tensor:
    """FAB adversarial examples within ``eps``: FAB-T (default) or untargeted FAB.

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
            Only input gradients are taken (parameter ``.grad`` is never written).
        x: clean inputs (B, ...) in [0, 1], on the model's device.
        y: true labels (B,).
        eps: radius of the L-inf / L2 ball on the [0, 1] pixel scale: an example is broken when
            FAB finds an adversarial point this close.
        norm: "linf" or "l2".
        steps: iterations per run (each two forward passes and one backward pass; untargeted
            FAB needs one backward pass per class).
        targeted: FAB-T, one run per target class; False: untargeted FAB (closest boundary).
        n_targets: FAB-T's number of target classes, the most likely wrong ones of the clean
            input (capped at classes - 1); AutoAttack uses 9.
        restarts: runs per target (untargeted: in total); later ones start from a random point
            at half the radius and attack only examples not broken yet.
        alpha_max: the largest weight of the step towards the clean input's projection.
        eta: overshoot of each projection step (> 1 lands just beyond the linearised boundary).
        beta: after a success, the step back towards the clean input, ``x0 + beta (x - x0)``.
        seed: seeds a private generator for the random restarts (the global RNG is untouched).
        precision: "fp32" (default) or "bf16" autocast for speed.

    Returns:
        ``x_adv`` with the shape of ``x``, detached: a point within ``eps`` (and in [0, 1]) that
        the model misclassifies, or the clean input where none was found.

    Raises:
        ConfigError: a bad norm, eps, steps, n_targets, restarts, alpha_max, eta, beta or precision.

    Example:
        >>> x_adv = fab(model, x, y, eps=8 / 255)  # FAB-T, 9 targets x 100 iterations
    """
    _check_norm(norm)
    if eps < 0 or steps < 1 or n_targets < 1 or restarts < 1 or not 0 <= alpha_max <= 1 or eta <= 0 \
            or not 0 < beta <= 1:
        raise ConfigError(f"fab: expected eps >= 0, steps >= 1, n_targets >= 1, restarts >= 1, 0 <= alpha_max <= 1, "
                          f"eta > 0, 0 < beta <= 1; got eps={eps}, steps={steps}, n_targets={n_targets}, "
                          f"restarts={restarts}, alpha_max={alpha_max}, eta={eta}, beta={beta}")
    check_precision(precision, "fab")
    x = x.detach()
    if eps == 0 or len(x) == 0:
        return x.clone()
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    with eval_mode(model), conv_layout(model):
        with torch.no_grad(), autocast(x.device, precision):
            clean_logits = model(fast_layout(x)).float()  # (B, C)
        classes = clean_logits.shape[1]
        x_best = x.clone()  # misclassified clean inputs stay as they are
        todo = torch.nonzero(clean_logits.argmax(dim=1) == y).flatten()
        ranked = clean_logits.argsort(dim=1, descending=True)  # rank 1 = most likely wrong class
        ranks: list[int | None] = list(range(1, min(n_targets, classes - 1) + 1)) if targeted else [None]
        for rank in ranks:
            for r in range(restarts):
                if len(todo) == 0:
                    break
                xt = x[todo]
                start = None
                if r > 0:
                    u = (torch.rand(xt.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
                         if norm == "linf" else torch.randn(xt.shape, generator=gen, device=x.device, dtype=x.dtype))
                    size = _norm(u.flatten(1), norm).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                    start = (xt + 0.5 * eps * u / size).clamp(0.0, 1.0)
                target = None if rank is None else ranked[todo, rank]
                x_r, broken = _fab_run(model, xt, y[todo], target, eps=eps, norm=norm, steps=steps,
                                       alpha_max=alpha_max, eta=eta, beta=beta, start=start, precision=precision)
                x_best[todo[broken]] = x_r[broken]
                todo = todo[~broken]
    return x_best


@register_attack("fab_t")
def fab_t_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 **options: object) -> torch.Tensor:
    """Registered FAB-T as in AutoAttack: the threat model's norm and eps, 9 target classes (or
    classes - 1), 100 iterations, one restart; ``options`` go to :func:`fab`."""
    kw = dict(eps=threat.eps, norm=threat.norm, targeted=True, n_targets=9)
    return call_with_options(fab, "fab_t", kw, dict(options), model, x, y)


@register_attack("fab")
def fab_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
               **options: object) -> torch.Tensor:
    """Registered untargeted FAB: the threat model's norm and eps, 100 iterations, one restart
    (one backward pass per class each iteration); ``options`` go to :func:`fab`."""
    kw = dict(eps=threat.eps, norm=threat.norm, targeted=False)
    return call_with_options(fab, "fab", kw, dict(options), model, x, y)
