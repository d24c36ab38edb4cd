"""Fitting in-train pruning's binary masks to the cost target when they freeze: one shared shift of
every mask tensor's kept fraction along the logit order, then single units (``fit_to_target_``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..masks import weight_param
from ..units import reduce_to_units
from .cost import HardwareCost
from .masks import LayerMask, MaskedGroup

__all__ = ["fit_to_target_", "unit_magnitudes"]


@torch.no_grad()
def unit_magnitudes(layers: Mapping[str, nn.Module], masks: Mapping[str, LayerMask], groups: list[MaskedGroup]
                ) -> list[torch.Tensor]:
    """Mean ``|W|`` per mask unit (weight, kernel, or summed over a channel group's filters), in
    freeze order: the tie-break when mask logits are equal."""
    if not groups:
        return [reduce_to_units(weight_param(layers[n]).detach().abs(), m.granularity, "mean")
                for n, m in masks.items()]
    out = []
    for g in groups:
        mag = torch.zeros_like(g.mask.mask_logits, dtype=torch.float64)
        for name, pairs in g.out_members.items():
            if name not in layers:
                continue
            w = weight_param(layers[name]).detach().abs()
            rows = w.reshape(w.shape[0], -1).mean(1).double()
            for c, u in pairs:
                mag[u] += rows[c].to(mag.device)
        out.append(mag)
    return out


def _preference(logits: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Flat unit indices of one mask tensor, most worth keeping first: by logit, ties (e.g. masks
    that never moved) by ``tiebreak`` (weight magnitude), then by position."""
    lg, tb = logits.reshape(-1).double(), tiebreak.reshape(-1).double().to(logits.device)
    order = torch.sort(-tb, stable=True).indices
    return order[torch.sort(-lg[order], stable=True).indices]


@torch.no_grad()
def fit_to_target_(bins: list[torch.Tensor], logits: list[torch.Tensor], hc: HardwareCost, target: float,
                    as_binaries: Callable[[list[torch.Tensor]], Any], *, tiebreak: list[torch.Tensor] | None = None,
                    min_keep: int = 0, drop: bool = True, fill: bool = True) -> tuple[int, int]:
    """Moves the binary masks to the largest cost not above ``target``, keeping the learned
    allocation's shape.

    Each mask tensor (a layer's weights or kernels, or a channel group) keeps the fraction
    ``f + delta`` of its units, ``f`` its fraction at freezing and ``delta`` one shift shared by all
    tensors, found by bisection (the cost only rises with ``delta``); within a tensor the units with
    the highest logits are kept (ties by weight magnitude), so ``delta = 0`` is the trained mask.
    Single units are then added, lowest extra ``delta`` first, while the cost stays within the
    target, so it lands within one unit of it. Above the target (``drop``) this removes units;
    below it (``fill``) it brings units back: the hinge overshoots, and in short runs whole layers
    cross together (every mask of a layer has the same cost share), which leaves the logits
    comparable within a layer but not across layers. With ``min_keep`` every tensor keeps that
    many units. Edits ``bins`` in place.

    Returns:
        ``(units dropped, units revived)`` relative to the trained masks.
    """
    eps = 1e-12
    tiebreak = tiebreak if tiebreak is not None else [torch.zeros_like(lg) for lg in logits]
    start = [b.clone() for b in bins]

    def ratio(b: list[torch.Tensor]) -> float:
        return float(hc.ratio(as_binaries(b)))

    over = ratio(bins) > target + eps
    if (over and not drop) or (not over and not fill):
        return 0, 0
    prefs = [_preference(lg, tb) for lg, tb in zip(logits, tiebreak)]
    sizes = [lg.numel() for lg in logits]
    frac = [float(b.sum()) / n for b, n in zip(bins, sizes)]
    lows = [min(min_keep, n) for n in sizes]

    def counts(delta: float) -> list[int]:
        return [min(n, max(least, int(math.floor((f + delta) * n + 0.5))))
                for f, n, least in zip(frac, sizes, lows)]

    def build(ks: list[int]) -> list[torch.Tensor]:
        out = []
        for b, order, k in zip(bins, prefs, ks):
            flat = torch.zeros(b.numel(), dtype=b.dtype, device=b.device)
            flat[order[:k]] = 1
            out.append(flat.reshape(b.shape))
        return out

    lo, hi = (-1.0, 0.0) if over else (0.0, 1.0)
    if ratio(build(counts(lo))) > target + eps:
        ks = counts(lo)  # even the floor is over the target: keep the minimum
    else:
        for _ in range(60):  # largest feasible delta
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ratio(build(counts(mid))) <= target + eps else (lo, mid)
        ks = counts(lo)
        grown = True
        while grown:  # top up one unit at a time, the tensors closest to their next unit first
            grown = False
            nxt = sorted(range(len(ks)), key=lambda t: (ks[t] + 0.5) / sizes[t] - frac[t])
            for t in nxt:
                if ks[t] < sizes[t]:
                    trial = ks[:t] + [ks[t] + 1] + ks[t + 1:]
                    if ratio(build(trial)) <= target + eps:
                        ks, grown = trial, True
    for b, new in zip(bins, build(ks)):
        b.copy_(new)
    dropped = sum(int(((s > 0) & (b == 0)).sum()) for s, b in zip(start, bins))
    revived = sum(int(((s == 0) & (b > 0)).sum()) for s, b in zip(start, bins))
    return dropped, revived
