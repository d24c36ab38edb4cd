"""The allocation registry and what every allocation shares.

An allocation spreads a sparsity target over layers and turns unit scores into keep decisions
(``PruneConfig.allocation``). Each one is a class in its own file of this package, registered with
``@register_allocation("name")``; :func:`list_allocations` is the one list of their names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from ..._registry import Registry
from ...config import PruneConfig
from ...errors import ConfigError
from ..context import PruneContext
from ..options import OptionCheck, run_checks

__all__ = ["Allocation", "ALLOCATION_REGISTRY", "register_allocation", "get_allocation", "list_allocations",
           "keep_per_layer", "check_finite", "validated_ratios"]


class Allocation:
    """Base class of an allocation.

    Class attributes:
        name: set by ``register_allocation``.
        scored: the allocation turns unit scores into keep decisions (:meth:`select`); False for
            ``learned`` (the method decides).
        has_ratios: the allocation gives every layer its own ratio (:meth:`layer_ratios`).
        default_options: ``PruneConfig.options`` keys the allocation owns, with their defaults.
        option_checks: ``{key: check}`` for those options (see ``searchprune.prune.options``).
    """

    name: ClassVar[str] = ""
    scored: ClassVar[bool] = True
    has_ratios: ClassVar[bool] = False
    default_options: ClassVar[Mapping[str, Any]] = {}
    option_checks: ClassVar[Mapping[str, OptionCheck]] = {}

    @classmethod
    def check(cls, cfg: PruneConfig) -> None:
        """Validates the allocation's options in ``cfg`` (pure: no model, no data).

        Raises:
            ConfigError: a bad option value (one line, naming the key and the value).
        """
        run_checks(f"allocation {cls.name!r}", cls.option_checks,
                   {k: v for k, v in cfg.options.items() if k in cls.default_options})

    @classmethod
    def layer_ratios(cls, ctx: PruneContext) -> dict[str, float]:
        """``{layer: fraction to remove}`` as given (validated by :func:`validated_ratios`)."""
        raise ValueError(f"layer_ratios: allocation {cls.name!r} has no per-layer ratios")

    @classmethod
    def select(cls, flat: Mapping[str, torch.Tensor], sizes: Mapping[str, int], *, sparsity: float | None,
               ratios: Mapping[str, float] | None, min_keep: int) -> dict[str, torch.Tensor]:
        """``{layer: flat bool keep tensor}`` from flat unit scores (``-inf`` = already pruned)."""
        raise ConfigError(f"prune.allocation: {cls.name!r} is not a score allocation; expected one of: "
                          f"{', '.join(n for n in list_allocations() if get_allocation(n).scored)}")


ALLOCATION_REGISTRY: Registry[type[Allocation]] = Registry("allocation")


def register_allocation(name: str) -> Callable[[type[Allocation]], type[Allocation]]:
    """Class decorator: registers an :class:`Allocation` subclass under ``name``."""

    def deco(cls: type[Allocation]) -> type[Allocation]:
        if not (isinstance(cls, type) and issubclass(cls, Allocation)):
            raise TypeError(f"@register_allocation({name!r}) expects an Allocation subclass, got {cls!r}")
        cls.name = name
        return ALLOCATION_REGISTRY.register(name)(cls)

    return deco


def get_allocation(name: str) -> type[Allocation]:
    """The allocation registered under ``name``.

    Raises:
        ConfigError: unknown name (the message lists ``list_allocations()``).
    """
    return ALLOCATION_REGISTRY.get(name)


def list_allocations() -> list[str]:
    """Names of the registered allocations, sorted."""
    return ALLOCATION_REGISTRY.names()


def check_finite(name: str, s: torch.Tensor) -> None:
    """Raises ValueError when a layer's scores contain NaN or +inf."""
    if torch.isnan(s).any() or torch.isposinf(s).any():
        raise ValueError(f"scores of layer {name!r} contain NaN or +inf")


def keep_per_layer(flat: Mapping[str, torch.Tensor], per: Mapping[str, float], min_keep: int
                   ) -> dict[str, torch.Tensor]:
    """Exact per-layer cut: each layer removes ``round(per[layer] * units)`` of its lowest-scoring
    units (at least its ``-inf`` ones, at most all but ``min_keep``); ties by index."""
    keep: dict[str, torch.Tensor] = {}
    for n, s in flat.items():
        n_units = s.numel()
        n_dead = int(torch.isneginf(s).sum())
        n_remove = min(round(per[n] * n_units), n_units - min(min_keep, n_units))
        n_remove = max(n_remove, n_dead)
        order = torch.sort(s, stable=True).indices
        layer_keep = torch.ones(n_units, dtype=torch.bool)
        layer_keep[order[:n_remove]] = False
        keep[n] = layer_keep
    return keep


def validated_ratios(ctx: PruneContext, given: Mapping[str, float], source: str) -> dict[str, float]:
    """``given`` checked against ``ctx.layers`` and completed with 0 for layers not named.

    Raises:
        ConfigError: a named layer is not prunable (the message lists the valid names), or a ratio is
            out of [0, 1).
    """
    unknown = [n for n in given if n not in ctx.layers]
    if unknown:
        raise ConfigError(f"{source}.{unknown[0]}: not a prunable layer of this model; expected one of: "
                          f"{', '.join(ctx.layers)}")
    for n, r in given.items():
        if not 0 <= float(r) < 1:
            raise ConfigError(f"{source}.{n}: expected a sparsity in [0, 1), got {r}")
    return {n: float(given.get(n, 0.0)) for n in ctx.layers}
