"""The pruning method API: :class:`PruningMethod`, its registry, and its model-free ``check``.

A new criterion is one file with one class:

.. code-block:: python

    from searchprune.prune.method import PruningMethod, register_method
    from searchprune.prune.options import number

    @register_method("my_criterion")
    class MyCriterion(PruningMethod):
        \"\"\"One line on what is scored; the options it takes.\"\"\"

        granularities = ("weight", "kernel", "channel")
        allocations = ("global", "uniform", "per_layer", "mrs")
        needs_data = False
        default_options = {"power": 1.0}
        option_checks = {"power": number(low=0, low_open=True)}

        def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
            # importance per weight element, shaped like the weight; higher = keep
            return {name: m.weight.detach().abs() ** self.options["power"]
                    for name, m in ctx.layers.items()}

Sparsity semantics
------------------
``PruneConfig.sparsity`` is the fraction of *prunable* weights removed (weights of the conv/linear
layers returned by :func:`~.masks.prunable_layers`; biases and BatchNorm are never pruned). For
``granularity="kernel"`` whole ``kh x kw`` kernels are removed but the count is still in weights;
for ``granularity="channel"`` it is the fraction of prunable *output channels* removed, and the
channels are removed physically (``structured.py``). ``PruneConfig.compression`` (ShrinkBench's
whole-model ratio c = total / nonzero over all parameters) resolves to
``sparsity = 1 - (total / c - nonprunable) / prunable`` (``target.resolve_sparsity``); with
channel granularity the channel sparsity giving ``total / c`` parameters is found by bisection.

The method API (stable; learned methods build on it)
----------------------------------------------------
* Subclasses declare ``granularities``, ``allocations`` (names of ``allocation.list_allocations()``),
  ``needs_data``, ``needs_threat``, ``default_options`` and ``option_checks`` (unknown option keys
  raise ``ConfigError``, except keys of the allocation or of channel surgery, e.g. mrs's ``r_max``
  or ``round_to``; the merged options are ``self.options``), and optionally ``target_unit``
  ("weights"; "macs" for cost targets), ``reduction``, ``normalize_channels``,
  ``min_keep_per_layer``, ``select_layers`` and ``check_options`` (cross-option rules).
* :meth:`PruningMethod.check` validates a ``PruneConfig`` for the method with no model and no data;
  ``prune_`` calls it first, and a study calls it for every combination it may sample.
* ``scores(ctx) -> {layer name: tensor shaped like the weight}``: importance per weight element,
  higher = keep. ``unit_scores(ctx, granularity)`` aggregates them per kernel ``(C_out, C_in)`` or
  per output channel ``(C_out,)`` (by default the mean over the unit: the same ranking as the sum
  within a layer, and comparable across layers whose kernels differ in size; override for criteria
  whose aggregate is not a mean, e.g. LAMP, Taylor).
* ``apply(ctx) -> PruneReport``: the default turns unit scores into masks through the configured
  allocation (``allocation.allocate``) and granularity, or hands channel granularity to
  ``structured.prune_channels_``. Learned methods override ``apply`` and finish with
  :func:`~.context.build_report`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .._registry import Registry
from .._torch import count_params
from ..config import PruneConfig
from ..errors import ConfigError
from .allocation import allocate, get_allocation, has_ratios, layer_ratios, list_allocations
from .context import PruneContext, PruneReport, build_report
from .masks import apply_mask_, effective_weight, get_mask
from .options import OptionCheck, run_checks
from .structured import STRUCTURED_OPTION_CHECKS, STRUCTURED_OPTIONS, prune_channels_
from .target import check_target
from .units import expand_units, reduce_to_units

__all__ = ["GRANULARITIES", "METHODS", "PruningMethod", "register_method", "list_methods", "get_method",
           "check_config"]

GRANULARITIES = ("weight", "kernel", "channel")


class PruningMethod:
    """Base class of every pruning criterion. Subclass, set the class attributes, implement
    :meth:`scores` (score-based methods) or :meth:`apply` (learned methods), and register with
    ``@register_method("name")``.

    Class attributes:
        name: set by ``register_method``.
        granularities: the granularities the method supports.
        allocations: the allocations the method supports.
        needs_data: ``prune_`` must get a ``loader``.
        needs_threat: ``prune_`` must get a ``threat`` (adversarial criteria).
        default_options: the method's hyperparameters and their defaults; ``PruneConfig.options``
            overrides them, unknown keys raise ``ConfigError``.
        option_checks: ``{option: check}`` (``searchprune.prune.options``): the range of each
            option's value, run by :meth:`check`; cross-option rules go in :meth:`check_options`.
        reduction: how ``unit_scores`` aggregates per-weight scores into kernels/channels
            ("mean", "sum" or "l2"). The mean keeps per-unit scores on the per-weight scale, so a
            global threshold compares 3x3 kernels and single linear weights fairly.
        normalize_channels: divide each channel group's scores by their mean absolute value before a
            global channel ranking (Torch-Pruning's ``normalizer="mean"``), so layers with large
            fan-in do not dominate. Criteria whose scores are already comparable (LAMP) set False.
        min_keep_per_layer: units every layer keeps under any allocation (weight/kernel; channel
            groups always keep at least one channel). ShrinkBench criteria: 0; LAMP: 1.
        target_unit: what ``sparsity`` counts for this method: "weights" (the config's units:
            prunable weights, or prunable output channels for channel granularity), or, for methods
            with a cost target such as in-train pruning, "macs" (1 - kept fraction of the model's
            MACs) or "params". ``PruneReport.sparsity`` is always in the config's units.
    """

    name: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("weight", "kernel", "channel")
    allocations: ClassVar[tuple[str, ...]] = ("global", "uniform", "per_layer", "mrs")
    needs_data: ClassVar[bool] = False
    needs_threat: ClassVar[bool] = False
    default_options: ClassVar[Mapping[str, Any]] = {}
    option_checks: ClassVar[Mapping[str, OptionCheck]] = {}
    reduction: ClassVar[str] = "mean"
    normalize_channels: ClassVar[bool] = True
    min_keep_per_layer: ClassVar[int] = 0
    target_unit: ClassVar[str] = "weights"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        type(self)._check_own_options(options, set(self.default_options))
        self.options: dict[str, Any] = {**self.default_options, **options}

    # -- validation (pure: no model, no data) ---------------------------------------------------

    @classmethod
    def check(cls, cfg: PruneConfig) -> None:
        """Validates ``cfg`` for this method without a model or data: what ``prune_`` runs first and
        what a study validates at creation for every method x granularity x allocation.

        Checks the granularity and allocation (supported by the method), the option keys (the
        method's, the allocation's, and for channel granularity the surgery's ``round_to``), every
        option's range, the method's cross-option rules and the target (compression with channel
        granularity).

        Raises:
            ConfigError: one line naming the bad value and what was expected.
        """
        if cfg.granularity not in cls.granularities:
            raise ConfigError(f"prune.granularity: method {cls.name!r} does not support {cfg.granularity!r}; "
                              f"expected one of: {', '.join(cls.granularities)}")
        if cfg.allocation not in cls.allocations:
            raise ConfigError(f"prune.allocation: method {cls.name!r} does not support {cfg.allocation!r}; "
                              f"expected one of: {', '.join(cls.allocations)}")
        allocation = get_allocation(cfg.allocation)
        foreign = set(allocation.default_options)
        if cfg.granularity == "channel":
            foreign |= set(STRUCTURED_OPTIONS)
            run_checks("channel pruning", STRUCTURED_OPTION_CHECKS, cfg.options)
        cls._check_own_options(cls.own_options(cfg), set(cls.default_options) | foreign)
        allocation.check(cfg)
        check_target(cfg)

    @classmethod
    def own_options(cls, cfg: PruneConfig) -> dict[str, Any]:
        """The options of ``cfg`` the method takes: all but the allocation's and the channel
        surgery's (a key both use, e.g. ``n_batches`` with mrs, goes to both)."""
        foreign = set(get_allocation(cfg.allocation).default_options)
        if cfg.granularity == "channel":
            foreign |= set(STRUCTURED_OPTIONS)
        return {k: v for k, v in cfg.options.items() if k in cls.default_options or k not in foreign}

    @classmethod
    def _check_own_options(cls, options: Mapping[str, Any], known: set[str]) -> None:
        unknown = sorted(set(options) - known)
        if unknown:
            expected = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"prune.options.{unknown[0]}: unknown option of method {cls.name!r}; "
                              f"expected one of: {expected}")
        run_checks(f"method {cls.name!r}", cls.option_checks, options)
        cls.check_options({**cls.default_options, **options})

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Cross-option rules on the merged options (default: none).

        Raises:
            ConfigError: naming the options and what was expected.
        """

    # -- hooks ---------------------------------------------------------------------------------

    def select_layers(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """Restricts the prunable layers (e.g. convs only). Default: all of them."""
        return layers

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """Importance of every weight element of every layer in ``ctx.layers`` (higher = keep).

        Returns:
            ``{layer name: tensor shaped like the layer's weight}`` (no gradient, on any device).
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither scores() nor apply()")

    def unit_scores(self, ctx: PruneContext, granularity: str) -> dict[str, torch.Tensor]:
        """Importance per pruning unit: :meth:`scores` aggregated by :func:`reduce_to_units`."""
        return {n: reduce_to_units(s, granularity, self.reduction) for n, s in self.scores(ctx).items()}

    # -- the default: scores -> allocation -> masks (or physical channel removal) ---------------

    def apply(self, ctx: PruneContext) -> PruneReport:
        """Prunes ``ctx.model`` in place and reports what was done."""
        gran = ctx.cfg.granularity
        if gran == "channel":
            return prune_channels_(ctx, self)
        params_before = count_params(ctx.model, nonzero=True)
        units = {n: s.detach().float() for n, s in self.unit_scores(ctx, gran).items()}
        sizes = {}
        for name, m in ctx.layers.items():
            w = effective_weight(m)
            u = units[name]
            sizes[name] = w.numel() // max(1, u.numel())
            old = get_mask(m)
            if old is not None:  # already-pruned units go first, so re-pruning never revives them
                dead = reduce_to_units((old == 0).float(), gran, "mean") >= 1.0
                units[name] = torch.where(dead.to(u.device), torch.full_like(u, float("-inf")), u)
        keep = allocate(
            units,
            allocation=ctx.cfg.allocation,
            sparsity=ctx.sparsity,
            ratios=layer_ratios(ctx) if has_ratios(ctx.cfg.allocation) else None,
            unit_sizes=sizes,
            min_keep=self.min_keep_per_layer,
        )
        for name, m in ctx.layers.items():
            apply_mask_(m, expand_units(keep[name], effective_weight(m).shape, gran))
        return build_report(ctx, params_before=params_before, extra=self.extra_report())

    def extra_report(self) -> dict[str, Any]:
        """Diagnostics to put in ``PruneReport.extra`` (set ``self._extra`` while scoring)."""
        return dict(getattr(self, "_extra", {}))


METHODS: Registry[type[PruningMethod]] = Registry("pruning method")


def register_method(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Class decorator: registers a :class:`PruningMethod` subclass under ``name``.

    Raises:
        ValueError: the name is taken, or the class declares an unknown granularity/allocation.
    """

    def deco(cls: type[PruningMethod]) -> type[PruningMethod]:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"@register_method({name!r}) expects a PruningMethod subclass, got {cls!r}")
        bad = [g for g in cls.granularities if g not in GRANULARITIES]
        bad += [a for a in cls.allocations if a not in list_allocations()]
        if bad:
            raise ValueError(f"method {name!r} declares unknown granularity/allocation {bad}")
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def list_methods() -> list[str]:
    """Names of the registered pruning methods, sorted."""
    return METHODS.names()


def get_method(name: str) -> type[PruningMethod]:
    """The method class registered under ``name``.

    Raises:
        ConfigError: unknown name (the message lists ``list_methods()``).
    """
    return METHODS.get(name)


def check_config(cfg: PruneConfig) -> None:
    """``get_method(cfg.method).check(cfg)``: the whole model-free validation of a prune config.

    Raises:
        ConfigError: unknown method (lists ``list_methods()``), or what :meth:`PruningMethod.check`
            finds.
    """
    get_method(cfg.method).check(cfg)
