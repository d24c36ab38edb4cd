"""In-train pruning's learned masks: the straight-through binarization, weight / kernel masks on a
layer, channel masks shared by a coupled channel group, and turning them into fixed masks or
physically removed channels once training is done. (See the package docstring for the method.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError
from ..masks import PRUNABLE_TYPES, MaskParametrization, apply_mask_, weight_param
from ..structured import channel_groups
from ..units import expand_units

__all__ = ["binarize", "FreezableMask", "LayerMask", "GroupMask", "ChannelMember", "MaskedGroup", "check_only_masks",
           "attach_layer_masks_", "attach_channel_masks_", "fix_layer_masks_", "remove_channels_"]


def binarize(logits: torch.Tensor) -> torch.Tensor:
    """``M_b = round(0.5 * tanh(M) + 0.5)`` with a straight-through ``round``.

    The value is exactly 0 or 1 (``M <= 0`` gives 0: ``round`` halves to even); the gradient is
    ``0.5 * (1 - tanh(M)^2)``, the derivative of ``M_norm``.
    """
    m_norm = 0.5 * torch.tanh(logits) + 0.5
    return m_norm + (torch.round(m_norm) - m_norm).detach()


def _unit_shape(weight: torch.Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "weight":
        return tuple(weight.shape)
    if granularity == "kernel":
        return tuple(weight.shape[:2])
    raise ValueError(f"layer masks are weight or kernel masks, got {granularity!r}")


class FreezableMask(nn.Module):
    """Shared freezing logic: ``binary()`` returns the straight-through mask while learning and
    the stored 0/1 ``frozen`` buffer once :meth:`freeze_` ran."""

    mask_logits: nn.Parameter

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("frozen", None)

    def binary(self) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen
        return binarize(self.mask_logits)

    def freeze_(self, binary: torch.Tensor | None = None) -> None:
        """Fixes the mask: ``binary`` (0/1, unit-shaped) or the current binarization."""
        with torch.no_grad():
            b = binarize(self.mask_logits) if binary is None else binary
            self.frozen = b.detach().clone().to(self.mask_logits.dtype)

    @property
    def is_frozen(self) -> bool:
        return self.frozen is not None


class LayerMask(MaskParametrization, FreezableMask):
    """Weight- or kernel-granularity in-train mask on one layer's weight.

    Args:
        weight: the layer's weight (for shape, dtype, device).
        granularity: "weight" (M shaped like W) or "kernel" (``[C_out, C_in/groups]``).
        init: initial logit (1.0: ``M_b = 1``).
    """

    def __init__(self, weight: torch.Tensor, granularity: str, init: float = 1.0) -> None:
        super().__init__()
        self.granularity = granularity
        self.weight_shape = tuple(weight.shape)
        self.mask_logits = nn.Parameter(torch.full(_unit_shape(weight, granularity), float(init),
                                                   dtype=weight.dtype, device=weight.device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * expand_units(self.binary(), w.shape, self.granularity)

    def current_mask(self) -> torch.Tensor:
        with torch.no_grad():
            return expand_units(self.binary().detach(), self.weight_shape, self.granularity)


class GroupMask(FreezableMask):
    """One mask logit per channel of a coupled channel group (shared by the group's members)."""

    def __init__(self, size: int, init: float = 1.0, *, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.mask_logits = nn.Parameter(torch.full((size,), float(init), device=device, dtype=dtype))


class ChannelMember(MaskParametrization):
    """Masks dim 0 of one tensor (a filter bank, a bias, BatchNorm's weight or bias) with a group's
    channel mask: channel ``c`` is multiplied by ``M_b[index[c]]`` (``index[c] = -1``: not in the
    group, kept)."""

    def __init__(self, group: GroupMask, index: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.group = group  # shared submodule: parameters() lists its logits once
        self.register_buffer("index", index.to(torch.long))

    def _channel_mask(self) -> torch.Tensor:
        b = self.group.binary()
        ext = torch.cat([b, b.new_ones(1)])  # slot -1 = "not in the group" = kept
        return ext[cast(torch.Tensor, self.index)]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        m = self._channel_mask()
        return t * m.reshape((-1,) + (1,) * (t.dim() - 1))

    def current_mask(self) -> torch.Tensor:
        with torch.no_grad():
            m = self._channel_mask().detach()
            return m.reshape((-1,) + (1,) * (len(self.shape) - 1)).expand(self.shape).clone()


# ---------------------------------------------------------------------------------------------
# Attaching masks
# ---------------------------------------------------------------------------------------------


def check_only_masks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            plist = [p for ps in m.parametrizations.values() for p in ps]
            if not all(isinstance(p, MaskParametrization) for p in plist):
                raise ConfigError(f"in_train: {name!r} carries a non-mask parametrization (a quantizer?); "
                                  "prune before quantize_")


def attach_layer_masks_(layers: Mapping[str, nn.Module], granularity: str, *, init: float = 1.0
                        ) -> dict[str, LayerMask]:
    """Registers a weight- or kernel-granularity :class:`LayerMask` on each layer's weight."""
    out = {}
    for name, m in layers.items():
        p = LayerMask(weight_param(m), granularity, init)
        parametrize.register_parametrization(m, "weight", p)
        out[name] = p
    return out


@dataclasses.dataclass
class MaskedGroup:
    """A coupled channel group: its TP group, mask, and which tensors / layer ends it touches."""

    tp_group: Any
    mask: GroupMask
    out_members: dict[str, list[tuple[int, int]]]  # layer -> [(output channel, unit)]
    in_members: dict[str, list[tuple[int, int]]]  # layer -> [(input entry, unit)]
    tensors: list[tuple[nn.Module, str]]  # (module, tensor name) carrying a ChannelMember


def attach_channel_masks_(model: nn.Module, layers: Mapping[str, nn.Module], example: torch.Tensor, *,
                          init: float = 1.0) -> list[MaskedGroup]:
    """One :class:`GroupMask` per coupled channel group of ``layers``; masks every member's filters
    and bias and every BatchNorm of the group.

    The model must carry no parametrization (the dependency graph is traced on plain modules).
    """
    dg, groups = channel_groups(model, layers, example)
    if not groups:
        raise ConfigError(f"in_train: no output channel of the prunable layers can be removed in this model "
                          f"(layers: {', '.join(layers)})")
    names = {m: n for n, m in model.named_modules()}
    ref = weight_param(next(iter(layers.values())))
    out: list[MaskedGroup] = []
    for g in groups:
        mask = GroupMask(g.size, init, device=ref.device, dtype=ref.dtype)
        outs: dict[str, list[tuple[int, int]]] = {}
        ins: dict[str, list[tuple[int, int]]] = {}
        chan: dict[nn.Module, dict[int, int]] = {}  # module -> {channel: unit} for masked tensors
        for item in g.group:
            dep, idxs = item.dep, item.idxs
            mod = dep.target.module
            pairs = _pairs(idxs, item)
            if not isinstance(mod, nn.Module):
                continue
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            if isinstance(mod, PRUNABLE_TYPES):
                if is_out:
                    outs.setdefault(names[mod], []).extend(pairs)
                    chan.setdefault(mod, {}).update(pairs)
                elif dg.is_in_channel_pruning_fn(dep.handler):
                    ins.setdefault(names[mod], []).extend(pairs)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
                chan.setdefault(mod, {}).update(pairs)
        tensors: list[tuple[nn.Module, str]] = []
        for mod, mapping in chan.items():
            n_ch = weight_param(mod).shape[0]
            index = torch.full((n_ch,), -1, dtype=torch.long, device=ref.device)
            for c, u in mapping.items():
                index[c] = u
            for tname in ("weight", "bias"):
                if getattr(mod, tname, None) is None:
                    continue
                member = ChannelMember(mask, index, tuple(getattr(mod, tname).shape))
                parametrize.register_parametrization(mod, tname, member)
                tensors.append((mod, tname))
        out.append(MaskedGroup(g.group, mask, {k: _dedup(v) for k, v in outs.items()},
                          {k: _dedup(v) for k, v in ins.items()}, tensors))
    return out


def _pairs(idxs: Any, item: Any) -> list[tuple[int, int]]:
    """``(member index, root index)`` pairs of one group item (plain or hybrid TP indices)."""
    if len(idxs) and hasattr(idxs[0], "root_idx"):
        return [(int(i.idx), int(i.root_idx)) for i in idxs]
    root = getattr(item, "root_idxs", None)
    if root is None:
        raise RuntimeError("Torch-Pruning group item without root indices")
    return [(int(i), int(r)) for i, r in zip(idxs, root)]


def _dedup(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return sorted(set(pairs))


def fix_layer_masks_(layers: Mapping[str, nn.Module], bins: Mapping[str, torch.Tensor],
                     granularity: str) -> None:
    """Replaces each layer's :class:`LayerMask` by the shared fixed :class:`Mask` of its binary
    units ``bins[name]`` (times any earlier mask, so a re-pruned model never revives weights)."""
    for name, b in bins.items():
        m = layers[name]
        learned = expand_units(b, weight_param(m).shape, granularity)
        earlier = _earlier_masks(m)
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        apply_mask_(m, learned * earlier if earlier is not None else learned)


def remove_channels_(groups: list[MaskedGroup], bins: list[torch.Tensor], out_channels: Mapping[str, int]
                     ) -> dict[str, list[int]]:
    """Drops the channel-mask parametrizations, then removes every group's pruned channels
    physically (Torch-Pruning, the same dependency groups the masks were built from).

    Args:
        groups: from :func:`attach_channel_masks_`.
        bins: 0/1 per group unit (1 = keep), in ``groups`` order.
        out_channels: output channels before pruning of the layers to report on.

    Returns:
        ``{layer: original indices of its kept output channels}`` for the layers of ``out_channels``
        whose filters belong to a group.
    """
    for g in groups:
        for mod, tname in g.tensors:
            if parametrize.is_parametrized(mod, tname):
                parametrize.remove_parametrizations(mod, tname, leave_parametrized=False)
    kept: dict[str, list[int]] = {}
    for g, b in zip(groups, bins):
        for name, pairs in g.out_members.items():
            if name in out_channels:
                gone = {c for c, u in pairs if not bool(b[u] > 0)}
                kept[name] = [c for c in range(out_channels[name]) if c not in gone]
        removed = torch.nonzero(b == 0).flatten().tolist()
        if removed:
            g.tp_group.prune(idxs=removed)
    return kept


def _earlier_masks(module: nn.Module) -> torch.Tensor | None:
    """Product of the masks on ``module.weight`` other than in-train's own (a re-pruned model)."""
    plist = cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)["weight"])
    others = [p for p in plist
              if isinstance(p, MaskParametrization) and not isinstance(p, LayerMask)]
    if not others:
        return None
    out = others[0].current_mask().detach()
    for p in others[1:]:
        out = out * p.current_mask().detach()
    return out
