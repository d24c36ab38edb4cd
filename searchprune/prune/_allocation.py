"""How a sparsity target is spread over layers, and how scores become keep/prune decisions.

Allocations (``PruneConfig.allocation``):

* ``global``: one threshold over the unit scores of all prunable layers. Exact: the number of
  weights removed is the closest achievable to ``round(sparsity * prunable weights)`` (within one
  unit), ties broken deterministically by layer order then flat index (ShrinkBench keeps ties and
  may overshoot; we do not).
* ``uniform``: the same ratio in every layer, exact per layer (``round(ratio * units)``).
* ``per_layer``: ``PruneConfig.layer_sparsity`` gives each named layer its ratio; layers not named
  stay dense.
* ``mrs``: per-layer ratios from module robustness sensitivity, ``mrs.mrs_ratios_for(ctx)``.
* ``learned``: the method decides (HYDRA); no allocation happens here.

Units are weights, kernels or (for channel granularity) coupled channel groups; a unit's size is
the number of weights (or of prunable output channels) it stands for, so global ratios are always
counted in the config's units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError
from ._base import count_params, effective_weight

if TYPE_CHECKING:
    from ..config import PruneConfig
    from ._base import PruneContext

__all__ = ["allocate", "allocation_option_keys", "layer_ratios", "resolve_sparsity",
           "keep_fraction_from_compression"]


def allocation_option_keys(allocation: str, granularity: str = "weight") -> set[str]:
    """``PruneConfig.options`` keys that belong to the allocation or the channel surgery rather than
    the method: mrs's ``eps_w``, ``passes``, ``n_batches``, ``mrs_lr``, ``r_max``, and channel
    pruning's ``round_to`` (see ``_structured.py``)."""
    keys = {"round_to"} if granularity == "channel" else set()
    if allocation == "mrs":
        try:
            from .mrs import MRS_DEFAULTS
        except ImportError:
            return keys
        keys |= set(MRS_DEFAULTS)
    return keys


def keep_fraction_from_compression(compression: float, *, total: int, prunable: int) -> float:
    """ShrinkBench's ``fraction_to_keep``: the share of prunable weights kept so that the whole
    model's ``total / nonzero`` equals ``compression``.

    ``keep = (total / compression - (total - prunable)) / prunable``.

    Raises:
        ConfigError: the result is outside (0, 1] (the non-prunable parameters alone exceed the
            budget).
    """
    keep = (total / compression - (total - prunable)) / max(1, prunable)
    if not 0 < keep <= 1:
        limit = total / max(1, total - prunable)
        raise ConfigError(
            f"prune.compression: {compression} would keep {keep:.4f} of the prunable weights "
            f"({prunable} of {total} parameters are prunable); expected a compression below "
            f"{limit:.4f} for this model and layer selection"
        )
    return keep


def resolve_sparsity(model: nn.Module, cfg: PruneConfig, layers: Mapping[str, nn.Module]) -> float | None:
    """The target in the config's units: ``cfg.sparsity``, or the sparsity implied by
    ``cfg.compression`` (whole-model ratio, see :func:`keep_fraction_from_compression`).

    Returns None for the per_layer allocation (each layer has its own ratio), and for channel
    granularity with a compression: removing channels shrinks the consumers' inputs too, so the
    channel sparsity is found by the channel surgery itself (``_structured``), by bisection.

    Raises:
        ConfigError: compression out of range, or compression with channel granularity and an
            allocation other than global/uniform.
    """
    if cfg.allocation == "per_layer":
        return None
    if cfg.sparsity is not None:
        return float(cfg.sparsity)
    assert cfg.compression is not None
    if cfg.granularity == "channel":
        if cfg.allocation not in ("global", "uniform"):
            raise ConfigError(f"prune.compression: with granularity 'channel' a compression target needs "
                              f"allocation 'global' or 'uniform', got {cfg.allocation!r}; give "
                              "prune.sparsity (fraction of output channels removed) instead")
        return None
    total = count_params(model)
    prunable = sum(effective_weight(m).numel() for m in layers.values())
    return 1.0 - keep_fraction_from_compression(cfg.compression, total=total, prunable=prunable)


def layer_ratios(ctx: PruneContext) -> dict[str, float]:
    """Per-layer sparsity for the per_layer and mrs allocations, for every layer in ``ctx.layers``.

    Raises:
        ConfigError: a named layer is not prunable (the message lists the valid names), a ratio is
            out of [0, 1), or ``mrs`` is asked for before ``searchprune/prune/mrs.py`` exists.
    """
    cfg = ctx.cfg
    if cfg.allocation == "per_layer":
        given = dict(cfg.layer_sparsity or {})
        source = "prune.layer_sparsity"
    elif cfg.allocation == "mrs":
        try:
            from .mrs import mrs_ratios_for
        except ImportError as e:
            raise ConfigError(
                f"prune.allocation: 'mrs' needs searchprune.prune.mrs.mrs_ratios_for, which is not "
                f"available ({e}); expected one of: global, uniform, per_layer"
            ) from None
        given = dict(mrs_ratios_for(ctx))
        source = "mrs_ratios_for"
    else:
        raise ValueError(f"layer_ratios: allocation {cfg.allocation!r} has no per-layer ratios")
    unknown = [n for n in given if n not in ctx.layers]
    if unknown:
        raise ConfigError(f"{source}.{unknown[0]}: not a prunable layer of this model; expected one of: "
                          f"{', '.join(ctx.layers)}")
    for n, r in given.items():
        if not 0 <= float(r) < 1:
            raise ConfigError(f"{source}.{n}: expected a sparsity in [0, 1), got {r}")
    return {n: float(given.get(n, 0.0)) for n in ctx.layers}


