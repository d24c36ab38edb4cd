"""``quantize_`` and the switches around it: calibration, STE vs hard rounding, removal."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import QuantConfig
from ..errors import ConfigError
from ._fake import ActFakeQuant, WeightFakeQuant, _RangeObserver

__all__ = [
    "CalibBatch", "QUANTIZABLE", "quantizable_layers", "quantize_", "calibrate_", "set_ste_", "hard_rounding",
    "dequantize_", "is_quantized", "layer_bitwidths",
]

# The layers whose weights (and inputs) are quantized: the layers whose MACs we count.
QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

FilterFn = Callable[[nn.Module, str], bool]
# a calibration batch: the inputs alone, or an (x, y, ...) tuple/list whose first entry is the input
CalibBatch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers by name (as in ``model.named_modules()``), in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    """``module.parametrizations`` (tensor name -> ParametrizationList), typed."""
    return cast(nn.ModuleDict, module.parametrizations)


def _weight_plist(module: nn.Module) -> parametrize.ParametrizationList:
    return cast(parametrize.ParametrizationList, _parametrizations(module)["weight"])


def _weight(module: nn.Module) -> torch.Tensor:
    """The effective weight (all parametrizations applied)."""
    return cast(torch.Tensor, module.weight)


def _weight_quantizer(module: nn.Module) -> WeightFakeQuant | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in _weight_plist(module) if isinstance(p, WeightFakeQuant)), None)


def _act_quant_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: fake-quantizes the first positional input of a conv / linear layer."""
    quant = getattr(module, "act_quant", None)
    if quant is None or not args:
        return None
    return (quant(args[0]), *args[1:])


def is_quantized(module: nn.Module) -> bool:
    """True when ``module`` (or any submodule) carries a weight or activation fake quantizer."""
    return any(_weight_quantizer(m) is not None or isinstance(m, ActFakeQuant) for m in module.modules())


def layer_bitwidths(model: nn.Module) -> dict[str, tuple[int, int | None]]:
    """``{layer name: (weight bits, activation bits or None)}`` of the quantized layers."""
    return {name: (int(getattr(m, "weight_bits")), getattr(m, "act_bits", None))
            for name, m in quantizable_layers(model).items() if hasattr(m, "weight_bits")}


def quantize_(model: nn.Module, cfg: QuantConfig, *, calib_loader: Iterable[CalibBatch] | None = None,
              filter_fn: FilterFn | None = None) -> nn.Module:
    """Inserts fake quantizers into every conv and linear layer, in place (torchao's verb).

    Weights get a :class:`WeightFakeQuant` parametrization (``cfg.weight_bits``, or
    ``cfg.layer_bits[name]``), registered *after* any existing parametrization such as a pruning
    mask, so it quantizes the masked weight and ``module.weight`` is the effective weight. With
    ``cfg.act_bits``, each layer also gets ``layer.act_quant`` (:class:`ActFakeQuant`) run on its
    input by a forward pre-hook, calibrated on ``cfg.calib_batches`` batches of ``calib_loader``.
    Layer names do not change. Each quantized layer records ``weight_bits`` and ``act_bits``
    (None = float inputs) as attributes, which :func:`count_bitops` reads.

    Modes: ``"none"`` returns the model untouched; ``"ptq"`` and ``"qat"`` insert and calibrate
    the same quantizers. For QAT the caller then fine-tunes: gradients reach the weights through
    the straight-through estimator. Activation ranges stay fixed while fine-tuning; call
    :func:`calibrate_` again afterwards to refit them.

    Without ``calib_loader`` the activation quantizers are left uncalibrated and refuse to run
    until a calibrated ``state_dict`` is loaded: this is how a saved quantized model is rebuilt
    (``quantize_(fresh, cfg)`` then ``fresh.load_state_dict(saved)`` reproduces it exactly).

    Quantize *after* pruning: a mask registered later would act on the quantized weight.

    Args:
        model: the model, modified in place.
        cfg: bitwidths, granularity and calibration settings.
        calib_loader: iterable of ``(x in [0, 1], y)`` batches for the activation ranges.
        filter_fn: ``filter_fn(module, name) -> bool`` picks the layers to quantize (default: all
            conv and linear layers).

    Returns:
        ``model``.

    Raises:
        ConfigError: ``cfg.layer_bits`` names a layer that is not a quantized conv / linear layer
            (the message lists the valid names), the model has no such layer, or it is already
            quantized.

    Example:
        >>> quantize_(model, QuantConfig(mode="ptq", weight_bits=4, act_bits=8), calib_loader=train)
        >>> count_bitops(model, (1, 28, 28))
    """
    if cfg.mode == "none":
        return model
    layers = {n: m for n, m in quantizable_layers(model).items() if filter_fn is None or filter_fn(m, n)}
    if not layers:
        raise ConfigError("quant: the model has no conv or linear layer to quantize")
    unknown = sorted(set(cfg.layer_bits or {}) - set(layers))
    if unknown:
        raise ConfigError(
            f"quant.layer_bits.{unknown[0]}: not a quantized conv/linear layer of this model; "
            f"expected one of: {', '.join(layers)}"
        )
    if is_quantized(model):
        raise ConfigError("quant: the model is already quantized; call dequantize_ first to requantize")

    per_channel = cfg.weight_granularity == "per_channel"
    for name, module in layers.items():
        bits = int((cfg.layer_bits or {}).get(name, cfg.weight_bits))
        # appended after existing parametrizations (pruning masks): quantizes the masked weight
        parametrize.register_parametrization(module, "weight", WeightFakeQuant(bits, per_channel=per_channel))
        setattr(module, "weight_bits", bits)  # a plain attribute: count_bitops reads it
        setattr(module, "act_bits", cfg.act_bits)
        if cfg.act_bits is not None:
            device = _weight_plist(module).original.device
            module.act_quant = ActFakeQuant(cfg.act_bits).to(device)
            module.register_forward_pre_hook(_act_quant_hook)

    if cfg.act_bits is not None and calib_loader is not None:
        calibrate_(model, calib_loader, num_batches=cfg.calib_batches, method=cfg.calibration,
                   percentile=cfg.percentile)
    return model


