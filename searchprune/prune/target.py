"""The sparsity target in the config's units: ``PruneConfig.sparsity``, or the one implied by a
ShrinkBench whole-model ``compression`` ratio."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .._torch import count_params
from ..config import PruneConfig
from ..errors import ConfigError
from .masks import effective_weight

__all__ = ["check_target", "keep_fraction_from_compression", "resolve_sparsity"]


def check_target(cfg: PruneConfig) -> None:
    """The model-free part of the target's validation (``PruningMethod.check`` runs it).

    Raises:
        ConfigError: compression with channel granularity and an allocation other than global/uniform
            (the channel sparsity is found by bisection over those two only).
    """
    if (cfg.compression is not None and cfg.sparsity is None and cfg.granularity == "channel"
            and cfg.allocation not in ("global", "uniform", "per_layer")):
        raise ConfigError(f"prune.compression: with granularity 'channel' a compression target needs "
                          f"allocation 'global' or 'uniform', got {cfg.allocation!r}; give "
                          "prune.sparsity (fraction of output channels removed) instead")


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
    channel sparsity is found by the channel surgery itself (``structured.py``), by bisection.

    Raises:
        ConfigError: compression out of range (:func:`check_target` has vetted the rest).
    """
    if cfg.allocation == "per_layer":
        return None
    if cfg.sparsity is not None:
        return float(cfg.sparsity)
    assert cfg.compression is not None
    if cfg.granularity == "channel":
        return None
    total = count_params(model, nonzero=False)
    prunable = sum(effective_weight(m).numel() for m in layers.values())
    return 1.0 - keep_fraction_from_compression(cfg.compression, total=total, prunable=prunable)
