"""The pruning core: masks, the method registry, the method base class, and the report.

Everything a pruning method needs lives here, so a new method is one file with one class:

.. code-block:: python

    from searchprune.prune._base import PruneContext, PruningMethod, register_method

    @register_method("my_criterion")
    class MyCriterion(PruningMethod):
        \"\"\"One line on what is scored; the options it takes.\"\"\"

        granularities = ("weight", "kernel", "channel")
        allocations = ("global", "uniform", "per_layer", "mrs")
        needs_data = False
        default_options = {"power": 1.0}

        def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
            # importance per weight element, shaped like the weight; higher = keep
            return {name: m.weight.detach().abs() ** self.options["power"]
                    for name, m in ctx.layers.items()}

Sparsity semantics
------------------
``PruneConfig.sparsity`` is the fraction of *prunable* weights removed (weights of the conv/linear
layers returned by :func:`prunable_layers`; biases and BatchNorm are never pruned). For
``granularity="kernel"`` whole ``kh x kw`` kernels are removed but the count is still in weights;
for ``granularity="channel"`` it is the fraction of prunable *output channels* removed, and the
channels are removed physically (see ``_structured.py``). ``PruneConfig.compression`` (ShrinkBench's
whole-model ratio c = total / nonzero over all parameters) resolves to
``sparsity = 1 - (total / c - nonprunable) / prunable`` (``_allocation.resolve_sparsity``); with
channel granularity the channel sparsity giving ``total / c`` parameters is found by bisection.

Masks
-----
A mask is a :class:`Mask` parametrization (``torch.nn.utils.parametrize``) on ``weight``, holding a
``mask`` buffer shaped like the weight: ``module.weight`` is always the *effective* (masked)
weight, pruned entries get zero gradient and stay exactly zero through SGD with momentum and
weight decay. Any parametrization of masking kind subclasses :class:`MaskParametrization` (learned
methods such as HYDRA register their own subclass); :func:`fold_masks_` removes all of them,
leaving plain dense weights with zeros.

The method API (stable; learned methods build on it)
----------------------------------------------------
* :class:`PruningMethod` subclasses declare ``granularities``, ``allocations``, ``needs_data``,
  ``needs_threat``, ``default_options`` (unknown option keys raise ``ConfigError``, except keys of
  the allocation or of channel surgery, e.g. mrs's ``r_max`` or ``round_to``; the merged options
  are ``self.options``), and optionally ``target_unit`` ("weights"; "macs" for cost targets),
  ``reduction``, ``normalize_channels``, ``min_keep_per_layer`` and ``select_layers``.
* ``scores(ctx) -> {layer name: tensor shaped like the weight}``: importance per weight element,
  higher = keep. ``unit_scores(ctx, granularity)`` aggregates them per kernel ``(C_out, C_in)`` or
  per output channel ``(C_out,)`` (by default the mean over the unit: the same ranking as the sum
  within a layer, and comparable across layers whose kernels differ in size, e.g. 3x3 convs and
  linear layers under a global threshold; override for criteria whose aggregate is not a mean,
  e.g. LAMP, Taylor).
* ``apply(ctx) -> PruneReport``: the default turns unit scores into masks through the configured
  allocation (``_allocation.allocate``) and granularity, or hands channel granularity to
  ``_structured.prune_channels_``. Learned methods override ``apply`` and finish with
  :func:`build_report`.
* Helpers for method authors: :func:`apply_mask_`, :func:`apply_masks_`, :func:`get_mask`,
  :func:`weight_param`, :func:`effective_weight`, :func:`expand_units`, :func:`reduce_to_units`,
  :func:`build_report`, :func:`count_params`, ``ctx.batches(...)``, ``_allocation.allocate`` /
  ``layer_ratios``, ``_structured.channel_groups`` (coupled channel groups of the dependency graph).

Checkpoints
-----------
A masked model's ``state_dict`` carries ``<layer>.parametrizations.weight.original`` and ``...0.mask``;
a channel-pruned model has smaller tensors. ``_structured.load_pruned_state_dict_(fresh_dense_model,
state_dict)`` (or ``resize_to_state_dict_`` then ``load_state_dict``) rebuilds either from the dense
architecture. :func:`fold_masks_` first gives plain dense tensors with zeros instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._registry import Registry
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import PruneConfig, ThreatModel, TrainConfig

__all__ = [
    "GRANULARITIES", "ALLOCATIONS", "PRUNABLE_TYPES", "METHODS",
    "Mask", "MaskParametrization", "PruneContext", "PruneReport", "PruningMethod",
    "register_method", "list_methods", "get_method", "prune_", "prunable_layers", "is_classifier",
    "apply_mask_", "apply_masks_", "get_mask", "fold_masks_", "restore_masks_", "weight_param",
    "effective_weight",
    "layer_sparsity", "expand_units", "reduce_to_units", "build_report", "count_params",
]

GRANULARITIES = ("weight", "kernel", "channel")
ALLOCATIONS = ("global", "uniform", "mrs", "per_layer", "learned")
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# ---------------------------------------------------------------------------------------------
# Which layers are prunable (ShrinkBench's VisionPruning.can_prune, plus the first-conv switch)
# ---------------------------------------------------------------------------------------------


def is_classifier(module: nn.Module) -> bool:
    """True for the module a model marks with ``is_classifier = True`` (ShrinkBench convention)."""
    return bool(getattr(module, "is_classifier", False))


def prunable_layers(
    model: nn.Module, *, include_classifier: bool = False, include_first: bool = True
) -> dict[str, nn.Module]:
    """The conv/linear layers whose weights may be pruned, in registration order.

    BatchNorm (and every other module type) is never prunable.

    Args:
        model: any module tree.
        include_classifier: keep the module marked ``is_classifier = True`` (HYDRA and LAMP prune
            it; ShrinkBench and GAP do not).
        include_first: keep the first conv/linear layer in registration order (the stem conv of
            every model in ``searchprune.models``).

    Returns:
        ``{qualified name: module}`` for ``nn.Conv1d/2d/3d`` and ``nn.Linear`` modules.
    """
    layers: dict[str, nn.Module] = {}
    first = True
    for name, m in model.named_modules():
        if not isinstance(m, PRUNABLE_TYPES):
            continue
        is_first, first = first, False
        if is_first and not include_first:
            continue
        if is_classifier(m) and not include_classifier:
            continue
        layers[name] = m
    return layers


# ---------------------------------------------------------------------------------------------
# Masks as parametrizations
# ---------------------------------------------------------------------------------------------


class MaskParametrization(nn.Module):
    """Base class of every masking-kind parametrization on ``weight``.

    Subclasses implement ``forward(w) -> w * mask`` and :meth:`current_mask`. :func:`fold_masks_`,
    :func:`get_mask` and the reports recognise masks by this class.
    """

    def current_mask(self) -> torch.Tensor:
        """The 0/1 mask this parametrization applies now, shaped like the weight."""
        raise NotImplementedError


class Mask(MaskParametrization):
    """A fixed 0/1 mask: ``forward(w) = w * mask``.

    Args:
        mask: 0/1 tensor shaped like the weight (stored as a buffer in the weight's dtype, so it
            travels with ``state_dict`` as ``<layer>.parametrizations.weight.<i>.mask``).
    """

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def current_mask(self) -> torch.Tensor:
        return self.mask


def _mask_params(module: nn.Module) -> list[MaskParametrization]:
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return [p for p in _parametrizations(module).weight if isinstance(p, MaskParametrization)]


def weight_param(module: nn.Module) -> nn.Parameter:
    """The trainable tensor behind ``module.weight`` (the parametrization's ``original`` if any).

    Gradients of a criterion are taken w.r.t. this tensor; for masked entries they are zero.
    """
    if parametrize.is_parametrized(module, "weight"):
        return _parametrizations(module).weight.original
    return cast(nn.Parameter, module.weight)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, typed: the effective (masked, quantized) weight of a conv/linear layer."""
    return cast(torch.Tensor, module.weight)


def _parametrizations(module: nn.Module) -> Any:
    """``module.parametrizations`` (a ModuleDict of ParametrizationLists), untyped for mypy."""
    return cast(Any, module).parametrizations


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The product of all masking parametrizations on ``module.weight``, or None if unmasked."""
    masks = _mask_params(module)
    if not masks:
        return None
    out = masks[0].current_mask().detach()
    for p in masks[1:]:
        out = out * p.current_mask().detach()
    return out


def apply_mask_(module: nn.Module, mask: torch.Tensor) -> None:
    """Masks ``module.weight`` in place with a 0/1 (or bool) tensor shaped like the weight.

    Updates the layer's existing :class:`Mask` if it has one, else registers a new one. The
    underlying parameter is zeroed at pruned entries too, so folding or exporting the raw tensor
    gives the same zeros.

    Raises:
        ValueError: the mask's shape differs from the weight's.
    """
    w = weight_param(module)
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}")
    mask = mask.to(device=w.device, dtype=w.dtype)
    existing = [p for p in _mask_params(module) if isinstance(p, Mask)]
    if existing:
        existing[0].mask.copy_(mask)
    else:
        parametrize.register_parametrization(module, "weight", Mask(mask))
        _parametrizations(module).train(module.training)  # new containers default to train mode
    with torch.no_grad():
        weight_param(module).mul_(mask)


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Applies ``{layer name: mask}`` with :func:`apply_mask_`."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        apply_mask_(modules[name], mask)


def fold_masks_(model: nn.Module) -> nn.Module:
    """Removes every masking parametrization, leaving plain weights with zeros (HYDRA's save-dense).

    Non-mask parametrizations on the same weight (e.g. fake quantizers) are kept, re-registered in
    their order on top of the masked weight.

    Returns:
        ``model`` (modified in place).
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plist = list(_parametrizations(module).weight)
        masks = [p for p in plist if isinstance(p, MaskParametrization)]
        if not masks:
            continue
        if len(masks) == len(plist):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            continue
        others = [p for p in plist if not isinstance(p, MaskParametrization)]
        with torch.no_grad():
            masked = _parametrizations(module).weight.original.detach().clone()
            for p in masks:
                masked = p(masked)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            effective_weight(module).copy_(masked)
        for p in others:
            parametrize.register_parametrization(module, "weight", p)
    return model


def restore_masks_(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Registers a :class:`Mask` on every layer whose saved state has one, so ``load_state_dict``
    of a masked checkpoint into a freshly built model works.

    Looks for keys ``<layer>.parametrizations.weight.<i>.mask``; other parametrizations (quantizers,
    learned scores) are their owners' business.

    Returns:
        ``model`` (modified in place).
    """
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) < 4 or parts[-1] != "mask" or parts[-4:-2] != ["parametrizations", "weight"]:
            continue
        name = ".".join(parts[:-4])
        module = modules.get(name)
        if module is None or get_mask(module) is not None:
            continue
        if tuple(weight_param(module).shape) != tuple(value.shape):
            raise ValueError(f"{key}: saved mask shape {tuple(value.shape)} does not match the "
                             f"model's weight {tuple(weight_param(module).shape)}")
        parametrize.register_parametrization(module, "weight", Mask(torch.ones_like(value)))
        _parametrizations(module).train(module.training)
    return model


def layer_sparsity(
    model: nn.Module, layers: Mapping[str, nn.Module] | None = None
) -> dict[str, float]:
    """Fraction of exactly-zero entries of each layer's effective weight.

    Args:
        model: the model.
        layers: the layers to measure; default every conv/linear layer (classifier included).
    """
    if layers is None:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    out = {}
    with torch.no_grad():
        for name, m in layers.items():
            w = effective_weight(m)
            out[name] = float((w == 0).sum().item() / max(1, w.numel()))
    return out


def count_params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters (parametrized weights counted once, at their effective value)."""
    total = 0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if name == "original":  # counted through the owning module's effective weight below
                continue
            total += int((p != 0).sum().item()) if nonzero else p.numel()
        if parametrize.is_parametrized(m):
            for tname in _parametrizations(m):
                t = getattr(m, tname)
                total += int((t != 0).sum().item()) if nonzero else t.numel()
    return total


# ---------------------------------------------------------------------------------------------
# Units: weight / kernel / channel
# ---------------------------------------------------------------------------------------------


def reduce_to_units(score: torch.Tensor, granularity: str, reduction: str = "sum") -> torch.Tensor:
    """Aggregates a per-weight tensor ``(C_out, C_in, *k)`` into pruning units.

    Returns:
        ``score`` itself for "weight"; ``(C_out, C_in)`` (reduced over the kernel's spatial dims)
        for "kernel"; ``(C_out,)`` for "channel".
    """
    if granularity == "weight":
        return score
    if granularity == "kernel":
        flat = score.reshape(score.shape[0], score.shape[1] if score.dim() > 1 else 1, -1)
    elif granularity == "channel":
        flat = score.reshape(score.shape[0], 1, -1)
    else:
        raise ValueError(f"unknown granularity {granularity!r}")
    if reduction == "sum":
        red = flat.sum(-1)
    elif reduction == "l2":
        red = flat.pow(2).sum(-1).sqrt()
    elif reduction == "mean":
        red = flat.mean(-1)
    else:
        raise ValueError(f"unknown reduction {reduction!r}")
    return red if granularity == "kernel" else red[:, 0]


def expand_units(
    keep: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], granularity: str
) -> torch.Tensor:
    """Broadcasts a per-unit keep tensor (see :func:`reduce_to_units`) back to the weight's shape."""
    shape = tuple(weight_shape)
    if granularity == "weight":
        return keep.reshape(shape)
    if granularity == "kernel":
        view = keep.reshape(shape[:2] + (1,) * (len(shape) - 2))
    else:
        view = keep.reshape(shape[:1] + (1,) * (len(shape) - 1))
    return view.expand(shape).clone()


# ---------------------------------------------------------------------------------------------
# Context, report, method base class, registry
# ---------------------------------------------------------------------------------------------


@dataclass
class PruneContext:
    """Everything a method may read while pruning.

    Attributes:
        model: the model being pruned (in place).
        layers: ``{name: module}`` of prunable layers (already filtered by the method's
            ``select_layers``).
        cfg: the prune config.
        input_shape: ``(C, H, W)`` of one input.
        sparsity: the resolved target (fraction of prunable weights, or of prunable output channels
            for channel granularity) for global/uniform/mrs/learned; None for per_layer.
        loader: iterable of ``(x in [0, 1] (B, C, H, W), y (B,))`` batches, or None.
        threat: the study's threat model, or None.
        train_cfg: a training recipe for methods that train (HYDRA, in-train pruning), or None.
        cache_dir: where a method may cache expensive statistics, or None.
        device: the device of the model's parameters.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    cfg: PruneConfig
    input_shape: tuple[int, ...]
    sparsity: float | None
    loader: Any = None
    threat: ThreatModel | None = None
    train_cfg: TrainConfig | None = None
    cache_dir: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def batches(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields up to ``max_batches`` (all if None) ``(x, y)`` batches of ``loader`` on ``device``.

        Raises:
            ConfigError: no loader was given.
        """
        if self.loader is None:
            raise ConfigError(f"prune.method {self.cfg.method!r} scores weights on data: pass a loader")
        for i, (x, y) in enumerate(self.loader):
            if max_batches is not None and i >= max_batches:
                break
            yield x.to(self.device), y.to(self.device)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random input ``(batch, *input_shape)`` in [0, 1] on ``device`` (graph tracing)."""
        return torch.rand((batch, *self.input_shape), device=self.device)


@dataclass
class PruneReport:
    """What ``prune_`` did.

    Attributes:
        method, granularity, allocation: as configured.
        target_sparsity: the resolved target (None for per_layer).
        sparsity: achieved, in the config's units: fraction of prunable weights that are zero
            (weight/kernel), or fraction of prunable output channels removed (channel).
        weight_sparsity: fraction of prunable-layer weights removed or zero, whatever the
            granularity (for channel pruning this counts the weights lost to removed input
            channels too).
        layer_sparsity: ``{layer: achieved}`` in the same units as ``sparsity``.
        structural: True when channels were removed physically (the state_dict changed shape).
        kept_channels: ``{layer: original indices of the kept output channels}`` (channel only).
        params_before, params_after: nonzero parameter counts of the whole model.
        seconds: wall time of ``prune_``.
        extra: method-specific diagnostics (JSON-safe).
    """

    method: str
    granularity: str
    allocation: str
    target_sparsity: float | None
    sparsity: float
    weight_sparsity: float
    layer_sparsity: dict[str, float]
    structural: bool = False
    kept_channels: dict[str, list[int]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data."""
        return dataclasses.asdict(self)


def build_report(
    ctx: PruneContext,
    *,
    params_before: int,
    structural: bool = False,
    kept_channels: Mapping[str, list[int]] | None = None,
    out_channels_before: Mapping[str, int] | None = None,
    weights_before: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PruneReport:
    """Measures the pruned model and fills a :class:`PruneReport`.

    Args:
        ctx: the context the method pruned.
        params_before: ``count_params(model, nonzero=True)`` taken before pruning.
        structural: channels were removed physically; then ``kept_channels`` (original indices of
            kept output channels), ``out_channels_before`` (output channels before pruning, for the
            layers whose channels could be pruned) and ``weights_before`` (every prunable layer's
            weight count before pruning) are required.
        extra: method diagnostics (JSON-safe).
    """
    zero_frac = layer_sparsity(ctx.model, ctx.layers)
    if structural:
        if kept_channels is None or out_channels_before is None or weights_before is None:
            raise ValueError("a structural report needs kept_channels, out_channels_before, weights_before")
        kept_w = sum(int((effective_weight(m) != 0).sum().item()) for m in ctx.layers.values())
        weight_sp = 1.0 - kept_w / max(1, sum(weights_before.values()))
        per_layer = {n: 0.0 for n in ctx.layers}
        for n, before in out_channels_before.items():
            per_layer[n] = 1.0 - len(kept_channels[n]) / before
        kept_total = sum(len(kept_channels[n]) for n in out_channels_before)
        sparsity = 1.0 - kept_total / max(1, sum(out_channels_before.values()))
    else:
        sizes = {n: effective_weight(m).numel() for n, m in ctx.layers.items()}
        zeros = sum(zero_frac[n] * sizes[n] for n in sizes)
        weight_sp = zeros / max(1, sum(sizes.values()))
        per_layer, sparsity = zero_frac, weight_sp
    return PruneReport(
        method=ctx.cfg.method,
        granularity=ctx.cfg.granularity,
        allocation=ctx.cfg.allocation,
        target_sparsity=ctx.sparsity,
        sparsity=float(sparsity),
        weight_sparsity=float(weight_sp),
        layer_sparsity={k: float(v) for k, v in per_layer.items()},
        structural=structural,
        kept_channels={k: [int(i) for i in v] for k, v in (kept_channels or {}).items()},
        params_before=int(params_before),
        params_after=count_params(ctx.model, nonzero=True),
        extra=dict(extra or {}),
    )


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
    reduction: ClassVar[str] = "mean"
    normalize_channels: ClassVar[bool] = True
    min_keep_per_layer: ClassVar[int] = 0
    target_unit: ClassVar[str] = "weights"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            expected = ", ".join(sorted(self.default_options)) or "none"
            raise ConfigError(f"prune.options.{unknown[0]}: unknown option of method {self.name!r}; "
                              f"expected one of: {expected}")
        self.options: dict[str, Any] = {**self.default_options, **options}

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
        from ._allocation import allocate, layer_ratios

        gran = ctx.cfg.granularity
        if gran == "channel":
            from ._structured import prune_channels_

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
            ratios=layer_ratios(ctx) if ctx.cfg.allocation in ("per_layer", "mrs") else None,
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
        bad += [a for a in cls.allocations if a not in ALLOCATIONS]
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


def prune_(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    input_shape: tuple[int, ...],
    loader: Any = None,
    threat: ThreatModel | None = None,
    train_cfg: TrainConfig | None = None,
    cache_dir: Any = None,
) -> PruneReport:
    """Prunes ``model`` in place as ``cfg`` says.

    Sparsity semantics: ``cfg.sparsity`` is the fraction of prunable weights removed (conv/linear
    weights from :func:`prunable_layers`, minus what the method's ``select_layers`` drops; biases and
    BatchNorm are never pruned); with ``granularity="channel"`` it is the fraction of prunable output
    channels removed, physically. ``cfg.compression`` is ShrinkBench's whole-model ratio.

    Args:
        model: the network; weights are masked (weight/kernel) or channels removed (channel).
        cfg: method, granularity, allocation, target, layer selection and method options.
        input_shape: ``(C, H, W)`` of one input (graph tracing for channel pruning, MAC budgets).
        loader: ``(x in [0, 1], y)`` batches, required by data-driven criteria (``needs_data``).
        threat: the study's threat model, required by adversarial criteria (``needs_threat``).
        train_cfg: training recipe for learned methods.
        cache_dir: where methods may cache statistics.

    Returns:
        A :class:`PruneReport` with achieved per-layer and overall sparsity.

    Raises:
        ConfigError: unknown method (lists ``list_methods()``); a granularity or allocation the method
            does not support (names the method, the value and the supported ones); missing loader or
            threat; a bad layer name or compression.
    """
    from ._allocation import allocation_option_keys, resolve_sparsity

    t0 = time.perf_counter()
    method_cls = get_method(cfg.method)
    if cfg.granularity not in method_cls.granularities:
        raise ConfigError(f"prune.granularity: method {cfg.method!r} does not support {cfg.granularity!r}; "
                          f"expected one of: {', '.join(method_cls.granularities)}")
    if cfg.allocation not in method_cls.allocations:
        raise ConfigError(f"prune.allocation: method {cfg.method!r} does not support {cfg.allocation!r}; "
                          f"expected one of: {', '.join(method_cls.allocations)}")
    # options of the allocation (e.g. mrs's r_max) travel in the same mapping; the method sees its own
    alloc_keys = allocation_option_keys(cfg.allocation, cfg.granularity)
    method = method_cls({k: v for k, v in cfg.options.items()
                         if k in method_cls.default_options or k not in alloc_keys})
    if method_cls.needs_data and loader is None:
        raise ConfigError(f"prune.method: {cfg.method!r} scores weights on data; pass loader=")
    if method_cls.needs_threat and threat is None:
        raise ConfigError(f"prune.method: {cfg.method!r} attacks the model while scoring; pass threat=")
    layers = method.select_layers(prunable_layers(
        model, include_classifier=cfg.include_classifier, include_first=cfg.include_first))
    if not layers:
        raise ConfigError(f"prune: the model has no prunable layer for method {cfg.method!r} "
                          f"(include_classifier={cfg.include_classifier}, include_first={cfg.include_first})")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    ctx = PruneContext(
        model=model, layers=layers, cfg=cfg, input_shape=tuple(input_shape),
        sparsity=resolve_sparsity(model, cfg, layers), loader=loader, threat=threat,
        train_cfg=train_cfg, cache_dir=cache_dir, device=device,
    )
    report = method.apply(ctx)
    report.seconds = time.perf_counter() - t0
    return report
