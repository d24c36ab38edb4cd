"""HYDRA (Sehwag et al., NeurIPS 2020): learn which weights to keep by optimizing importance
scores under the robust training loss, with the weights frozen.

Follows ``inspire-group/hydra`` (``shared/reference/methods.md`` B):

* every pruned layer gets ``popup_scores`` shaped like its weight; the forward pass uses
  ``weight * GetSubnet(|scores|, k)``, where GetSubnet zeroes the ``int((1 - k) * numel)``
  smallest ``|scores|`` of the layer and keeps the rest (k = fraction kept, the same in every layer
  in the paper), with a straight-through gradient to the scores;
* scores start at ``sqrt(6 / fan_in) * W / max|W|`` ("scaled score init"), so the initial mask is
  exactly layer-wise least-weight-magnitude pruning;
* prune phase: only the scores (and BatchNorm's affine parameters unless ``freeze_bn``) train,
  with the adversarial loss (TRADES by default: HYDRA's ``adv`` trainer), SGD momentum 0.9,
  lr 0.1, cosine, weight decay 1e-4, 20 epochs;
* then the scores are frozen: the learned mask becomes the shared fixed :class:`Mask`, so the
  trial's fine-tuning trains the surviving weights with the mask fixed (HYDRA's finetune phase)
  and export folds it like any mask (HYDRA's ``--save-dense``).

Only weights are pruned; biases and BatchNorm never are. Whether the classifier is pruned follows
``PruneConfig.include_classifier`` (HYDRA prunes it; set it to True for the paper's setting).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._torch import count_params
from ..config import TrainConfig
from ..errors import ConfigError
from ..train import train_
from .allocation import allocate, has_ratios, layer_ratios
from .context import PruneContext, PruneReport, build_report
from .masks import MaskParametrization, apply_mask_, get_mask, weight_param
from .method import PruningMethod, register_method
from .options import boolean, number, positive_int, string

__all__ = ["GetSubnet", "PopupScores", "Hydra", "n_pruned", "scaled_score_init", "attach_scores_",
           "score_parameters", "freeze_scores_", "hydra_train_config", "hydra_prune_phase_"]


def n_pruned(numel: int, sparsity: float) -> int:
    """HYDRA's count of pruned entries, ``int((1 - k) * numel)`` with ``k = 1 - sparsity``.

    Computed from the sparsity directly (plus 1e-9 against float noise such as
    ``(1 - 0.7) * 10 = 2.9999...``), so the count is the exact floor of ``sparsity * numel``.
    """
    return min(numel, int(math.floor(sparsity * numel + 1e-9)))


class GetSubnet(torch.autograd.Function):
    """``mask = 0`` at the ``j`` smallest entries of ``scores`` (flattened), ``1`` elsewhere.

    Backward is the straight-through estimator: the mask's gradient goes to the scores unchanged.
    Ties are broken by flat index (stable sort), so the mask is deterministic.
    """

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, j: int) -> torch.Tensor:
        flat = scores.detach().reshape(-1)
        mask = torch.ones_like(flat)
        if j > 0:
            order = torch.sort(flat, stable=True).indices  # ascending
            mask[order[:j]] = 0
        return mask.reshape(scores.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def scaled_score_init(weight: torch.Tensor) -> torch.Tensor:
    """HYDRA's scaled score initialization: ``sqrt(6 / fan_in) * W / max|W|``.

    ``fan_in`` is PyTorch's for the score tensor: ``C_in/groups * kh * kw`` for a conv,
    ``in_features`` for a linear layer. ``|s|`` is proportional to ``|W|`` within the layer, so the
    initial mask is layer-wise magnitude pruning.
    """
    w = weight.detach()
    fan_in = nn.init._calculate_correct_fan(w, "fan_in") if w.dim() >= 2 else w.numel()
    peak = w.abs().max()
    if float(peak) == 0.0:
        return torch.zeros_like(w)
    return math.sqrt(6.0 / fan_in) * w / peak


class PopupScores(MaskParametrization):
    """The HYDRA parametrization: ``forward(w) = w * GetSubnet(|popup_scores|, j)``.

    Args:
        weight: the (effective) weight the scores are initialized from (scaled score init).
        n_prune: ``j``, how many entries of this layer are pruned.

    Attributes:
        popup_scores: ``nn.Parameter`` shaped like the weight; the only thing HYDRA trains.
    """

    def __init__(self, weight: torch.Tensor, n_prune: int) -> None:
        super().__init__()
        if not 0 <= n_prune <= weight.numel():
            raise ValueError(f"n_prune={n_prune} outside [0, {weight.numel()}]")
        self.n_prune = int(n_prune)
        self.popup_scores = nn.Parameter(scaled_score_init(weight))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * GetSubnet.apply(self.popup_scores.abs(), self.n_prune)

    def current_mask(self) -> torch.Tensor:
        with torch.no_grad():
            return GetSubnet.apply(self.popup_scores.abs(), self.n_prune)

    def extra_repr(self) -> str:
        return f"n_prune={self.n_prune}, numel={self.popup_scores.numel()}"


def _weight_plist(module: nn.Module) -> list[nn.Module]:
    """The parametrizations on ``module.weight`` (empty if none), typed."""
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return list(cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)["weight"]))


def _weight(module: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.weight)


def _popup(module: nn.Module) -> PopupScores | None:
    return next((p for p in _weight_plist(module) if isinstance(p, PopupScores)), None)


def attach_scores_(layers: Mapping[str, nn.Module], n_prune: Mapping[str, int]) -> dict[str, PopupScores]:
    """Registers a :class:`PopupScores` on each layer's weight, scaled-score initialized.

    A layer that is already masked keeps its mask (the scores see the masked weight, so already
    pruned entries score 0 and are pruned first); any other parametrization (e.g. a quantizer) is
    refused because HYDRA's final mask replaces the weight's parametrizations.

    Args:
        layers: name -> conv / linear module.
        n_prune: name -> entries to prune in that layer.

    Returns:
        name -> the registered parametrization.

    Raises:
        ConfigError: a layer's weight carries a non-mask parametrization.
    """
    out: dict[str, PopupScores] = {}
    for name, m in layers.items():
        if not all(isinstance(p, MaskParametrization) for p in _weight_plist(m)):
            raise ConfigError(f"hydra: layer {name!r} has a non-mask parametrization on its weight "
                              "(quantize after pruning, not before)")
        p = PopupScores(_weight(m), n_prune[name])
        parametrize.register_parametrization(m, "weight", p)
        out[name] = p
    return out


def score_parameters(layers: Mapping[str, nn.Module]) -> list[nn.Parameter]:
    """The ``popup_scores`` of every HYDRA layer in ``layers``."""
    return [p.popup_scores for m in layers.values() if (p := _popup(m)) is not None]


def freeze_scores_(layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Replaces each layer's scores by the fixed :class:`Mask` they currently select.

    The final mask is the product of every mask on the weight (HYDRA's and any earlier one); the
    weight is left as a plain parameter masked by one :class:`Mask` (pruned entries zeroed).

    Returns:
        name -> the 0/1 mask applied (shaped like the weight).
    """
    masks: dict[str, torch.Tensor] = {}
    for name, m in layers.items():
        if _popup(m) is None:
            continue
        mask = get_mask(m)
        assert mask is not None
        # every parametrization here is a mask (attach_scores_ checked): drop them all, keep the
        # unmasked original, and register the one fixed Mask
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        apply_mask_(m, mask)
        masks[name] = mask
    return masks


