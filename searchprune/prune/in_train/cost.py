"""In-train pruning's hardware cost: the differentiable MAC (or parameter) ratio under the current
binary masks (Eq. 3/4), the hinge penalty that ``train_`` adds to the robust loss, and the default
penalty weight."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn

from ...errors import ConfigError
from ...train import scheduled_lr
from ..masks import weight_param
from .masks import LayerMask, MaskedGroup

__all__ = ["HardwareCost", "HardwareLoss", "ADAPTIVE_RANGE", "lam_auto", "steps_per_epoch", "total_steps"]


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
        self._groups: list[MaskedGroup] = []
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
                   groups: list[MaskedGroup], cost: str) -> HardwareCost:
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


# The adaptive penalty weight sweeps lam_auto() * [1e-2, 1e2] over the pruning window (at most).
ADAPTIVE_RANGE = (1e-2, 1e2)


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
    first, last = int(start * steps), max(int(start * steps) + 1, min(steps, int(end * steps)))
    lr = sum(scheduled_lr(cfg, step=k, total=steps) for k in range(first, last)) / (last - first)
    lr = max(lr, 1e-3 * cfg.lr)  # a window where the schedule is ~0 (cyclic start) must not blow up lam
    speed = 1.0 / (1.0 - cfg.momentum) if cfg.optimizer == "sgd" else 1.0
    half_window = max(1.0, 0.5 * (end - start) * steps)
    return 1.5 / (lr * speed * half_window * mean_grad * 0.5 * 0.65)


def steps_per_epoch(loader: Any, cfg: Any) -> int:
    try:
        n = len(loader)
    except TypeError:
        raise ConfigError("in_train needs a loader with len() (searchprune.data.BatchLoader)") from None
    return min(n, cfg.max_batches) if cfg.max_batches is not None else n


def total_steps(loader: Any, cfg: Any) -> int:
    """Optimizer steps ``train_`` will run (its own rounding of fractional epochs)."""
    return max(1, math.floor(cfg.epochs * steps_per_epoch(loader, cfg) + 0.5))
