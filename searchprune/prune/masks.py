"""Which layers are prunable, and masks as ``torch.nn.utils.parametrize`` parametrizations.

A mask is a :class:`Mask` parametrization on ``weight``, holding a ``mask`` buffer shaped like the
weight: ``module.weight`` is always the *effective* (masked) weight, pruned entries get zero
gradient and stay exactly zero through SGD with momentum and weight decay. Any parametrization of
masking kind subclasses :class:`MaskParametrization` (learned methods such as HYDRA register their
own subclass); :func:`fold_masks_` removes all of them, leaving plain dense weights with zeros.

A masked model's ``state_dict`` carries ``<layer>.parametrizations.weight.original`` and
``...0.mask``; :func:`restore_masks_` registers the masks on a freshly built model so it loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "PRUNABLE_TYPES", "is_classifier", "prunable_layers", "MaskParametrization", "Mask", "mask_parametrizations",
    "parametrizations_of", "weight_param", "effective_weight", "get_mask", "apply_mask_", "apply_masks_",
    "fold_masks_", "restore_masks_", "layer_sparsity",
]

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


def mask_parametrizations(module: nn.Module) -> list[MaskParametrization]:
    """The masking-kind parametrizations on ``module.weight``, in order (empty if none)."""
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return [p for p in parametrizations_of(module).weight if isinstance(p, MaskParametrization)]


def weight_param(module: nn.Module) -> nn.Parameter:
    """The trainable tensor behind ``module.weight`` (the parametrization's ``original`` if any).

    Gradients of a criterion are taken w.r.t. this tensor; for masked entries they are zero.
    """
    if parametrize.is_parametrized(module, "weight"):
        return parametrizations_of(module).weight.original
    return cast(nn.Parameter, module.weight)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, typed: the effective (masked, quantized) weight of a conv/linear layer."""
    return cast(torch.Tensor, module.weight)


def parametrizations_of(module: nn.Module) -> Any:
    """``module.parametrizations`` (a ModuleDict of ParametrizationLists), untyped for mypy."""
    return cast(Any, module).parametrizations


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The product of all masking parametrizations on ``module.weight``, or None if unmasked."""
    masks = mask_parametrizations(module)
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
    existing = [p for p in mask_parametrizations(module) if isinstance(p, Mask)]
    if existing:
        existing[0].mask.copy_(mask)
    else:
        parametrize.register_parametrization(module, "weight", Mask(mask))
        parametrizations_of(module).train(module.training)  # new containers default to train mode
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
        plist = list(parametrizations_of(module).weight)
        masks = [p for p in plist if isinstance(p, MaskParametrization)]
        if not masks:
            continue
        if len(masks) == len(plist):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            continue
        others = [p for p in plist if not isinstance(p, MaskParametrization)]
        with torch.no_grad():
            masked = parametrizations_of(module).weight.original.detach().clone()
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
        parametrizations_of(module).train(module.training)
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