@contextmanager
def _train_only(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Freezes every parameter except ``params`` (HYDRA's ``freeze_vars``); restores the flags."""
    keep = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _bn_affine(model: nn.Module) -> list[nn.Parameter]:
    out: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            out += [m.weight, m.bias]
    return out


def hydra_train_config(base: Any, options: Mapping[str, Any]) -> Any:
    """The prune phase's :class:`~searchprune.config.TrainConfig`: ``base`` (the trial's recipe,
    or the defaults) with HYDRA's prune-phase settings from ``options`` on top: ``recipe``,
    ``prune_epochs``, ``prune_lr``, ``prune_schedule``, ``prune_weight_decay``, SGD with momentum
    0.9, and ``trades_beta`` / ``max_batches`` when given."""
    base = base if base is not None else TrainConfig()
    changes: dict[str, Any] = dict(
        recipe=options["recipe"], epochs=float(options["prune_epochs"]), lr=float(options["prune_lr"]),
        schedule=options["prune_schedule"], weight_decay=float(options["prune_weight_decay"]),
        optimizer="sgd", momentum=0.9,
    )
    if options.get("trades_beta") is not None:
        changes["trades_beta"] = float(options["trades_beta"])
    if options.get("max_batches") is not None:
        changes["max_batches"] = int(options["max_batches"])
    return dataclasses.replace(base, **changes)


def hydra_prune_phase_(model: nn.Module, layers: Mapping[str, nn.Module], loader: Any, train_cfg: Any, *,
                       threat: Any, freeze_bn: bool = False) -> list[dict[str, Any]]:
    """HYDRA's prune phase: trains the scores of ``layers`` (and BatchNorm affine parameters unless
    ``freeze_bn``) with every other parameter frozen, through ``searchprune.train.train_``.

    The layers must already carry :class:`PopupScores` (:func:`attach_scores_`).

    Returns:
        ``train_``'s per-epoch history.
    """
    params = score_parameters(layers)
    if not params:
        raise ValueError("hydra_prune_phase_: no layer carries popup scores; call attach_scores_ first")
    if not freeze_bn:
        params += _bn_affine(model)
    with _train_only(model, params):
        return train_(model, loader, train_cfg, threat=threat, params=params)


@register_method("hydra")
class Hydra(PruningMethod):
    """HYDRA: importance scores trained under the robust loss, weights frozen.

    Allocations: ``learned`` and ``uniform`` are the paper's (the same fraction pruned in every
    layer, the mask inside each layer learned); ``per_layer`` / ``mrs`` give each layer its own
    fraction; ``global`` fixes each layer's count by global magnitude pruning (so the initial mask
    is global magnitude pruning) and learns which weights within each layer.

    Options:
        prune_epochs: epochs of the prune phase (paper: 20).
        prune_lr: peak learning rate of the scores (paper: 0.1, cosine).
        prune_schedule: learning-rate schedule of the prune phase (paper: "cosine").
        prune_weight_decay: weight decay, applied to the scores (paper: 1e-4).
        recipe: robust loss of the prune phase (paper: "trades", HYDRA's ``adv`` trainer).
        trades_beta: TRADES's beta (default: the trial's train config, 6.0).
        max_batches: batches per epoch (default: the trial's train config).
        freeze_bn: also freeze BatchNorm's affine parameters (paper default: False, they train).
    """

    granularities = ("weight",)
    allocations = ("learned", "uniform", "global", "per_layer", "mrs")
    needs_data = True
    needs_threat = True
    default_options = {
        "prune_epochs": 20, "prune_lr": 0.1, "prune_schedule": "cosine", "prune_weight_decay": 1e-4,
        "recipe": "trades", "trades_beta": None, "max_batches": None, "freeze_bn": False,
    }
    option_checks = {
        "prune_epochs": number(low=0), "prune_lr": number(low=0, low_open=True), "prune_schedule": string(),
        "prune_weight_decay": number(low=0), "recipe": string(), "trades_beta": number(low=0, allow_none=True),
        "max_batches": positive_int(allow_none=True), "freeze_bn": boolean(),
    }

    def layer_counts(self, ctx: PruneContext) -> dict[str, int]:
        """Entries pruned per layer under the configured allocation."""
        alloc = ctx.cfg.allocation
        numel = {n: weight_param(m).numel() for n, m in ctx.layers.items()}
        if alloc in ("learned", "uniform"):
            assert ctx.sparsity is not None
            return {n: n_pruned(k, ctx.sparsity) for n, k in numel.items()}
        if has_ratios(alloc):
            ratios = layer_ratios(ctx)
            return {n: n_pruned(k, ratios[n]) for n, k in numel.items()}
        # global: one magnitude threshold fixes each layer's count
        keep = allocate({n: _weight(m).detach().abs() for n, m in ctx.layers.items()},
                        allocation="global", sparsity=ctx.sparsity)
        return {n: int((~k).sum()) for n, k in keep.items()}

    def apply(self, ctx: PruneContext) -> PruneReport:
        """Attaches scaled-initialized scores, trains them (weights frozen), then fixes the mask."""
        opts = self.options
        params_before = count_params(ctx.model, nonzero=True)
        counts = self.layer_counts(ctx)
        scores = attach_scores_(ctx.layers, counts)
        initial = {n: p.current_mask().clone() for n, p in scores.items()}
        cfg = hydra_train_config(ctx.train_cfg, opts)
        history: list[dict[str, Any]] = []
        if cfg.epochs > 0:
            history = hydra_prune_phase_(ctx.model, ctx.layers, ctx.loader, cfg, threat=ctx.threat,
                                         freeze_bn=bool(opts["freeze_bn"]))
        final = freeze_scores_(ctx.layers)
        # how far the learned mask moved from layer-wise magnitude pruning (the paper's point)
        kept = sum(int(final[n].sum()) for n in final)
        changed = sum(int(((final[n] > 0) & (initial[n] == 0)).sum()) for n in final)
        extra = {
            "prune_epochs": cfg.epochs, "recipe": cfg.recipe,
            "kept_changed_vs_magnitude": changed / max(1, kept),
            "last_epoch": {k: v for k, v in (history[-1] if history else {}).items()
                           if isinstance(v, int | float | str)},
        }
        return build_report(ctx, params_before=params_before, extra=extra)