def calibrate_(model: nn.Module, loader: Iterable[CalibBatch], *, num_batches: int = 4, method: str = "minmax",
               percentile: float = 99.99) -> nn.Module:
    """Sets every activation quantizer's range from ``num_batches`` batches of ``loader``.

    The model runs in eval mode (BatchNorm statistics untouched) under ``no_grad``, with every
    quantizer passing its float input through while it observes it, as torch's observers do.
    The same batches give the same ranges.

    Args:
        model: a model with activation quantizers (``quantize_`` with ``act_bits``).
        loader: iterable of ``(x, y)`` or ``x`` batches; ``x`` is moved to the model's device.
        num_batches: batches to use (fewer if the loader ends first).
        method: "minmax" (extremes over all batches) or "percentile" (the ``percentile``-th and
            ``100 - percentile``-th percentiles per batch, averaged over batches).
        percentile: in (50, 100].

    Raises:
        ConfigError: no activation quantizer, a bad method or percentile, or an empty loader.
    """
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    if not quants:
        raise ConfigError("calibration: the model has no activation quantizers (quantize_ with act_bits set)")
    if method not in ("minmax", "percentile"):
        raise ConfigError(f"quant.calibration: expected 'minmax' or 'percentile', got {method!r}")
    if not 50 < percentile <= 100:
        raise ConfigError(f"quant.percentile: expected in (50, 100], got {percentile}")
    if num_batches < 1:
        raise ConfigError(f"quant.calib_batches: expected >= 1, got {num_batches}")
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    for q in quants:
        q._observer = _RangeObserver(method, percentile)
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, tuple | list) else batch
                model(x.to(device))
                seen += 1
                if seen >= num_batches:
                    break
        if seen == 0:
            raise ConfigError("calibration: the calibration loader yielded no batches")
        for q in quants:
            rng = q._observer.result() if q._observer is not None else None
            if rng is not None:  # a layer the forward pass never reached stays uncalibrated
                q.set_range_(*rng)
    finally:
        for q in quants:
            q._observer = None
        for m, training in modes:
            m.training = training
    return model


def _quantizers(model: nn.Module) -> Iterator[WeightFakeQuant | ActFakeQuant]:
    for m in model.modules():
        if isinstance(m, WeightFakeQuant | ActFakeQuant):
            yield m


def set_ste_(model: nn.Module, enabled: bool) -> nn.Module:
    """Switches every fake quantizer between the straight-through estimator and hard rounding.

    ``enabled=True`` (the default state): backward treats rounding as the identity (clipped to
    the range for activations), which is what QAT and a BPDA attack need. ``False``: the true
    gradient of the rounded function, zero almost everywhere; forward values are unchanged.
    """
    for q in _quantizers(model):
        q.ste = bool(enabled)
    return model


@contextmanager
def hard_rounding(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: hard rounding (no STE) inside, each quantizer's previous mode restored after.

    Example:
        >>> with hard_rounding(model):  # what a naive attack on the deployed model sees
        ...     x_adv = pgd(model, x, y, eps=0.1, alpha=0.01, steps=10)
    """
    saved = [(q, q.ste) for q in _quantizers(model)]
    set_ste_(model, False)
    try:
        yield model
    finally:
        for q, ste in saved:
            q.ste = ste


@contextmanager
def _act_quant_bypassed(model: nn.Module) -> Iterator[None]:
    """Lets activation quantizers pass inputs through (even uncalibrated): for shape-only passes."""
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    saved = [q._bypass for q in quants]
    for q in quants:
        q._bypass = True
    try:
        yield
    finally:
        for q, b in zip(quants, saved):
            q._bypass = b


def _own_class_(module: nn.Module) -> None:
    """Gives a parametrized module a class of its own before a parametrization is removed.

    ``copy.deepcopy`` of a parametrized module shares its generated ``Parametrized<X>`` class,
    which holds the ``weight`` property; ``remove_parametrizations`` deletes that property from
    the class, silently breaking every copy (torch 2.13). A private class makes removal local.
    """
    cls = type(module)
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def dequantize_(model: nn.Module) -> nn.Module:
    """Removes every fake quantizer, in place; other parametrizations (pruning masks) stay.

    Weights return to their float values (the quantizer never changed the stored original).
    """
    for module in quantizable_layers(model).values():
        if _weight_quantizer(module) is not None:
            others = [p for p in _weight_plist(module) if not isinstance(p, WeightFakeQuant)]
            _own_class_(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            for p in others:  # re-register the masks, in their order, on the original weight
                parametrize.register_parametrization(module, "weight", p)
        if isinstance(getattr(module, "act_quant", None), ActFakeQuant):
            del module.act_quant
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _act_quant_hook:
                del module._forward_pre_hooks[key]
        for attr in ("weight_bits", "act_bits"):
            if attr in module.__dict__:
                delattr(module, attr)
    return model
