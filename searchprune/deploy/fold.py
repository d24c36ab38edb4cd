"""Batch norm folded into the layer before it, for inference.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma +
beta``; when ``x`` is the output of a conv (or of a linear layer feeding a ``BatchNorm1d``) and
nothing else reads that output, the map goes into the layer's weight and bias
(``W' = W * s`` per output channel, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``)
and the BatchNorm becomes ``nn.Identity``. The model keeps its class, forward and module names, so
physically (channel-) pruned models fold the same way as dense ones.

Pairs are found on a ``torch.fx`` trace (the conv's output must have the BatchNorm as its only
user, and each module must be called once); a model that does not trace falls back to pairs
adjacent in an ``nn.Sequential``, which are safe by construction. Parametrizations (pruning
masks, weight fake quantizers) are folded into plain weights first: a deployed model has no
training state, and a fake quantizer's per-channel grid scaled per channel is still a grid.

Example:
    >>> model = create_model("resnet20", num_classes=10).eval()
    >>> folded = fold_bn_(copy.deepcopy(model))
    >>> torch.allclose(folded(x), model(x), atol=1e-5)
    True
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..quantize import fold_parametrizations_

__all__ = ["fold_bn_", "bn_pairs", "fold_bn_into_"]

_BN = nn.modules.batchnorm._BatchNorm
_CONV = nn.modules.conv._ConvNd


def _foldable_bn(bn: nn.Module) -> bool:
    """Eval BatchNorm with running statistics (no batch statistics at inference)."""
    return (isinstance(bn, _BN) and bn.track_running_stats and bn.running_mean is not None
            and bn.running_var is not None)


def _compatible(layer: nn.Module, bn: nn.Module) -> bool:
    if isinstance(layer, _CONV):
        return not layer.transposed and layer.out_channels == bn.num_features
    if isinstance(layer, nn.Linear):  # BatchNorm1d on (B, F): F = out_features
        return isinstance(bn, nn.BatchNorm1d) and layer.out_features == bn.num_features
    return False


def bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, batchnorm name)`` pairs that can be folded, in graph order.

    Args:
        model: an ``nn.Module`` without parametrizations (tracing goes through them otherwise).
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable forward: only what nn.Sequential guarantees
        return _sequential_pairs(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_bn(modules[str(node.target)]):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer_name, bn_name = str(src.target), str(node.target)
        if calls[layer_name] == 1 and calls[bn_name] == 1 and _compatible(modules[layer_name], modules[bn_name]):
            pairs.append((layer_name, bn_name))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        kids = list(m.named_children())
        for (a_name, a), (b_name, b) in zip(kids, kids[1:]):
            if _foldable_bn(b) and _compatible(a, b):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


@torch.no_grad()
def fold_bn_into_(layer: nn.Module, bn: nn.Module) -> None:
    """Folds ``bn`` (eval statistics) into ``layer``'s weight and bias, in place; computed in float64.

    Args:
        layer: a conv or linear layer with a plain (unparametrized) weight.
        bn: the BatchNorm that reads ``layer``'s output.
    """
    assert isinstance(layer, _CONV | nn.Linear) and isinstance(bn, _BN)
    assert bn.running_mean is not None and bn.running_var is not None
    w = cast(torch.Tensor, layer.weight)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)  # (C_out,)
    old_bias = cast(torch.Tensor | None, layer.bias)
    bias = old_bias.double() if old_bias is not None else torch.zeros_like(mean)
    new_w = w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = (bias - mean) * scale + beta
    # keep the weight's memory format (channels_last stays channels_last)
    w.copy_(new_w.to(w.dtype))
    if old_bias is None:
        layer.bias = nn.Parameter(new_b.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)
    else:
        old_bias.copy_(new_b.to(old_bias.dtype))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_bn_(model: nn.Module) -> nn.Module:
    """Folds every foldable BatchNorm into the conv / linear layer before it, in place.

    Parametrizations are folded first (:func:`searchprune.quantize.fold_parametrizations_`), so
    pruning masks stay zeros and fake-quantized weights keep their rounded values. The model is put
    in eval mode: a folded model has no batch statistics to train. BatchNorms that read anything
    other than a single conv / linear output (e.g. pre-activation blocks) are left in place.

    Returns:
        ``model``, with ``model.folded_bn`` listing the ``(layer, batchnorm)`` names folded.
    """
    fold_parametrizations_(model)
    model.eval()
    modules = dict(model.named_modules())
    pairs = bn_pairs(model)
    for layer_name, bn_name in pairs:
        fold_bn_into_(modules[layer_name], modules[bn_name])
        _set_submodule(model, bn_name, nn.Identity())
    setattr(model, "folded_bn", list(pairs))  # a plain attribute, not a tensor or module
    return model
