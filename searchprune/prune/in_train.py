"""In-train pruning (Vemparala et al., CVPR-W SAIAD 2021): binary masks learned jointly with the
weights under a robust loss plus a hardware-cost penalty.

Method (``shared/seeds/002``; ``shared/reference/methods.md`` C):

* every pruning unit has a continuous mask logit ``M``; the forward pass uses
  ``W * expand(M_b)`` with ``M_b = round(0.5 * tanh(M) + 0.5)``; the backward pass treats ``round``
  as the identity (straight-through), so ``dL/dM = dL/dM_b * 0.5 * (1 - tanh(M)^2)`` (Eq. 5/6);
* units: ``weight`` (M shaped like W), ``kernel`` (``[C_out, C_in]``, broadcast over the kernel) or
  ``channel`` (one mask per output channel; see below);
* masks start at ``M = 1`` (``M_b = 1``, nothing pruned: Alg. 1 line 1) and are weight-decayed with
  the weights (the paper's ``L_reg``): they are ordinary parameters of ``train_``'s optimizer;
* loss = robust loss (FastAT by default, the paper's) ``+ lam * L_HW`` with
  ``L_HW = max(sum_l psi_l / sum_l psi_l^0 - psi*, 0)`` (Eq. 3), ``psi_l`` the layer's MACs (or
  parameters) under the current binary masks (Eq. 4); the penalty acts between the fractions
  ``prune_start`` and ``prune_end`` of training (the paper: epochs 20 and 240 of 300), after which
  the masks are frozen and the weights keep training.

Cost model. ``psi`` sums over *every* conv / linear layer of the model (non-prunable ones are
constant), so ``psi / psi^0`` is exactly ``count_macs / count_dense_macs`` of the pruned model.
Weight / kernel masks: ``psi_l = out_positions_l x kept weights``. Channel masks are one mask per
*coupled channel group* of Torch-Pruning's dependency graph (``_structured.channel_groups``: a
conv's filters with its BatchNorm and, in residual networks, every conv writing into the same sum),
so the channels can be removed physically afterwards; the mask multiplies each member's filters,
bias and BatchNorm affine parameters, so a masked channel outputs exactly zero, as if removed. The
cost credits both ends, as the paper's ``mu_l`` and ``mu_{l+1}``:
``psi_l = out_positions x kh x kw x kept_out_l x kept_in_l``, where ``kept_in_l`` counts the input
channels (or, after a flatten, input features) of layer ``l`` that the graph ties to pruned
channels of its producers. That holds for any graph Torch-Pruning traces (sequential, residual,
flatten into a linear layer); grouped / depthwise convs get no input-side credit.

Penalty weight. A fixed ``lam`` (option) is the paper's. By default the weight is adaptive: it
starts at 1/100 of :func:`lam_auto` (the weight at which the penalty alone would carry an average
mask across the boundary by mid-window) and grows geometrically while the cost is above the target
(reaching 100x that at the window's end if it must), so a run of any length reaches the target; a
unit's logit falls only while ``lam x (its cost share)`` beats the robust loss's pull on it, so
given enough steps units go in order of importance per unit of cost (in runs of a few hundred
steps a layer's masks still tend to cross together: see the fit below).

Freezing. The masks freeze at the first step within the target (the paper stops mask training once
``L_HW = 0``), at ``prune_end`` at the latest; the weights then keep training with the final masks.
At that moment the binary masks are fitted to the target: every mask tensor (a layer, or a channel
group) keeps the fraction ``f + delta`` of its units, ``f`` its trained fraction and ``delta`` one
shift for all, the units with the highest logits (ties by weight magnitude) kept within each
tensor, then single units top it up. Kept units go while the cost is above the target
(``enforce_target``); pruned units come back while it stays within (``fill_target``): the hinge
overshoots, and in short runs a whole layer's masks cross together (they share one cost share),
which leaves logits comparable within a layer but not across layers. So the achieved ratio never
exceeds the target and falls short of it by about one unit's cost. Both False gives the paper's raw
binarization.

After training the binary masks become the shared fixed :class:`Mask` (weight, kernel), or the
pruned channels are removed physically through the same dependency groups (channel; every group
keeps at least one channel).

Target units. ``sparsity`` here is ``1 - (fraction of the model's MACs kept)`` (or of its conv /
linear parameters with ``cost="params"``), not the fraction of prunable weights or channels the
other methods remove: ``InTrain.target_unit`` says so, and ``PruneReport.sparsity`` still reports
the achieved weight (or channel) sparsity, with the achieved cost ratio in ``extra["ratio_final"]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ._base import (
    PRUNABLE_TYPES,
    MaskParametrization,
    PruneContext,
    PruneReport,
    PruningMethod,
    apply_mask_,
    build_report,
    count_params,
    expand_units,
    fold_masks_,
    reduce_to_units,
    register_method,
    weight_param,
)

__all__ = ["binarize", "LayerMask", "GroupMask", "ChannelMember", "HardwareCost", "HardwareLoss",
           "attach_layer_masks_", "attach_channel_masks_", "fix_layer_masks_", "remove_channels_", "InTrain",
           "lam_auto"]


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


class _Frozen(nn.Module):
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


class LayerMask(MaskParametrization, _Frozen):
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


class GroupMask(_Frozen):
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


def _check_parametrizations(model: nn.Module) -> None:
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
class _Group:
    """A coupled channel group: its TP group, mask, and which tensors / layer ends it touches."""

    tp_group: Any
    mask: GroupMask
    out_members: dict[str, list[tuple[int, int]]]  # layer -> [(output channel, unit)]
    in_members: dict[str, list[tuple[int, int]]]  # layer -> [(input entry, unit)]
    tensors: list[tuple[nn.Module, str]]  # (module, tensor name) carrying a ChannelMember


def attach_channel_masks_(model: nn.Module, layers: Mapping[str, nn.Module], example: torch.Tensor, *,
                          init: float = 1.0) -> list[_Group]:
    """One :class:`GroupMask` per coupled channel group of ``layers``; masks every member's filters
    and bias and every BatchNorm of the group.

    The model must carry no parametrization (the dependency graph is traced on plain modules).
    """
    from ._structured import channel_groups

    dg, groups = channel_groups(model, layers, example)
    if not groups:
        raise ConfigError(f"in_train: no output channel of the prunable layers can be removed in this model "
                          f"(layers: {', '.join(layers)})")
    names = {m: n for n, m in model.named_modules()}
    ref = weight_param(next(iter(layers.values())))
    out: list[_Group] = []
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
        out.append(_Group(g.group, mask, {k: _dedup(v) for k, v in outs.items()},
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


# ---------------------------------------------------------------------------------------------
# The hardware cost
# ---------------------------------------------------------------------------------------------


class HardwareCost:
    """Differentiable MAC (or parameter) count of the model under its current binary masks.

    ``ratio()`` is ``sum_l psi_l / sum_l psi_l^0`` over every conv / linear layer the forward pass
    reaches (non-prunable layers count as constants), differentiable w.r.t. the mask logits through
    the straight-through binarization. Build it with :meth:`for_layers` or :meth:`for_groups`.
    """

    def __init__(self, positions: Mapping[str, int], modules: Mapping[str, nn.Module], cost: str) -> None:
        if cost not in ("macs", "params"):
            raise ConfigError(f"prune.options.cost: expected 'macs' or 'params', got {cost!r}")
        self.cost = cost
        self.mult = {n: (positions[n] if cost == "macs" else 1) for n in positions}
        self.numel = {n: weight_param(modules[n]).numel() for n in positions}
        self.dense = float(sum(self.mult[n] * self.numel[n] for n in positions))
        self.constant = self.dense
        self._layer_masks: dict[str, LayerMask] = {}
        self._unit_size: dict[str, int] = {}
        self._groups: list[_Group] = []
        self._channel_terms: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_layers(cls, positions: Mapping[str, int], modules: Mapping[str, nn.Module],
                   masks: Mapping[str, LayerMask], cost: str) -> HardwareCost:
        """Cost of weight / kernel masks: ``mult_l x unit_size x sum(M_b)`` per masked layer."""
        hc = cls(positions, modules, cost)
        for name, mask in masks.items():
            if name not in positions:
                continue  # never reached by the forward pass: no MACs either way
            hc._layer_masks[name] = mask
            hc._unit_size[name] = hc.numel[name] // mask.mask_logits.numel()
            hc.constant -= hc.mult[name] * hc.numel[name]
        return hc

    @classmethod
    def for_groups(cls, positions: Mapping[str, int], modules: Mapping[str, nn.Module],
                   groups: list[_Group], cost: str) -> HardwareCost:
        """Cost of channel-group masks, crediting both output and input channels of each layer."""
        hc = cls(positions, modules, cost)
        hc._groups = groups
        terms: dict[str, dict[str, Any]] = {}
        for gi, g in enumerate(groups):
            for side, members in (("out", g.out_members), ("in", g.in_members)):
                for name, pairs in members.items():
                    if name not in positions:
                        continue
                    t = terms.setdefault(name, {"out": [], "in": []})
                    units = torch.tensor([u for _, u in pairs], dtype=torch.long)
                    t[side].append((gi, units))
        for name, t in terms.items():
            m = modules[name]
            w = weight_param(m)
            c_out = w.shape[0]
            grouped = isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            c_in = cast(int, m.in_channels if isinstance(m, nn.modules.conv._ConvNd) else m.in_features)
            if grouped:
                t["in"] = []  # depthwise / grouped: no input-side credit
            t["c_out"], t["c_in"] = c_out, c_in
            t["per_io"] = hc.numel[name] / (c_out * (w.shape[1] if grouped else int(c_in)))
            t["grouped_in"] = w.shape[1] if grouped else None
            hc.constant -= hc.mult[name] * hc.numel[name]
        hc._channel_terms = terms
        return hc

    def _kept(self, binaries: list[torch.Tensor], parts: list[tuple[int, torch.Tensor]], total: int
              ) -> torch.Tensor | float:
        kept: torch.Tensor | float = float(total)
        for gi, units in parts:
            b = binaries[gi]
            kept = kept - units.numel() + b[units.to(b.device)].sum()
        return kept

    def total(self, binaries: Mapping[str, torch.Tensor] | list[torch.Tensor] | None = None
              ) -> torch.Tensor:
        """The cost under the masks' current binaries (or the given ones: per layer for
        weight/kernel masks, per group for channel masks), as a differentiable tensor."""
        total: torch.Tensor | float = self.constant
        if self._layer_masks:
            per_layer = cast(Mapping[str, torch.Tensor], binaries)
            for name, mask in self._layer_masks.items():
                b = per_layer[name] if binaries is not None else mask.binary()
                total = total + self.mult[name] * self._unit_size[name] * b.sum()
        if self._channel_terms:
            bins = (cast(list[torch.Tensor], list(binaries)) if binaries is not None
                    else [g.mask.binary() for g in self._groups])
            for name, t in self._channel_terms.items():
                kept_out = self._kept(bins, t["out"], t["c_out"])
                if t["grouped_in"] is not None:
                    total = total + self.mult[name] * t["per_io"] * t["grouped_in"] * kept_out
                else:
                    kept_in = self._kept(bins, t["in"], t["c_in"])
                    total = total + self.mult[name] * t["per_io"] * kept_out * kept_in
        if not isinstance(total, torch.Tensor):
            total = torch.tensor(float(total))
        return total

    def ratio(self, binaries: Any = None) -> torch.Tensor:
        """``sum psi / sum psi^0`` (1.0 for the dense model)."""
        return self.total(binaries) / self.dense


class HardwareLoss:
    """``extra_loss`` for ``train_``: ``lam * max(ratio - target, 0)`` inside the pruning window.

    Counts its own calls (one per training step): before ``start`` steps it returns 0 (masks learn
    from the robust loss alone); at step ``end`` it calls ``on_freeze()`` (which fixes the masks)
    and from then on returns 0. With ``freeze_when_met`` the masks freeze at the first in-window
    step where the cost is within the target (the paper stops mask training once ``L_HW = 0``).

    With ``growth > 0`` the weight is adaptive (dual ascent): after every in-window step whose
    cost is still above the target, ``lam *= 1 + growth``; it stays put once the target is met.
    A unit's logit then drifts down only while ``lam x (its cost share)`` beats the robust loss's
    pull on it, so units go in order of robust-loss importance per MAC, instead of all at once.

    Attributes:
        history: ``(step, ratio, lam)`` per call, thinned to at most 400 entries.
    """

    def __init__(self, cost: HardwareCost, target: float, lam: float, *, start: int, end: int,
                 on_freeze: Callable[[], None], growth: float = 0.0, freeze_when_met: bool = False) -> None:
        self.cost, self.target, self.lam, self.growth = cost, float(target), float(lam), float(growth)
        self.start, self.end = int(start), int(end)
        self.on_freeze = on_freeze
        self.freeze_when_met = freeze_when_met
        self.step = 0
        self.history: list[tuple[int, float, float]] = []
        self._every = 1

    def __call__(self, model: nn.Module) -> torch.Tensor:
        step, self.step = self.step, self.step + 1
        if step == self.end:
            self.on_freeze()
        ratio = self.cost.ratio()
        value = float(ratio.detach())
        if step % self._every == 0:
            self.history.append((step, value, self.lam))
            if len(self.history) >= 400:  # thin out: every other entry, then record half as often
                self.history, self._every = self.history[::2], self._every * 2
        if step < self.start or step >= self.end:
            return ratio.new_zeros(())
        if self.freeze_when_met and value <= self.target:
            self.end = step  # the paper freezes the masks once L_HW = 0
            self.on_freeze()
            return ratio.new_zeros(())
        loss = self.lam * torch.relu(ratio - self.target)  # zero gradient at and under the target
        if value > self.target:
            self.lam *= 1.0 + self.growth
        return loss


# ---------------------------------------------------------------------------------------------
# Schedules and the default penalty weight
# ---------------------------------------------------------------------------------------------


# The adaptive penalty weight sweeps lam_auto() * [1e-2, 1e2] over the pruning window (at most).
_ADAPTIVE_RANGE = (1e-2, 1e2)


def lam_auto(mean_grad: float, cfg: Any, *, steps: int, start: float, end: float) -> float:
    """The default penalty weight: large enough that the penalty alone takes a mask of average
    cost from ``M = 1`` across the pruning boundary (``M = -0.5``) by the middle of the pruning
    window, for SGD with momentum at the schedule's mean learning rate.

    One step moves ``M`` by about ``lr / (1 - momentum) * lam * g * 0.5 * sech^2(M)`` where ``g`` is
    the unit's ``d ratio / d M_b``; ``sech^2`` averages about 0.65 over ``[-0.5, 1]``.

    Args:
        mean_grad: mean over mask units of ``d ratio / d M_b`` at the dense model.
        cfg: the training config (lr, schedule, optimizer, momentum).
        steps: optimizer steps of the whole run.
        start, end: the pruning window as fractions of the run.
    """
    from ..train import scheduled_lr

    first, last = int(start * steps), max(int(start * steps) + 1, min(steps, int(end * steps)))
    lr = sum(scheduled_lr(cfg, step=k, total=steps) for k in range(first, last)) / (last - first)
    lr = max(lr, 1e-3 * cfg.lr)  # a window where the schedule is ~0 (cyclic start) must not blow up lam
    speed = 1.0 / (1.0 - cfg.momentum) if cfg.optimizer == "sgd" else 1.0
    half_window = max(1.0, 0.5 * (end - start) * steps)
    return 1.5 / (lr * speed * half_window * mean_grad * 0.5 * 0.65)


def _steps_per_epoch(loader: Any, cfg: Any) -> int:
    try:
        n = len(loader)
    except TypeError:
        raise ConfigError("in_train needs a loader with len() (searchprune.data.BatchLoader)") from None
    return min(n, cfg.max_batches) if cfg.max_batches is not None else n


def _total_steps(loader: Any, cfg: Any) -> int:
    """Optimizer steps ``train_`` will run (its own rounding of fractional epochs)."""
    return max(1, math.floor(cfg.epochs * _steps_per_epoch(loader, cfg) + 0.5))


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


@register_method("in_train")
class InTrain(PruningMethod):
    """In-train pruning: masks and weights trained jointly under ``robust loss + lam * L_HW``.

    The target is the fraction of the model's MACs (or parameters) kept: ``1 - sparsity`` unless
    ``target_macs_ratio`` / ``target_params_ratio`` is given. Only ``allocation="learned"``: the
    masks decide how much each layer loses.

    Options:
        epochs: training epochs (default: the trial's train config, else 1).
        lr: peak learning rate (default: the trial's train config).
        recipe: robust loss (default "fast": FastAT, the paper's).
        cost: "macs" (default) or "params".
        target_macs_ratio / target_params_ratio: fraction of the cost kept (overrides sparsity).
        lam: a fixed weight of ``L_HW`` (the paper's b, e.g. 50); None: adaptive (see above).
        prune_start, prune_end: the penalty's window as fractions of training; the masks freeze at
            ``prune_end`` (paper: 20 and 240 of 300 epochs).
        from_scratch: re-initialize every parameter first (the paper trains from scratch).
        freeze_when_met: freeze the masks at the first step within the target (as the paper
            does once ``L_HW = 0``) instead of at ``prune_end``.
        enforce_target: when the masks freeze above the target, drop the lowest-logit kept units
            until it is met.
        fill_target: when they freeze below it (the hinge overshoots), bring back the
            highest-logit pruned units while the cost stays within it. Both False: the paper's raw
            binarization.
        init: initial mask logit (1.0).
        max_batches: batches per epoch (default: the trial's train config).
    """

    granularities = ("weight", "kernel", "channel")
    allocations = ("learned",)
    needs_data = True
    needs_threat = True
    # what ``sparsity`` counts for this method: MACs (or parameters with cost="params"), see above
    target_unit: ClassVar[str] = "macs"
    default_options = {
        "epochs": None, "lr": None, "recipe": "fast", "cost": "macs", "target_macs_ratio": None,
        "target_params_ratio": None, "lam": None, "prune_start": 0.1, "prune_end": 0.8,
        "from_scratch": False, "freeze_when_met": True, "enforce_target": True,
        "fill_target": True, "init": 1.0, "max_batches": None,
    }

    # -- configuration -------------------------------------------------------------------------

    def target(self, ctx: PruneContext) -> float:
        """The fraction of the cost to keep."""
        o = self.options
        other = "target_params_ratio" if o["cost"] == "macs" else "target_macs_ratio"
        if o[other] is not None:
            raise ConfigError(f"prune.options.{other}: given with cost={o['cost']!r}; expected "
                              f"{'target_macs_ratio' if o['cost'] == 'macs' else 'target_params_ratio'}")
        given = o["target_macs_ratio"] if o["cost"] == "macs" else o["target_params_ratio"]
        target = float(given) if given is not None else 1.0 - float(ctx.sparsity or 0.0)
        if not 0 < target <= 1:
            raise ConfigError(f"prune.options: expected a {o['cost']} ratio kept in (0, 1], got {target}")
        return target

    def train_config(self, ctx: PruneContext) -> Any:
        """The joint training's TrainConfig: the trial's recipe with the options on top."""
        from ..config import TrainConfig

        o = self.options
        base = ctx.train_cfg if ctx.train_cfg is not None else TrainConfig()
        changes: dict[str, Any] = {"recipe": o["recipe"]}
        if o["epochs"] is not None:
            changes["epochs"] = float(o["epochs"])
        elif ctx.train_cfg is None:
            changes["epochs"] = 1.0
        if o["lr"] is not None:
            changes["lr"] = float(o["lr"])
        if o["max_batches"] is not None:
            changes["max_batches"] = int(o["max_batches"])
        return dataclasses.replace(base, **changes)

    # -- the run -------------------------------------------------------------------------------

    def apply(self, ctx: PruneContext) -> PruneReport:
        """Attaches masks, trains them with the weights, then fixes or physically applies them."""
        from ..macs import layer_costs

        o = self.options
        model, gran = ctx.model, ctx.cfg.granularity
        if not 0 <= o["prune_start"] < o["prune_end"] <= 1:
            raise ConfigError(f"prune.options: expected 0 <= prune_start < prune_end <= 1, got "
                              f"{o['prune_start']}, {o['prune_end']}")
        if float(o["init"]) <= 0:
            raise ConfigError(f"prune.options.init: expected a logit > 0 (so every mask starts at 1), "
                              f"got {o['init']}")
        _check_parametrizations(model)
        target = self.target(ctx)
        cfg = self.train_config(ctx)
        if o["from_scratch"] or gran == "channel":
            fold_masks_(model)  # channel surgery works on plain modules; a fresh start has no masks
        if o["from_scratch"]:
            for m in model.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset) and not isinstance(m, MaskParametrization):
                    reset()
        params_before = count_params(model, nonzero=True)
        weights_before = {n: weight_param(m).numel() for n, m in ctx.layers.items()}
        out_before = {n: weight_param(m).shape[0] for n, m in ctx.layers.items()}
        positions = {n: c.out_positions for n, c in layer_costs(model, ctx.input_shape).items()}
        modules = dict(model.named_modules())

        groups: list[_Group] = []
        masks: dict[str, LayerMask] = {}
        if gran == "channel":
            groups = attach_channel_masks_(model, ctx.layers, ctx.example_input(1), init=o["init"])
            hc = HardwareCost.for_groups(positions, modules, groups, o["cost"])
            frozen: list[_Frozen] = [g.mask for g in groups]
        else:
            masks = attach_layer_masks_(ctx.layers, gran, init=o["init"])
            hc = HardwareCost.for_layers(positions, modules, masks, o["cost"])
            frozen = list(masks.values())

        steps = _total_steps(ctx.loader, cfg)
        logits = [m.mask_logits for m in frozen]
        lam = o["lam"]
        if lam is None:
            grads = torch.autograd.grad(hc.ratio(), logits, allow_unused=True)  # at the dense model
            # d ratio / d M_b = d ratio / d M / (0.5 sech^2 M) at the initial logits
            scale = 0.5 * (1.0 - math.tanh(float(o["init"])) ** 2)
            per_unit = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                  for g, p in zip(grads, logits)]) / scale
            lam_ref = lam_auto(float(per_unit.abs().mean()), cfg, steps=steps, start=o["prune_start"],
                               end=o["prune_end"])
        start = int(o["prune_start"] * steps)
        end = int(o["prune_end"] * steps) if o["prune_end"] < 1 else steps + 1
        if lam is None:  # adaptive: from lam_ref / 100 up to lam_ref * 100 over the window if needed
            lo, hi = _ADAPTIVE_RANGE
            lam, growth = lam_ref * lo, (hi / lo) ** (1.0 / max(1, min(end, steps) - start)) - 1.0
        else:
            lam_ref, growth = float(lam), 0.0
        as_binaries = self._binaries_fn(masks, groups)
        fit: dict[str, Any] = {}

        def freeze() -> None:
            """Binarizes the masks, fits them to the target along the logit order, and fixes them:
            at ``prune_end`` (the weights then train on with the final masks) or after training."""
            bins = [binarize(m.mask_logits).detach().clone() for m in frozen]
            fit["ratio_trained"] = float(hc.ratio(as_binaries(bins)))
            fit["freeze_step"] = hw.step
            if gran == "channel":
                for b, m in zip(bins, frozen):
                    if b.sum() == 0:  # every group keeps a channel: its most confident one
                        b[int(torch.argmax(m.mask_logits.detach()))] = 1
            fit["dropped_units"], fit["revived_units"] = _fit_to_target_(
                bins, [m.mask_logits.detach() for m in frozen], hc, target, as_binaries,
                tiebreak=_magnitudes(ctx.layers, masks, groups), min_keep=1 if gran == "channel" else 0,
                drop=bool(o["enforce_target"]), fill=bool(o["fill_target"]))
            for m, b in zip(frozen, bins):
                m.freeze_(b)

        hw = HardwareLoss(hc, target, float(lam), start=start, end=end, on_freeze=freeze, growth=growth,
                          freeze_when_met=bool(o["freeze_when_met"]))
        history: list[dict] = []
        if cfg.epochs > 0:
            from ..train import train_

            assert ctx.threat is not None  # needs_threat: prune_ checked
            history = train_(model, ctx.loader, cfg, threat=ctx.threat, extra_loss=hw)
        if not all(m.is_frozen for m in frozen):
            freeze()
        bins = [cast(torch.Tensor, m.frozen).detach().clone() for m in frozen]
        extra = {"target_ratio": target, "cost": o["cost"], "lam_start": float(lam), "lam_end": hw.lam,
                 "lam_ref": float(lam_ref), "lam_growth": growth, "steps": steps, **fit,
                 "ratio_final": float(hc.ratio(as_binaries(bins))),
                 "recipe": cfg.recipe, "epochs": cfg.epochs,
                 "ratio_history": [[s, r, lm] for s, r, lm in hw.history],
                 "last_epoch": {k: v for k, v in (history[-1] if history else {}).items()
                                if isinstance(v, int | float | str)}}

        if gran != "channel":
            fix_layer_masks_(ctx.layers, dict(zip(masks, bins)), gran)
            return build_report(ctx, params_before=params_before, extra=extra)
        kept = remove_channels_(groups, bins, out_before)
        extra["groups"] = len(groups)
        return build_report(ctx, params_before=params_before, structural=True, kept_channels=kept,
                            out_channels_before={n: out_before[n] for n in kept},
                            weights_before=weights_before, extra=extra)

    @staticmethod
    def _binaries_fn(masks: Mapping[str, LayerMask], groups: list[_Group]) -> Callable[[list], Any]:
        """Unit binaries in freeze order -> what :meth:`HardwareCost.total` takes."""
        if groups:
            return list
        names = list(masks)
        return lambda bins: dict(zip(names, bins))


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


def remove_channels_(groups: list[_Group], bins: list[torch.Tensor], out_channels: Mapping[str, int]
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


@torch.no_grad()
def _magnitudes(layers: Mapping[str, nn.Module], masks: Mapping[str, LayerMask], groups: list[_Group]
                ) -> list[torch.Tensor]:
    """Mean ``|W|`` per mask unit (weight, kernel, or summed over a channel group's filters), in
    freeze order: the tie-break when mask logits are equal."""
    if not groups:
        return [reduce_to_units(weight_param(layers[n]).detach().abs(), m.granularity, "mean")
                for n, m in masks.items()]
    out = []
    for g in groups:
        mag = torch.zeros_like(g.mask.mask_logits, dtype=torch.float64)
        for name, pairs in g.out_members.items():
            if name not in layers:
                continue
            w = weight_param(layers[name]).detach().abs()
            rows = w.reshape(w.shape[0], -1).mean(1).double()
            for c, u in pairs:
                mag[u] += rows[c].to(mag.device)
        out.append(mag)
    return out


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


def _preference(logits: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Flat unit indices of one mask tensor, most worth keeping first: by logit, ties (e.g. masks
    that never moved) by ``tiebreak`` (weight magnitude), then by position."""
    lg, tb = logits.reshape(-1).double(), tiebreak.reshape(-1).double().to(logits.device)
    order = torch.sort(-tb, stable=True).indices
    return order[torch.sort(-lg[order], stable=True).indices]


@torch.no_grad()
def _fit_to_target_(bins: list[torch.Tensor], logits: list[torch.Tensor], hc: HardwareCost, target: float,
                    as_binaries: Callable[[list], Any], *, tiebreak: list[torch.Tensor] | None = None,
                    min_keep: int = 0, drop: bool = True, fill: bool = True) -> tuple[int, int]:
    """Moves the binary masks to the largest cost not above ``target``, keeping the learned
    allocation's shape.

    Each mask tensor (a layer's weights or kernels, or a channel group) keeps the fraction
    ``f + delta`` of its units, ``f`` its fraction at freezing and ``delta`` one shift shared by all
    tensors, found by bisection (the cost only rises with ``delta``); within a tensor the units with
    the highest logits are kept (ties by weight magnitude), so ``delta = 0`` is the trained mask.
    Single units are then added, lowest extra ``delta`` first, while the cost stays within the
    target, so it lands within one unit of it. Above the target (``drop``) this removes units;
    below it (``fill``) it brings units back: the hinge overshoots, and in short runs whole layers
    cross together (every mask of a layer has the same cost share), which leaves the logits
    comparable within a layer but not across layers. With ``min_keep`` every tensor keeps that
    many units. Edits ``bins`` in place.

    Returns:
        ``(units dropped, units revived)`` relative to the trained masks.
    """
    eps = 1e-12
    tiebreak = tiebreak if tiebreak is not None else [torch.zeros_like(lg) for lg in logits]
    start = [b.clone() for b in bins]

    def ratio(b: list[torch.Tensor]) -> float:
        return float(hc.ratio(as_binaries(b)))

    over = ratio(bins) > target + eps
    if (over and not drop) or (not over and not fill):
        return 0, 0
    prefs = [_preference(lg, tb) for lg, tb in zip(logits, tiebreak)]
    sizes = [lg.numel() for lg in logits]
    frac = [float(b.sum()) / n for b, n in zip(bins, sizes)]
    lows = [min(min_keep, n) for n in sizes]

    def counts(delta: float) -> list[int]:
        return [min(n, max(least, int(math.floor((f + delta) * n + 0.5))))
                for f, n, least in zip(frac, sizes, lows)]

    def build(ks: list[int]) -> list[torch.Tensor]:
        out = []
        for b, order, k in zip(bins, prefs, ks):
            flat = torch.zeros(b.numel(), dtype=b.dtype, device=b.device)
            flat[order[:k]] = 1
            out.append(flat.reshape(b.shape))
        return out

    lo, hi = (-1.0, 0.0) if over else (0.0, 1.0)
    if ratio(build(counts(lo))) > target + eps:
        ks = counts(lo)  # even the floor is over the target: keep the minimum
    else:
        for _ in range(60):  # largest feasible delta
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ratio(build(counts(mid))) <= target + eps else (lo, mid)
        ks = counts(lo)
        grown = True
        while grown:  # top up one unit at a time, the tensors closest to their next unit first
            grown = False
            nxt = sorted(range(len(ks)), key=lambda t: (ks[t] + 0.5) / sizes[t] - frac[t])
            for t in nxt:
                if ks[t] < sizes[t]:
                    trial = ks[:t] + [ks[t] + 1] + ks[t + 1:]
                    if ratio(build(trial)) <= target + eps:
                        ks, grown = trial, True
    for b, new in zip(bins, build(ks)):
        b.copy_(new)
    dropped = sum(int(((s > 0) & (b == 0)).sum()) for s, b in zip(start, bins))
    revived = sum(int(((s == 0) & (b > 0)).sum()) for s, b in zip(start, bins))
    return dropped, revived
