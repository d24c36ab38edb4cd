"""Physical channel removal (``granularity="channel"``) through Torch-Pruning's DependencyGraph.

The graph is traced once from ``ctx.input_shape``; each *group* is a set of coupled channels that
must go together (a conv's filters, its BatchNorm, the next layers' input channels, and, in
residual networks, every conv that writes into the same shortcut sum). The classifier's outputs
(the module marked ``is_classifier``, else the last conv/linear layer), and those of every conv/linear
layer not in ``ctx.layers``, are ignored, so groups that would touch them are left alone and the
model's output shape is kept.

``PruneConfig.compression`` (whole-model parameter ratio) works too: removing a channel also
shrinks its consumers' inputs, so the channel sparsity whose pruned model has ``total / c``
parameters is found by bisection over the allocation, counting parameters from the groups without
surgery (:func:`params_after`).

Sparsity semantics: the target is the fraction of prunable *output channels* removed, counted over
the conv/linear layers of the prunable groups (a channel shared by k coupled layers counts k
times). A group's channel importance is the sum over its prunable member layers of the criterion's
per-channel score (``method.unit_scores(ctx, "channel")``); for the global allocation each group's
scores are divided by their mean absolute value (Torch-Pruning's ``normalizer="mean"``) unless the
method's ``normalize_channels`` is False. A coupled group gets the mean of its members' per-layer
ratios (per_layer, mrs). Every group keeps at least one channel.

Option ``round_to`` (in ``PruneConfig.options``, any method): every group keeps a multiple of this
many channels (the nearest to the allocation's count, ties up, at least ``round_to`` unless the group
is smaller), chosen by the same scores. CPU kernels (oneDNN) work on blocks of 8 or 16 channels, so
11 channels cost about as much as 16; rounding turns the MAC saving into time, at the price of an
achieved sparsity that deviates from the target (the report gives the achieved value).

The result is an ordinary, smaller ``nn.Module``. Its ``state_dict`` no longer fits the dense
architecture: rebuild the dense model and call ``loading.resize_to_state_dict_`` (or
``loading.load_pruned_state_dict_``) before loading it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from .._torch import count_params
from ..errors import ConfigError
from .allocation import allocate, has_ratios, layer_ratios
from .context import PruneContext, PruneReport, build_report
from .masks import (
    PRUNABLE_TYPES,
    MaskParametrization,
    effective_weight,
    fold_masks_,
    is_classifier,
    parametrizations_of,
)
from .options import OptionCheck, positive_int

__all__ = ["ChannelScorer", "STRUCTURED_OPTIONS", "STRUCTURED_OPTION_CHECKS", "prune_channels_",
           "channel_groups", "params_after"]

# PruneConfig.options keys of the channel surgery (any method, granularity "channel" only)
STRUCTURED_OPTIONS: dict[str, Any] = {"round_to": None}
STRUCTURED_OPTION_CHECKS: dict[str, OptionCheck] = {"round_to": positive_int(allow_none=True)}


class ChannelScorer(Protocol):
    """What :func:`prune_channels_` needs of a pruning method."""

    @property
    def normalize_channels(self) -> bool: ...

    def unit_scores(self, ctx: PruneContext, granularity: str) -> dict[str, torch.Tensor]: ...

    def extra_report(self) -> dict[str, Any]: ...


class _ChannelGroup:
    """One coupled set of channels.

    Attributes:
        group: the Torch-Pruning group (``group.prune(idxs=root indices)`` removes channels).
        size: channels of the group's root layer.
        members: ``[(layer name, member channel idxs, root idxs)]`` of the prunable conv/linear
            layers whose *output* channels the group holds.
        deps: ``[(module, "out" | "in", root idxs)]`` of every tensor the group touches (BatchNorm
            and the consumers' inputs included), for counting parameters without surgery.
    """

    def __init__(self, group, size: int, members: list[tuple[str, list[int], list[int]]],
                 deps: list[tuple[nn.Module, str, list[int]]]) -> None:
        self.group = group
        self.size = size
        self.members = members
        self.deps = deps


def _build_graph(model: nn.Module, example: torch.Tensor) -> Any:
    was_training = model.training
    model.eval()  # tracing runs a forward pass: keep BatchNorm running stats untouched
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)
    return dg


def channel_groups(model: nn.Module, layers: Mapping[str, nn.Module], example: torch.Tensor):
    """The coupled channel groups whose output channels may all be pruned.

    Args:
        model: the model (unparametrized).
        layers: the prunable layers; every other conv/linear layer's outputs are left alone.
        example: an input batch for tracing.

    Returns:
        ``(dependency graph, list of groups)``; each group lists its prunable member layers with
        their channel indices and the matching indices of the group's root layer.
    """
    dg = _build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    convs = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    # the classifier's outputs are the model's outputs: never removed, even with include_classifier
    heads = [m for m in convs if is_classifier(m)] or convs[-1:]
    ignored = [m for m in convs if m not in layers.values() or any(m is h for h in heads)]
    out: list[_ChannelGroup] = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
        members, deps = [], []
        for i, (dep, idxs) in enumerate(group):
            mod = dep.target.module
            root = [int(r) for r in group[i].root_idxs]
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            if isinstance(mod, nn.Module):
                deps.append((mod, "out" if is_out else "in", root))
            if isinstance(mod, PRUNABLE_TYPES) and is_out:
                members.append((names[mod], _plain(idxs), root))
        if members:
            out.append(_ChannelGroup(group, len(group[0].idxs), members, deps))
    return dg, out


def _plain(idxs) -> list[int]:
    return [int(i.idx) if hasattr(i, "idx") else int(i) for i in idxs]


def prune_channels_(ctx: PruneContext, method: ChannelScorer) -> PruneReport:
    """Scores channels with ``method``, allocates per group, and removes them physically.

    Returns:
        A structural :class:`PruneReport`; ``kept_channels[layer]`` lists the original indices of the
        output channels each pruned layer kept.

    Raises:
        ConfigError: the model carries non-mask parametrizations (quantizers), which channel
            surgery cannot carry over.
    """
    model = ctx.model
    for m in model.modules():
        if parametrize.is_parametrized(m):
            plist = [p for ps in parametrizations_of(m).values() for p in ps]
            if not all(isinstance(p, MaskParametrization) for p in plist):
                raise ConfigError("prune.granularity: channel pruning needs a model without quantizers "
                                  "or other parametrizations; prune before quantize_")
    fold_masks_(model)
    params_before = count_params(model, nonzero=True)
    params_total_before = count_params(model, nonzero=False)
    weights_before = {n: effective_weight(m).numel() for n, m in ctx.layers.items()}

    scores = {n: s.detach().float().cpu() for n, s in method.unit_scores(ctx, "channel").items()}
    _, groups = channel_groups(model, ctx.layers, ctx.example_input(1))
    if not groups:
        raise ConfigError(f"prune.granularity: no output channel of the prunable layers can be removed "
                          f"in this model (layers: {', '.join(ctx.layers)})")

    g_scores: dict[str, torch.Tensor] = {}
    g_sizes: dict[str, int] = {}
    g_ratios: dict[str, float] = {}
    ratios = layer_ratios(ctx) if has_ratios(ctx.cfg.allocation) else None
    for gi, g in enumerate(groups):
        key = str(gi)
        s = torch.zeros(g.size, dtype=torch.float64)
        for name, idxs, root in g.members:
            s.scatter_add_(0, torch.tensor(root), scores[name][idxs].double())
        if method.normalize_channels and ctx.cfg.allocation == "global":
            scale = s.abs().mean()
            if scale > 0:
                s = s / scale
        g_scores[key] = s
        g_sizes[key] = len(g.members)
        if ratios is not None:
            g_ratios[key] = sum(ratios[n] for n, _, _ in g.members) / len(g.members)

    round_to = int(ctx.cfg.options.get("round_to") or 1)  # PruningMethod.check vetted it

    def plan(sparsity: float | None) -> dict[str, torch.Tensor]:
        keep = allocate(g_scores, allocation=ctx.cfg.allocation, sparsity=sparsity,
                        ratios=g_ratios if ratios is not None else None, unit_sizes=g_sizes, min_keep=1)
        if round_to > 1:
            keep = {k: _round_keep(v, g_scores[k], round_to) for k, v in keep.items()}
        return keep

    if ctx.sparsity is None and ctx.cfg.compression is not None:
        ctx.sparsity = _sparsity_for_compression(model, groups, plan, ctx.cfg.compression)
    keep = plan(ctx.sparsity)

    kept_channels: dict[str, list[int]] = {}
    out_before: dict[str, int] = {}
    for gi, g in enumerate(groups):
        k = keep[str(gi)]
        for name, idxs, root in g.members:
            out_before[name] = _out_channels(ctx.layers[name])
            kept_channels[name] = sorted(i for i, r in zip(idxs, root) if bool(k[r]))
        removed = torch.nonzero(~k).flatten().tolist()
        if removed:
            g.group.prune(idxs=removed)
    params_total_after = count_params(model, nonzero=False)
    extra = {**method.extra_report(), "groups": len(groups),
             "compression": params_total_after and params_total_before / params_total_after,
             "group_sizes": [g.size for g in groups],
             "group_kept": [int(keep[str(i)].sum()) for i in range(len(groups))]}
    return build_report(ctx, params_before=params_before, structural=True, kept_channels=kept_channels,
                        out_channels_before=out_before, weights_before=weights_before, extra=extra)


def _round_keep(keep: torch.Tensor, scores: torch.Tensor, round_to: int) -> torch.Tensor:
    """Keeps the nearest multiple of ``round_to`` channels (ties up), the highest-scoring ones;
    channels the allocation dropped as already dead (-inf) stay dropped first."""
    size, n = keep.numel(), int(keep.sum())
    if size <= round_to:
        return keep
    lower = max(round_to, (n // round_to) * round_to)
    upper = min(size, lower + round_to) if n > lower else lower
    n_new = upper if (upper - n) <= (n - lower) else lower
    order = torch.sort(scores.float(), stable=True).indices  # ascending; keep the tail
    out = torch.zeros_like(keep)
    out[order[size - n_new:]] = True
    return out


def params_after(model: nn.Module, groups: list[_ChannelGroup], keep: Mapping[str, torch.Tensor]) -> int:
    """Parameters of ``model`` once each group ``str(i)`` keeps ``keep[str(i)]``, without surgery.

    Conv / linear / BatchNorm tensors shrink with the output and input channels their groups
    remove (depthwise convs by their outputs only); other modules' parameters are unchanged.
    """
    out_rm: dict[nn.Module, int] = {}
    in_rm: dict[nn.Module, int] = {}
    for gi, g in enumerate(groups):
        dropped = ~keep[str(gi)]
        for mod, side, root in g.deps:
            n = int(dropped[torch.tensor(root, dtype=torch.long)].sum()) if root else 0
            table = out_rm if side == "out" else in_rm
            table[mod] = table.get(mod, 0) + n
    total = 0
    for m in model.modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        if own == 0:
            continue
        o, i = out_rm.get(m, 0), in_rm.get(m, 0)
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            w = effective_weight(m)
            k = w[0, 0].numel()
            new_o = w.shape[0] - o
            if m.groups > 1 and m.groups == m.in_channels:  # depthwise: inputs follow outputs
                weight = new_o * w.shape[1] * k
            else:
                weight = new_o * ((m.in_channels - i) // m.groups) * k
            total += weight + (new_o if m.bias is not None else 0)
        elif isinstance(m, nn.Linear):
            new_o = m.out_features - o
            total += new_o * (m.in_features - i) + (new_o if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            total += 2 * (m.num_features - max(o, i))
        else:
            total += own
    return total


def _sparsity_for_compression(model: nn.Module, groups: list[_ChannelGroup],
                              plan: Callable[[float], dict[str, torch.Tensor]], compression: float) -> float:
    """The channel sparsity whose pruned model has ``total / compression`` parameters (ShrinkBench's
    whole-model ratio), by bisection over the allocation's monotone channel sparsity.

    Raises:
        ConfigError: even the sparsest allowed plan (one channel per group) keeps too many parameters.
    """
    total = count_params(model, nonzero=False)
    target = total / compression
    lo, hi = 0.0, 1.0 - 1e-9
    if params_after(model, groups, plan(hi)) > target:
        limit = total / params_after(model, groups, plan(hi))
        raise ConfigError(f"prune.compression: {compression} cannot be reached by removing channels "
                          f"(at most {limit:.3f} keeping one channel per group); expected a smaller ratio")
    best, best_err = 0.0, abs(params_after(model, groups, plan(0.0)) - target)
    for _ in range(40):
        mid = (lo + hi) / 2
        n = params_after(model, groups, plan(mid))
        if abs(n - target) < best_err:
            best, best_err = mid, abs(n - target)
        if n > target:
            lo = mid
        else:
            hi = mid
    return best


def _out_channels(m: nn.Module) -> int:
    return int(effective_weight(m).shape[0])  # Linear: out_features; conv: out_channels
