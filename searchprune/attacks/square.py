"""Square Attack, L-inf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): a score-based
black-box attack by random search.

It never takes a gradient, so masked, shattered or zero gradients (quantizers, hard rounding,
saturated softmax) do not slow it down: it is the gradient-free half of the masking checks. Every
model call runs under ``torch.no_grad``.

Algorithm (per example, vectorized over the batch):

* loss: the margin ``logit_y - max_{j != y} logit_j``, to be pushed below zero;
* init: vertical stripes, ``x + eps * s`` with one random sign ``s`` per (channel, column);
* step i: pick a random ``h x h`` square (``h = round(sqrt(p_i * H * W))``, at least 1, at most
  ``min(H, W) - 1``) and set it, per channel, to ``x +/- eps`` with a random sign; keep the candidate
  only if the margin went down. Candidates that would not change the current image are redrawn;
* ``p_i`` (the fraction of pixels changed) follows the paper's piecewise-constant schedule,
  written for 10,000 queries: ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000,
  6000 and 8000. By default it is rescaled to the budget (iteration ``i`` of ``queries`` reads the
  schedule at ``i / queries * 10,000``), which suits small budgets; AutoAttack runs 5,000 queries
  with ``p_init = 0.8`` on the unscaled schedule (``rescale_schedule=False``), as its code does;
* only examples still classified correctly are queried; fooled ones keep their fooling input.

Queries: ``queries`` counts model calls per example including the stripe initialisation (one extra
call on the clean inputs decides which examples need attacking at all).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ThreatModel
from ..errors import ConfigError
from ._base import (
    Precision,
    autocast,
    call_with_options,
    check_precision,
    conv_layout,
    eval_mode,
    fast_layout,
    register_attack,
)

__all__ = ["square", "square_p_schedule"]

# (upper end of the rescaled iteration range, divisor of p_init) from the paper's code
_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
               (8000, 256))


def square_p_schedule(p_init: float, it: int, queries: int, rescale: bool = True) -> float:
    """Fraction of pixels changed at iteration ``it`` of ``queries``: the paper's schedule for
    10,000 queries, rescaled to ``queries`` unless ``rescale`` is False.

    Example:
        >>> square_p_schedule(0.8, 1, 10_000), square_p_schedule(0.8, 100, 10_000)
        (0.8, 0.2)
        >>> square_p_schedule(0.8, 100, 5_000), square_p_schedule(0.8, 100, 5_000, rescale=False)
        (0.1, 0.2)
    """
    it_10k = int(it / queries * 10_000) if rescale else it
    for bound, div in _P_SCHEDULE:
        if it_10k <= bound:
            return p_init / div
    return p_init / 512


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logit_y - max_{j != y} logit_j`` (b,); negative means misclassified."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -float("inf")).amax(dim=1)
    return true - other


def _signs(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform random +/-1 of ``shape`` in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int = 300,
           p_init: float = 0.8, seed: int = 0, clamp: bool = True,
           precision: Precision = "fp32", rescale_schedule: bool = True) -> torch.Tensor:
    """Untargeted L-inf Square Attack adversarial examples (gradient-free).

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
            Only forward passes under ``torch.no_grad`` are made.
        x: clean inputs (B, C, H, W) in [0, 1], on the model's device.
        y: true labels (B,).
        eps: L-inf radius on the [0, 1] pixel scale.
        queries: model calls per example (including the initialisation); fooled examples stop.
        p_init: initial fraction of pixels changed per step (0.8 in the paper for L-inf).
        seed: seeds a private generator (the global RNG is untouched).
        clamp: keep inputs in [0, 1].
        precision: "fp32" (default) or "bf16" autocast for speed.
        rescale_schedule: stretch the 10,000-query schedule of ``p`` to ``queries`` (default);
            False reads it at the raw iteration number, as AutoAttack's 5,000-query Square does.

    Returns:
        ``x_adv`` with the shape of ``x``: every entry within ``eps`` of ``x`` (and in [0, 1] if
        ``clamp``); examples misclassified on the clean input are returned unchanged.

    Raises:
        ConfigError: a bad eps, queries, p_init or precision, or a non-image input.

    Example:
        >>> x_adv = square(model, x, y, eps=0.1, queries=1000)
    """
    if eps < 0 or queries < 1 or not 0 < p_init <= 1:
        raise ConfigError(f"square: expected eps >= 0, queries >= 1, 0 < p_init <= 1; got eps={eps}, "
                          f"queries={queries}, p_init={p_init}")
    check_precision(precision, "square")
    if x.dim() != 4:
        raise ConfigError(f"square: expected images (B, C, H, W), got shape {tuple(x.shape)}")
    x = x.detach()
    if eps == 0 or len(x) == 0:
        return x.clone()
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    n, c, h, w = x.shape

    def forward(inp: torch.Tensor) -> torch.Tensor:
        with autocast(inp.device, precision):
            return model(fast_layout(inp)).float()

    def clip(t: torch.Tensor) -> torch.Tensor:
        return t.clamp(0.0, 1.0) if clamp else t

    with eval_mode(model), conv_layout(model), torch.no_grad():
        x_best = x.clone()  # misclassified clean inputs stay as they are
        todo = torch.nonzero(forward(x).argmax(dim=1) == y).flatten()
        if len(todo) == 0:
            return x_best
        # Vertical stripes: one sign per (example, channel, column), the whole column at +/- eps.
        x_init = clip(x[todo] + eps * _signs((len(todo), c, 1, w), gen, x))
        logits = forward(x_init)
        x_best[todo] = x_init
        margin = torch.full((n,), float("inf"), device=x.device)
        margin[todo] = _margin(logits, y[todo])
        alive = torch.zeros(n, dtype=torch.bool, device=x.device)
        alive[todo] = logits.argmax(dim=1) == y[todo]

        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        max_side = max(min(h, w) - 1, 1)
        for it in range(1, queries):
            act = torch.nonzero(alive).flatten()
            if len(act) == 0:
                break
            b = len(act)
            xc, xb = x[act], x_best[act]  # clean and current best (b, C, H, W)
            p = square_p_schedule(p_init, it, queries, rescale_schedule)
            side = min(max(int(round(math.sqrt(p * h * w))), 1), max_side)
            # a random side x side window per example, as a (b, 1, H, W) mask
            top = torch.randint(0, h - side + 1, (b,), generator=gen, device=x.device)
            left = torch.randint(0, w - side + 1, (b,), generator=gen, device=x.device)
            in_h = (rows >= top[:, None]) & (rows < top[:, None] + side)  # (b, H)
            in_w = (cols >= left[:, None]) & (cols < left[:, None] + side)  # (b, W)
            window = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # (b, 1, H, W)

            x_new = torch.where(window, clip(xc + eps * _signs((b, c, 1, 1), gen, x)), xb)
            # redraw signs where the candidate equals the current image (a wasted query)
            for _ in range(10):
                same = (x_new - xb).abs().flatten(1).amax(dim=1) < 1e-7  # (b,)
                if not bool(same.any()):
                    break
                k = int(same.sum())
                redraw = clip(xc[same] + eps * _signs((k, c, 1, 1), gen, x))
                x_new[same] = torch.where(window[same], redraw, xb[same])

            logits = forward(x_new)
            m_new = _margin(logits, y[act])
            better = m_new < margin[act]
            upd = act[better]
            x_best[upd] = x_new[better]
            margin[upd] = m_new[better]
            alive[upd] = logits[better].argmax(dim=1) == y[upd]
    return x_best


@register_attack("square")
def square_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                  **options: object) -> torch.Tensor:
    """Registered Square Attack: the threat model's eps and clamp, 300 queries.

    ``options`` (``queries``, ``p_init``, ``seed``, ``precision``, ``rescale_schedule``) go to
    :func:`square`.

    Raises:
        ConfigError: the threat model is not L-inf (only the L-inf Square Attack is implemented).
    """
    if threat.norm != "linf":
        raise ConfigError(f"attack 'square': only the L-inf threat model is supported, "
                          f"got norm={threat.norm!r}")
    kw = dict(eps=threat.eps, clamp=threat.clamp)
    return call_with_options(square, "square", kw, dict(options), model, x, y)
