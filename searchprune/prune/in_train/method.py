"""The ``in_train`` method: attach masks, train them jointly with the weights under
``robust loss + lam * L_HW``, freeze and fit them, then fix them or remove the channels."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import torch

from ..._torch import count_params
from ...config import TrainConfig
from ...errors import ConfigError
from ...models.macs import layer_costs
from ...train import train_
from ..context import PruneContext, PruneReport, build_report
from ..masks import MaskParametrization, fold_masks_, weight_param
from ..method import PruningMethod, register_method
from ..options import boolean, number, one_of, positive_int, string
from .cost import ADAPTIVE_RANGE, HardwareCost, HardwareLoss, lam_auto, total_steps
from .fit import fit_to_target_, unit_magnitudes
from .masks import (
    FreezableMask,
    LayerMask,
    MaskedGroup,
    attach_channel_masks_,
    attach_layer_masks_,
    binarize,
    check_only_masks,
    fix_layer_masks_,
    remove_channels_,
)

__all__ = ["InTrain"]


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
    option_checks = {
        "epochs": number(low=0, allow_none=True), "lr": number(low=0, low_open=True, allow_none=True),
        "recipe": string(), "cost": one_of("macs", "params"),
        "target_macs_ratio": number(low=0, high=1, low_open=True, allow_none=True),
        "target_params_ratio": number(low=0, high=1, low_open=True, allow_none=True),
        "lam": number(low=0, allow_none=True), "prune_start": number(low=0, high=1),
        "prune_end": number(low=0, high=1), "from_scratch": boolean(), "freeze_when_met": boolean(),
        "enforce_target": boolean(), "fill_target": boolean(),
        "init": number(low=0, low_open=True),  # a logit > 0: every mask starts at 1
        "max_batches": positive_int(allow_none=True),
    }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """The pruning window is ordered; the target ratio given matches the cost.

        Raises:
            ConfigError: ``prune_start >= prune_end``, or ``target_params_ratio`` with cost "macs"
                (``target_macs_ratio`` with cost "params").
        """
        if not options["prune_start"] < options["prune_end"]:
            raise ConfigError(f"prune.options: expected 0 <= prune_start < prune_end <= 1, got "
                              f"{options['prune_start']}, {options['prune_end']}")
        cost = options["cost"]
        other, own = ("target_params_ratio", "target_macs_ratio") if cost == "macs" else (
            "target_macs_ratio", "target_params_ratio")
        if options[other] is not None:
            raise ConfigError(f"prune.options.{other}: given with cost={cost!r}; expected {own}")

    # -- configuration -------------------------------------------------------------------------

    def target(self, ctx: PruneContext) -> float:
        """The fraction of the cost to keep."""
        o = self.options  # checked: the ratio given matches the cost and lies in (0, 1]
        given = o["target_macs_ratio"] if o["cost"] == "macs" else o["target_params_ratio"]
        return float(given) if given is not None else 1.0 - float(ctx.sparsity or 0.0)

    def train_config(self, ctx: PruneContext) -> Any:
        """The joint training's TrainConfig: the trial's recipe with the options on top."""
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
        o = self.options
        model, gran = ctx.model, ctx.cfg.granularity
        check_only_masks(model)
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

        groups: list[MaskedGroup] = []
        masks: dict[str, LayerMask] = {}
        if gran == "channel":
            groups = attach_channel_masks_(model, ctx.layers, ctx.example_input(1), init=o["init"])
            hc = HardwareCost.for_groups(positions, modules, groups, o["cost"])
            frozen: list[FreezableMask] = [g.mask for g in groups]
        else:
            masks = attach_layer_masks_(ctx.layers, gran, init=o["init"])
            hc = HardwareCost.for_layers(positions, modules, masks, o["cost"])
            frozen = list(masks.values())

        steps = total_steps(ctx.loader, cfg)
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
            lo, hi = ADAPTIVE_RANGE
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
            fit["dropped_units"], fit["revived_units"] = fit_to_target_(
                bins, [m.mask_logits.detach() for m in frozen], hc, target, as_binaries,
                tiebreak=unit_magnitudes(ctx.layers, masks, groups), min_keep=1 if gran == "channel" else 0,
                drop=bool(o["enforce_target"]), fill=bool(o["fill_target"]))
            for m, b in zip(frozen, bins):
                m.freeze_(b)

        hw = HardwareLoss(hc, target, float(lam), start=start, end=end, on_freeze=freeze, growth=growth,
                          freeze_when_met=bool(o["freeze_when_met"]))
        history: list[dict[str, Any]] = []
        if cfg.epochs > 0:
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
    def _binaries_fn(masks: Mapping[str, LayerMask], groups: list[MaskedGroup]) -> Callable[[list[torch.Tensor]], Any]:
        """Unit binaries in freeze order -> what :meth:`HardwareCost.total` takes."""
        if groups:
            return list
        names = list(masks)
        return lambda bins: dict(zip(names, bins))