def _check_finite(name: str, s: torch.Tensor) -> None:
    if torch.isnan(s).any() or torch.isposinf(s).any():
        raise ValueError(f"scores of layer {name!r} contain NaN or +inf")


def _n_protected_order(s: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Bool mask of the ``min_keep`` highest-scoring units (ties: the later index wins)."""
    prot = torch.zeros_like(s, dtype=torch.bool)
    if min_keep > 0:
        order = torch.sort(s, stable=True).indices  # ascending, ties by index
        prot[order[-min_keep:]] = True
    return prot


def allocate(
    unit_scores: Mapping[str, torch.Tensor],
    *,
    allocation: str,
    sparsity: float | None,
    ratios: Mapping[str, float] | None = None,
    unit_sizes: Mapping[str, int] | None = None,
    min_keep: int = 0,
) -> dict[str, torch.Tensor]:
    """Chooses which units to keep.

    Args:
        unit_scores: ``{layer: scores of its units}`` (any shape; higher = keep). ``-inf`` marks units
            already pruned: they are always pruned and count toward the target.
        allocation: "global", "uniform", "per_layer" or "mrs" (the last two need ``ratios``).
        sparsity: fraction of all units' size to remove (global, uniform).
        ratios: ``{layer: fraction to remove}`` for per_layer / mrs (missing layers: 0).
        unit_sizes: weights (or channels) each unit of a layer stands for; default 1.
        min_keep: units every layer keeps whatever its ratio (1 for channel groups).

    Returns:
        ``{layer: bool tensor shaped like its scores, True = keep}``.
    """
    names = list(unit_scores)
    sizes = {n: int((unit_sizes or {}).get(n, 1)) for n in names}
    flat = {n: unit_scores[n].detach().reshape(-1).float().cpu() for n in names}
    for n in names:
        _check_finite(n, flat[n])
    keep: dict[str, torch.Tensor] = {}

    if allocation == "global":
        if sparsity is None:
            raise ValueError("global allocation needs a sparsity")
        scores = torch.cat([flat[n] for n in names])
        size = torch.cat([torch.full((flat[n].numel(),), sizes[n], dtype=torch.float64) for n in names])
        prot = torch.cat([_n_protected_order(flat[n], min(min_keep, flat[n].numel())) for n in names])
        target = round(sparsity * float(size.sum()))
        pool = torch.nonzero(~prot).flatten()
        order = pool[torch.sort(scores[pool], stable=True).indices]  # ascending; ties by position
        cum = torch.cumsum(size[order], 0)
        n_dead = int(torch.isneginf(scores).sum())
        # remove p units: the prefix whose size is closest to the target (at least every dead one)
        lo = int(torch.searchsorted(cum, torch.tensor(float(target), dtype=torch.float64), right=True))
        p = lo
        if lo < len(cum):
            below = float(cum[lo - 1]) if lo > 0 else 0.0
            if abs(float(cum[lo]) - target) < abs(target - below):
                p = lo + 1
        p = max(p, n_dead)
        keep_all = torch.ones_like(scores, dtype=torch.bool)
        keep_all[order[:p]] = False
        offset = 0
        for n in names:
            k = flat[n].numel()
            keep[n] = keep_all[offset:offset + k].reshape(unit_scores[n].shape)
            offset += k
        return keep

    if allocation == "uniform":
        if sparsity is None:
            raise ValueError("uniform allocation needs a sparsity")
        per = {n: float(sparsity) for n in names}
    elif allocation in ("per_layer", "mrs"):
        if ratios is None:
            raise ValueError(f"{allocation} allocation needs per-layer ratios")
        per = {n: float(ratios.get(n, 0.0)) for n in names}
    else:
        raise ConfigError(f"prune.allocation: {allocation!r} is not a score allocation; expected one of: "
                          "global, uniform, per_layer, mrs")
    for n in names:
        s = flat[n]
        n_units = s.numel()
        n_dead = int(torch.isneginf(s).sum())
        n_remove = min(round(per[n] * n_units), n_units - min(min_keep, n_units))
        n_remove = max(n_remove, n_dead)
        order = torch.sort(s, stable=True).indices
        layer_keep = torch.ones(n_units, dtype=torch.bool)
        layer_keep[order[:n_remove]] = False
        keep[n] = layer_keep.reshape(unit_scores[n].shape)
    return keep
