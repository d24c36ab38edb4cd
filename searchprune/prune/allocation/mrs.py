"""Module Robustness Sensitivity (MRS) and the per-layer pruning ratios it implies (MRPF).

MRPF (Bai, Tabia, Santos-Rodríguez, arXiv 2410.15176) prunes each layer at a ratio that falls as
the layer's *robustness sensitivity* rises, then fine-tunes adversarially. No code or method text of
the paper is public; the sensitivity follows the closely related Module Robust Criticality of RiFT
(Zhu et al., ICCV 2023), reconstructed in ``shared/reference/methods.md`` D.2:

    MRS(l) = max_{||dW_l||_2 <= eps_w ||W_l||_2}  L_adv(W + dW_l) - L_adv(W)

where only layer ``l``'s weight moves and ``L_adv`` is the mean cross-entropy on a *fixed* set of
PGD adversarial examples crafted once against the unperturbed model. The max is estimated by
gradient ascent (SGD, lr 1, on -CE) w.r.t. ``W_l`` alone, projecting ``dW_l`` back onto the
relative-norm ball after every step; the loss over the whole adversarial set is measured after
each pass and the largest value seen counts.

The ratios (D.3) are ``r_l = c * f(MRS_l)`` clipped to ``[0, r_max]``, with ``c`` chosen so that the
size-weighted mean of ``r_l`` is exactly the target sparsity (clipping and renormalization are
iterated until nothing new clips). ``f`` is the option ``mrs_map``: ``inverse`` (the default,
``f = 1 / MRS``) or ``linear`` (D.3's alternative, ``f = 1 - MRS / max MRS``: the most sensitive
layer is pruned last, and ratios fall in proportion to sensitivity rather than to its reciprocal,
so one insensitive layer does not take nearly all of the pruning).

Public names:
    MRSAllocation: the ``mrs`` allocation (options ``eps_w``, ``passes``, ``n_batches``, ``mrs_lr``,
        ``r_max``, ``mrs_map``, checked by its ``check``).
    mrs_scores: the sensitivities of a set of layers.
    mrs_ratios: sensitivities -> per-layer pruning ratios meeting a global target.
    MRS_MAPS: the names of the sensitivity -> preference maps (``mrs_map``).
    mrs_ratios_for: what the ``mrs`` allocation calls, cached per base model and scoring data (prune/cache.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._torch import eval_mode
from ...attacks import pgd
from ...config import ThreatModel
from ...errors import ConfigError
from ..context import PruneContext
from ..masks import weight_param
from ..options import number, one_of, positive_int
from ._base import register_allocation
from .per_layer import RatioAllocation

__all__ = ["MRSAllocation", "mrs_scores", "mrs_ratios", "mrs_ratios_for", "MRS_DEFAULTS", "MRS_MAPS"]

# Defaults of the estimator's options (PruneConfig.options keys). RiFT's MRC uses eps_w = 0.1 and
# two to ten passes over its whole adversarial set; a few batches and passes rank layers the same
# way on small models at a fraction of the cost.
MRS_DEFAULTS: dict[str, Any] = {"eps_w": 0.1, "passes": 3, "n_batches": 4, "mrs_lr": 1.0, "r_max": 0.95,
                                "mrs_map": "inverse"}
MRS_MAPS = ("inverse", "linear")

@contextmanager
def _only_grad_for(model: nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """Lets autograd track ``keep`` only (so the backward pass skips every other weight's
    gradient); restores every parameter's ``requires_grad`` afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(p is keep)
        keep.requires_grad_(True)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _adv_set(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], threat: ThreatModel, n_batches: int
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_batches`` of ``loader`` attacked once with the study's PGD."""
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, (x, y) in enumerate(loader):
        if i >= n_batches:
            break
        x_adv = pgd(model, x, y, eps=threat.eps, alpha=threat.alpha, steps=threat.steps, norm=threat.norm,
                    random_start=threat.random_start, restarts=threat.restarts, clamp=threat.clamp,
                    early_stop=False)  # textbook PGD: the last iterate, as RiFT's MRC uses
        batches.append((x_adv.detach(), y))
    if not batches:
        raise ConfigError("MRS needs at least one batch of training data; the loader gave none")
    return batches


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    total, n = 0.0, 0
    for x, y in batches:
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
        n += y.numel()
    return total / n


