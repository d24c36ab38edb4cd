"""The deployable form of a trained (pruned, quantized) model: what an export ships and what is timed.

:func:`deployable` returns a copy of the model that computes the same function faster:

* masks and fake quantizers folded into plain weights (no parametrization runs per forward);
* BatchNorm folded into the preceding conv / linear layer (:func:`~.fold.fold_bn_`), and activations
  whose input nobody else reads run in place (:func:`inplace_activations_`);
* int8 kernels through ``torch.ao`` (:func:`searchprune.quantize.to_int8`) when every conv / linear
  weight is 8-bit and the model runs on the CPU (torch.ao's int8 kernels are CPU kernels); other bit
  widths have no kernels here and run as float with the rounded weights (an emulation, stated as such);
* channels_last (NHWC) memory format where it measurably helps: with ``channels_last="auto"`` both
  layouts are timed on the example batch and the faster one is kept; the decision is cached by the
  model's shape signature, so a study decides once per distinct shape.

Physically pruned channels are already gone from the weights' shapes; to keep channel counts on a
multiple of the CPU kernels' block size, prune with ``PruneConfig(options={"round_to": 8})`` (the
structured pruner keeps the nearest multiple) or pad an exported model with :func:`~.rounding.round_channels_`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..quantize import to_int8
from . import _measure
from ._measure import DEFAULT_CACHE, LatencyCache, model_device, resolve_bits, signature_key
from .fold import fold_bn_

__all__ = ["DeployInfo", "deployable", "channels_last_input", "inplace_activations_"]

ChannelsLast = bool | Literal["auto"]


@dataclass(frozen=True)
class DeployInfo:
    """How a deployable form was made (``model.deploy_info``).

    Attributes:
        weight_bits: uniform weight bit width (32 float, None mixed precision).
        int8: runs torch.ao int8 kernels.
        channels_last: NHWC memory format (inputs are converted on entry).
        folded_bn: ``(layer, batchnorm)`` names folded (empty for the int8 form, where torch.ao fuses them).
        channels_last_ms: ``(NCHW ms, NHWC ms)`` measured for the ``"auto"`` decision, else None.
    """

    weight_bits: int | None
    int8: bool
    channels_last: bool
    folded_bn: tuple[tuple[str, str], ...]
    channels_last_ms: tuple[float, float] | None = None


def channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: hands a 4-D input on in channels_last memory format."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _to_channels_last(model: nn.Module) -> nn.Module:
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # 4-D weights; int8 packed weights are NHWC already
    model.register_forward_pre_hook(channels_last_input)
    return model


_FRESH_MODULES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
_INPLACE_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU)


def inplace_activations_(model: nn.Module) -> list[str]:
    """Makes activations whose input nobody else reads run in place (one tensor less per layer).

    Safe by construction on a ``torch.fx`` trace: the activation module is called once, its input
    comes (through single-use ``nn.Identity`` calls, e.g. folded BatchNorms) from a conv, linear,
    BatchNorm or an addition, which produce a fresh tensor, and that tensor has no other reader.
    An untraceable model is left unchanged.

    Returns:
        The names of the activations switched to in place.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable forward: no proof that the input is not read again
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1

    def fresh(node: object) -> bool:
        while isinstance(node, torch.fx.Node) and len(node.users) == 1:
            if node.op == "call_function":
                return node.target in (operator.add, torch.add) and not node.kwargs
            if node.op != "call_module":
                return False
            mod = modules[str(node.target)]
            if isinstance(mod, _FRESH_MODULES):
                return True
            if not isinstance(mod, nn.Identity) or not node.args:
                return False
            node = node.args[0]
        return False

    done = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] != 1 or not node.args:
            continue
        mod = modules[str(node.target)]
        if isinstance(mod, _INPLACE_ACTS) and hasattr(mod, "inplace") and fresh(node.args[0]):
            mod.inplace = True
            done.append(str(node.target))
    return done


def deployable(
    model: nn.Module,
    *,
    quant_bits: int | None = None,
    example_input: torch.Tensor,
    channels_last: ChannelsLast = "auto",
    calib_loader: Iterable[Any] | None = None,
    calib_batches: int = 4,
    repeats: int = 5,
    cache: LatencyCache | None = None,
) -> nn.Module:
    """The deployable form of ``model`` (a copy; ``model`` is not changed).

    Args:
        model: a float, masked, channel-pruned and/or fake-quantized model.
        quant_bits: its weight bit width (None: read from its quantizers; see
            :func:`~._measure.resolve_bits`). 8 exports int8 kernels on the CPU.
        example_input: an input batch on the model's device (``[0, 1]`` images); it calibrates the
            int8 form when ``calib_loader`` is None, and is the batch timed for ``channels_last="auto"``.
        channels_last: True, False, or "auto" (time both layouts, keep the faster one, cached).
        calib_loader: ``(x, y)`` batches for the int8 activation ranges (use the training data
            and ``QuantConfig.calib_batches`` to reproduce the fake-quant model's ranges).
        calib_batches: batches of ``calib_loader`` used.
        repeats: timed forwards per layout for the "auto" decision.
        cache: where the "auto" decision is cached (default: the process-wide cache).

    Returns:
        An eval-mode ``nn.Module`` (a ``torch.fx.GraphModule`` for int8) with ``deploy_info``
        (:class:`DeployInfo`).

    Raises:
        ConfigError: ``channels_last`` or ``quant_bits`` is invalid, or the int8 export fails.
    """
    if channels_last not in (True, False, "auto"):
        raise ConfigError(f"channels_last: expected True, False or 'auto', got {channels_last!r}")
    bits = resolve_bits(model, quant_bits)
    device = model_device(model)
    cache = cache if cache is not None else DEFAULT_CACHE
    key = None
    if channels_last == "auto":
        key, sig = signature_key("channels_last", model, example_input, batch=int(example_input.shape[0]),
                                 bits=bits)
    int8 = bits == 8 and device.type == "cpu"
    with torch.no_grad():
        if int8:
            batches = calib_loader if calib_loader is not None else [(example_input,)]
            base = to_int8(model, batches, num_batches=calib_batches)
            folded: tuple[tuple[str, str], ...] = ()
        else:
            base = fold_bn_(copy.deepcopy(model))
            folded = tuple(getattr(base, "folded_bn"))
            inplace_activations_(base)
    use_cl, measured = bool(channels_last), None
    if channels_last == "auto":
        assert key is not None
        hit = cache.get(key)
        if hit is not None:
            use_cl, measured = bool(hit["channels_last"]), tuple(hit["ms"])
        elif example_input.dim() != 4:
            use_cl = False
        else:
            nhwc = _to_channels_last(copy.deepcopy(base))
            x = example_input.to(device)
            ms_nchw = _measure.median_ms(base, x, repeats=repeats, warmup=2)
            ms_nhwc = _measure.median_ms(nhwc, x, repeats=repeats, warmup=2)
            use_cl, measured = ms_nhwc < ms_nchw, (ms_nchw, ms_nhwc)
            cache.put(key, {"channels_last": use_cl, "ms": list(measured)}, sig)
    out = _to_channels_last(base) if use_cl else base
    out.eval()
    info = DeployInfo(weight_bits=bits, int8=int8, channels_last=use_cl, folded_bn=folded,
                      channels_last_ms=measured)
    setattr(out, "deploy_info", info)  # a plain attribute (torch.save pickles it with the module)
    return out

