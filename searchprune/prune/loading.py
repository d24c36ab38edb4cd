"""Loading pruned checkpoints into a freshly built dense model: masked (``Mask`` parametrizations),
channel-pruned (smaller tensors), or both."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .masks import restore_masks_, weight_param

__all__ = ["resize_to_state_dict_", "load_pruned_state_dict_"]


def resize_to_state_dict_(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Reshapes a freshly built dense model so a pruned ``state_dict`` loads into it.

    Every parameter or buffer whose saved shape differs is replaced by an uninitialized tensor of the
    saved shape, then conv/linear/BatchNorm attributes are made consistent (``in/out_channels``,
    ``groups`` of depthwise convs, ``in/out_features``, ``num_features``). Layers saved with a
    :class:`~.masks.Mask` (``<layer>.parametrizations.weight.<i>.mask``) get one registered, so masked
    checkpoints load too. Values are not loaded: call ``model.load_state_dict(state_dict)``
    afterwards (or use :func:`load_pruned_state_dict_`).

    Returns:
        ``model`` (modified in place).
    """
    modules = dict(model.named_modules())
    # remember which convs were depthwise-like (groups == in_channels > 1) before resizing
    depthwise = {n: m.out_channels // m.groups for n, m in modules.items()
                 if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels}
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for kind in ("_parameters", "_buffers"):
            table = getattr(module, kind)
            for pname, t in list(table.items()):
                if t is None:
                    continue
                key = prefix + pname
                original_key = prefix + "parametrizations.weight.original"
                if key not in state_dict and pname == "weight" and original_key in state_dict:
                    key = original_key
                saved = state_dict.get(key)
                if saved is None or tuple(saved.shape) == tuple(t.shape):
                    continue
                new = torch.empty(saved.shape, dtype=t.dtype, device=t.device)
                is_param = kind == "_parameters"
                table[pname] = nn.Parameter(new, requires_grad=t.requires_grad) if is_param else new
    for name, m in modules.items():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = weight_param(m)
            if m.transposed:
                raise ValueError(f"{name}: resizing transposed convolutions is not supported")
            m.out_channels = w.shape[0]
            if name in depthwise:
                m.groups = m.out_channels // depthwise[name]
                m.in_channels = m.groups
            else:
                m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            w = weight_param(m)
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None:
            m.num_features = m.weight.shape[0]
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            m.num_features = m.running_mean.shape[0]
    restore_masks_(model, state_dict)
    return model


def load_pruned_state_dict_(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> nn.Module:
    """Loads a pruned checkpoint (masked, structurally pruned, or both) into a fresh dense model:
    :func:`resize_to_state_dict_` (which also restores masks), then ``load_state_dict``.

    Returns:
        ``model`` (modified in place).
    """
    resize_to_state_dict_(model, state_dict)
    model.load_state_dict(state_dict, strict=strict)
    return model