def mrs_scores(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    threat: ThreatModel,
    *,
    eps_w: float = 0.1,
    passes: int = 3,
    n_batches: int = 4,
    lr: float = 1.0,
) -> dict[str, float]:
    """Module robustness sensitivity of each layer (RiFT's MRC on a fixed adversarial set).

    The adversarial examples are crafted once, with PGD under ``threat``, against the unperturbed
    model. For each layer in turn, its weight alone is moved by ``passes`` passes of gradient
    ascent on the mean cross-entropy of those examples (SGD step ``lr``), and after every step the
    perturbation ``dW`` is rescaled onto ``||dW||_2 <= eps_w * ||W||_2``. The mean loss over the
    whole set is measured after each pass. The model runs in eval mode throughout (BatchNorm uses
    its running statistics, as in RiFT), and every weight and mode is restored bit-identically.

    Args:
        model: the (dense, usually adversarially trained) model.
        layers: name -> conv / linear module whose weight is perturbed (a masked or quantized
            weight is perturbed through its parametrization's ``original``).
        loader: iterable of ``(x, y)`` batches (x in [0, 1]) on the model's device.
        threat: the study's threat model: PGD settings of the fixed adversarial set.
        eps_w: radius of the weight perturbation relative to the layer's weight norm.
        passes: gradient-ascent passes over the adversarial set.
        n_batches: batches of ``loader`` that make up the adversarial set.
        lr: gradient-ascent step size (RiFT: 1).

    Returns:
        Layer name -> MRS = (largest mean adversarial loss seen) - (the unperturbed loss), >= 0.
    """
    if eps_w <= 0:
        raise ConfigError(f"prune.options.eps_w: expected a relative weight radius > 0, got {eps_w}")
    if passes < 1 or n_batches < 1:
        raise ConfigError(f"prune.options: expected passes >= 1 and n_batches >= 1, "
                          f"got {passes}, {n_batches}")
    with eval_mode(model):
        batches = _adv_set(model, loader, threat, n_batches)
        base_loss = _mean_loss(model, batches)
        scores: dict[str, float] = {}
        for name, module in layers.items():
            w = weight_param(module)
            w0 = w.detach().clone()
            radius = eps_w * float(torch.linalg.vector_norm(w0))
            worst = base_loss
            try:
                with _only_grad_for(model, w):
                    for _ in range(passes):
                        for x, y in batches:
                            loss = F.cross_entropy(model(x), y)
                            (g,) = torch.autograd.grad(loss, w)
                            with torch.no_grad():
                                w.add_(g, alpha=lr)  # ascent
                                delta = w - w0
                                norm = float(torch.linalg.vector_norm(delta))
                                if norm > radius:  # back onto the relative-norm ball
                                    w.copy_(w0 + delta * (radius / norm))
                        worst = max(worst, _mean_loss(model, batches))
            finally:
                with torch.no_grad():
                    w.copy_(w0)  # exact restore: same bits
            scores[name] = worst - base_loss
    return scores


def mrs_ratios(
    mrs: Mapping[str, float],
    sizes: Mapping[str, int],
    target: float,
    *,
    r_max: float = 0.95,
    mapping: str = "inverse",
    min_mrs: float = 1e-12,
) -> dict[str, float]:
    """Per-layer pruning ratios that fall as MRS rises, meeting a global target exactly.

    ``r_l = c * f(MRS_l)``, with layers that would exceed ``r_max`` clipped to it and ``c`` re-solved
    over the remaining layers until none clips, so that
    ``sum_l sizes_l * r_l == target * sum_l sizes_l`` (to float precision). More sensitive layers
    are pruned less; equal MRS gives equal ratios. ``f(m) = 1 / m`` (``mapping="inverse"``) or
    ``f(m) = 1 - m / max_j m_j`` (``"linear"``); a preference below ``min_mrs`` counts as ``min_mrs``,
    so a layer with none (the most sensitive one under ``linear``) is pruned only when every other
    layer is at the cap.

    Args:
        mrs: layer name -> sensitivity (values below ``min_mrs`` count as ``min_mrs``: an insensitive
            layer is pruned as much as the cap allows).
        sizes: layer name -> weight (sparsity is over weights: parameter counts; for channel
            pruning, output channels), same keys as ``mrs``.
        target: the size-weighted mean pruning ratio to meet, in [0, r_max].
        r_max: the cap on any one layer's ratio.
        mapping: ``"inverse"`` or ``"linear"`` (:data:`MRS_MAPS`).

    Returns:
        Layer name -> fraction of that layer pruned.

    Raises:
        ConfigError: the target is outside [0, r_max] (not reachable with every layer capped), or
            the two mappings disagree, or ``mapping`` is unknown.
    """
    if mapping not in MRS_MAPS:
        raise ConfigError(f"prune.options.mrs_map: expected one of: {', '.join(MRS_MAPS)}, got {mapping!r}")
    if set(mrs) != set(sizes):
        raise ConfigError(f"mrs and sizes name different layers: {sorted(set(mrs) ^ set(sizes))}")
    if not 0 < r_max <= 1:
        raise ConfigError(f"prune.options.r_max: expected a cap in (0, 1], got {r_max}")
    if not 0 <= target <= r_max:
        raise ConfigError(f"prune.sparsity: a target of {target} cannot be met with every layer capped at "
                          f"r_max={r_max}; expected a sparsity in [0, {r_max}]")
    names = list(mrs)
    if any(sizes[n] <= 0 for n in names):
        raise ConfigError(f"expected positive layer sizes, got {dict(sizes)}")
    total = float(sum(sizes[n] for n in names))
    m = {n: max(float(mrs[n]), min_mrs) for n in names}
    if mapping == "inverse":
        pref = {n: 1.0 / m[n] for n in names}
    else:  # linear: 1 - MRS / max MRS
        top = max(m.values())
        pref = {n: max(1.0 - m[n] / top, min_mrs) for n in names}
    capped: set[str] = set()
    ratios: dict[str, float] = {}
    while True:
        free = [n for n in names if n not in capped]
        budget = target * total - r_max * sum(sizes[n] for n in capped)  # weights still to prune
        weight = sum(sizes[n] * pref[n] for n in free)
        c = budget / weight if free and weight > 0 else 0.0
        ratios = {n: (r_max if n in capped else c * pref[n]) for n in names}
        newly = {n for n in free if ratios[n] > r_max}
        if not newly:
            break
        capped |= newly
    return {n: min(max(r, 0.0), r_max) for n, r in ratios.items()}


