"""``prune_``: validate the config (``PruningMethod.check``), build the :class:`PruneContext`, run
the method, time it. The method's ``apply`` does the pruning (the default pipeline: scores ->
allocation -> masks or channel surgery, in ``method.py``)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .._torch import model_device
from ..config import PruneConfig, ThreatModel, TrainConfig
from ..errors import ConfigError
from .context import PruneContext, PruneReport
from .masks import prunable_layers
from .method import get_method
from .target import resolve_sparsity

__all__ = ["prune_"]


def prune_(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    input_shape: tuple[int, ...],
    loader: Any = None,
    threat: ThreatModel | None = None,
    train_cfg: TrainConfig | None = None,
    cache_dir: Any = None,
) -> PruneReport:
    """Prunes ``model`` in place as ``cfg`` says.

    Sparsity semantics: ``cfg.sparsity`` is the fraction of prunable weights removed (conv/linear
    weights from :func:`prunable_layers`, minus what the method's ``select_layers`` drops; biases and
    BatchNorm are never pruned); with ``granularity="channel"`` it is the fraction of prunable output
    channels removed, physically. ``cfg.compression`` is ShrinkBench's whole-model ratio.

    Args:
        model: the network; weights are masked (weight/kernel) or channels removed (channel).
        cfg: method, granularity, allocation, target, layer selection and method options.
        input_shape: ``(C, H, W)`` of one input (graph tracing for channel pruning, MAC budgets).
        loader: ``(x in [0, 1], y)`` batches, required by data-driven criteria (``needs_data``).
        threat: the study's threat model, required by adversarial criteria (``needs_threat``).
        train_cfg: training recipe for learned methods.
        cache_dir: where methods may cache statistics.

    Returns:
        A :class:`PruneReport` with achieved per-layer and overall sparsity.

    Raises:
        ConfigError: unknown method (lists ``list_methods()``); whatever ``PruningMethod.check`` finds
            (a granularity or allocation the method does not support, an unknown or out-of-range
            option); missing loader or threat; a bad layer name or compression.
    """
    t0 = time.perf_counter()
    method_cls = get_method(cfg.method)
    method_cls.check(cfg)  # the same model-free validation a study runs at creation
    # options of the allocation (e.g. mrs's r_max) travel in the same mapping; the method sees its own
    method = method_cls(method_cls.own_options(cfg))
    if method_cls.needs_data and loader is None:
        raise ConfigError(f"prune.method: {cfg.method!r} scores weights on data; pass loader=")
    if method_cls.needs_threat and threat is None:
        raise ConfigError(f"prune.method: {cfg.method!r} attacks the model while scoring; pass threat=")
    layers = method.select_layers(prunable_layers(
        model, include_classifier=cfg.include_classifier, include_first=cfg.include_first))
    if not layers:
        raise ConfigError(f"prune: the model has no prunable layer for method {cfg.method!r} "
                          f"(include_classifier={cfg.include_classifier}, include_first={cfg.include_first})")
    device = model_device(model) or torch.device("cpu")
    ctx = PruneContext(
        model=model, layers=layers, cfg=cfg, input_shape=tuple(input_shape),
        sparsity=resolve_sparsity(model, cfg, layers), loader=loader, threat=threat,
        train_cfg=train_cfg, cache_dir=cache_dir, device=device,
    )
    report = method.apply(ctx)
    report.seconds = time.perf_counter() - t0
    return report
