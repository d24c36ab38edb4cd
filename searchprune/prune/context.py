"""What a pruning method reads (:class:`PruneContext`) and what ``prune_`` returns
(:class:`PruneReport`, measured by :func:`build_report`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._torch import count_params
from ..config import PruneConfig, ThreatModel, TrainConfig
from ..errors import ConfigError
from .masks import effective_weight, layer_sparsity

__all__ = ["PruneContext", "PruneReport", "build_report"]


@dataclass
class PruneContext:
    """Everything a method may read while pruning.

    Attributes:
        model: the model being pruned (in place).
        layers: ``{name: module}`` of prunable layers (already filtered by the method's
            ``select_layers``).
        cfg: the prune config.
        input_shape: ``(C, H, W)`` of one input.
        sparsity: the resolved target (fraction of prunable weights, or of prunable output channels
            for channel granularity) for global/uniform/mrs/learned; None for per_layer.
        loader: iterable of ``(x in [0, 1] (B, C, H, W), y (B,))`` batches, or None.
        threat: the study's threat model, or None.
        train_cfg: a training recipe for methods that train (HYDRA, in-train pruning), or None.
        cache_dir: where a method may cache expensive statistics, or None.
        device: the device of the model's parameters.
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    cfg: PruneConfig
    input_shape: tuple[int, ...]
    sparsity: float | None
    loader: Any = None
    threat: ThreatModel | None = None
    train_cfg: TrainConfig | None = None
    cache_dir: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def batches(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields up to ``max_batches`` (all if None) ``(x, y)`` batches of ``loader`` on ``device``.

        Raises:
            ConfigError: no loader was given.
        """
        if self.loader is None:
            raise ConfigError(f"prune.method {self.cfg.method!r} scores weights on data: pass a loader")
        for i, (x, y) in enumerate(self.loader):
            if max_batches is not None and i >= max_batches:
                break
            yield x.to(self.device), y.to(self.device)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random input ``(batch, *input_shape)`` in [0, 1] on ``device`` (graph tracing)."""
        return torch.rand((batch, *self.input_shape), device=self.device)


@dataclass
class PruneReport:
    """What ``prune_`` did.

    Attributes:
        method, granularity, allocation: as configured.
        target_sparsity: the resolved target (None for per_layer).
        sparsity: achieved, in the config's units: fraction of prunable weights that are zero
            (weight/kernel), or fraction of prunable output channels removed (channel).
        weight_sparsity: fraction of prunable-layer weights removed or zero, whatever the
            granularity (for channel pruning this counts the weights lost to removed input
            channels too).
        layer_sparsity: ``{layer: achieved}`` in the same units as ``sparsity``.
        structural: True when channels were removed physically (the state_dict changed shape).
        kept_channels: ``{layer: original indices of the kept output channels}`` (channel only).
        params_before, params_after: nonzero parameter counts of the whole model.
        seconds: wall time of ``prune_``.
        extra: method-specific diagnostics (JSON-safe).
    """

    method: str
    granularity: str
    allocation: str
    target_sparsity: float | None
    sparsity: float
    weight_sparsity: float
    layer_sparsity: dict[str, float]
    structural: bool = False
    kept_channels: dict[str, list[int]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data."""
        return dataclasses.asdict(self)


def build_report(
    ctx: PruneContext,
    *,
    params_before: int,
    structural: bool = False,
    kept_channels: Mapping[str, list[int]] | None = None,
    out_channels_before: Mapping[str, int] | None = None,
    weights_before: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PruneReport:
    """Measures the pruned model and fills a :class:`PruneReport`.

    Args:
        ctx: the context the method pruned.
        params_before: ``count_params(model, nonzero=True)`` taken before pruning.
        structural: channels were removed physically; then ``kept_channels`` (original indices of
            kept output channels), ``out_channels_before`` (output channels before pruning, for the
            layers whose channels could be pruned) and ``weights_before`` (every prunable layer's
            weight count before pruning) are required.
        extra: method diagnostics (JSON-safe).
    """
    zero_frac = layer_sparsity(ctx.model, ctx.layers)
    if structural:
        if kept_channels is None or out_channels_before is None or weights_before is None:
            raise ValueError("a structural report needs kept_channels, out_channels_before, weights_before")
        kept_w = sum(int((effective_weight(m) != 0).sum().item()) for m in ctx.layers.values())
        weight_sp = 1.0 - kept_w / max(1, sum(weights_before.values()))
        per_layer = {n: 0.0 for n in ctx.layers}
        for n, before in out_channels_before.items():
            per_layer[n] = 1.0 - len(kept_channels[n]) / before
        kept_total = sum(len(kept_channels[n]) for n in out_channels_before)
        sparsity = 1.0 - kept_total / max(1, sum(out_channels_before.values()))
    else:
        sizes = {n: effective_weight(m).numel() for n, m in ctx.layers.items()}
        zeros = sum(zero_frac[n] * sizes[n] for n in sizes)
        weight_sp = zeros / max(1, sum(sizes.values()))
        per_layer, sparsity = zero_frac, weight_sp
    return PruneReport(
        method=ctx.cfg.method,
        granularity=ctx.cfg.granularity,
        allocation=ctx.cfg.allocation,
        target_sparsity=ctx.sparsity,
        sparsity=float(sparsity),
        weight_sparsity=float(weight_sp),
        layer_sparsity={k: float(v) for k, v in per_layer.items()},
        structural=structural,
        kept_channels={k: [int(i) for i in v] for k, v in (kept_channels or {}).items()},
        params_before=int(params_before),
        params_after=count_params(ctx.model, nonzero=True),
        extra=dict(extra or {}),
    )