# ---------------------------------------------------------------------------------------------
# The allocation hook (cached through the prune context's StatCache)
# ---------------------------------------------------------------------------------------------


def _layer_size(module: nn.Module, granularity: str) -> int:
    """What the sparsity counts in this layer: output channels for channel granularity, weights
    otherwise (kernel sparsity is still a fraction of weights)."""
    w = weight_param(module)
    if granularity == "channel":
        return int(w.shape[0])
    return int(w.numel())


def mrs_ratios_for(ctx: Any) -> dict[str, float]:
    """Per-layer pruning ratios for the ``mrs`` allocation of one pruning run.

    Reads from the prune context: ``model``, ``layers`` (name -> module), ``cfg`` (its
    ``sparsity``, ``granularity`` and the options ``eps_w``, ``passes``, ``n_batches``,
    ``mrs_lr``, ``r_max``, ``mrs_map``), ``loader``, ``threat`` and ``cache`` (a
    :class:`searchprune.prune.cache.StatCache` or None). With a cache the scores are computed once per
    model state, scoring data, layers, threat model and estimator options.

    Returns:
        Layer name -> fraction pruned; the size-weighted mean (parameters, or output channels for
        channel granularity) equals the target sparsity.

    Raises:
        ConfigError: no training loader or threat model was given, or the target is infeasible.
    """
    cfg = ctx.cfg
    opts = {k: cfg.options.get(k, v) for k, v in MRS_DEFAULTS.items()}
    if getattr(ctx, "loader", None) is None or getattr(ctx, "threat", None) is None:
        raise ConfigError("the mrs allocation needs training data and a threat model "
                          "(prune_(..., loader=..., threat=...))")
    target = _target_sparsity(ctx)
    layers: Mapping[str, nn.Module] = ctx.layers
    est_opts = {k: opts[k] for k in ("eps_w", "passes", "n_batches", "mrs_lr")}
    n_batches = int(opts["n_batches"])

    def estimate() -> dict[str, float]:
        # the context's batches are on the model's device; a bare loader is used as it is
        batches = ctx.batches(n_batches) if hasattr(ctx, "batches") else ctx.loader
        return mrs_scores(ctx.model, layers, batches, ctx.threat, eps_w=float(opts["eps_w"]),
                          passes=int(opts["passes"]), n_batches=n_batches, lr=float(opts["mrs_lr"]))

    cache = getattr(ctx, "cache", None)
    if cache is None:
        scores = estimate()
    else:  # once per base model, scoring data, layers, threat model and estimator options
        parts = {"model": cache.model_digest(ctx.model), "data": cache.data_digest(ctx.loader),
                 "layers": sorted(layers), "threat": repr(ctx.threat), "options": est_opts}
        scores = cache.compute("mrs", parts, estimate)
    sizes = {n: _layer_size(m, cfg.granularity) for n, m in layers.items()}
    return mrs_ratios(scores, sizes, target, r_max=float(opts["r_max"]), mapping=str(opts["mrs_map"]))


def _target_sparsity(ctx: Any) -> float:
    """The global sparsity to meet: the context's resolved value when the base provides one
    (compression converted to sparsity), else ``cfg.sparsity``."""
    for attr in ("sparsity", "target_sparsity"):
        value = getattr(ctx, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    if ctx.cfg.sparsity is None:
        raise ConfigError("the mrs allocation needs prune.sparsity (or a compression the base resolves)")
    return float(ctx.cfg.sparsity)


@register_allocation("mrs")
class MRSAllocation(RatioAllocation):
    """Per-layer ratios from module robustness sensitivity (:func:`mrs_ratios_for`)."""

    ratio_source = "mrs_ratios_for"
    default_options = MRS_DEFAULTS
    option_checks = {"eps_w": number(low=0, low_open=True), "passes": positive_int(),
                     "n_batches": positive_int(), "mrs_lr": number(low=0, low_open=True),
                     "r_max": number(low=0, high=1, low_open=True), "mrs_map": one_of(*MRS_MAPS)}
    ratio_cap = ("r_max", float(MRS_DEFAULTS["r_max"]))

    @classmethod
    def layer_ratios(cls, ctx: PruneContext) -> dict[str, float]:
        return mrs_ratios_for(ctx)
