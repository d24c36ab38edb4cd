"""Pruning: ``prune_(model, cfg, ...)``, the registry of criteria, and the model-free ``check``.

Layout (imports flow down this list, never up):

* ``masks.py`` (prunable layers, mask parametrizations, folding) and ``units.py`` (weight / kernel /
  channel units); ``options.py`` (checks of option values); ``context.py`` (PruneContext,
  PruneReport, build_report); ``target.py`` (sparsity from a compression ratio);
* ``allocation/``: the allocation registry (global, uniform, per_layer, mrs, learned);
* ``structured.py`` (physical channel removal) and ``loading.py`` (pruned checkpoints);
* ``method.py``: PruningMethod, its registry and ``check(cfg)``; ``api.py``: ``prune_``;
* one file per criterion (``random``, ``magnitude``, ``gradient``, ``gap``, ``taylor``, ``hessian``,
  ``lamp``, ``l1_filter``, ``hydra``, ``in_train/``), each registering itself with
  ``@register_method``. Every public module of this package is imported here, so a new criterion is
  one file, picked up by ``list_methods()`` and the contract tests the day it lands.

The names of granularities are :data:`GRANULARITIES`; the names of allocations are
``list_allocations()`` (the registry). ``check_config(cfg)`` validates a ``PruneConfig`` with no
model or data (what ``prune_`` runs first, and what a study runs at creation).

Example:
    >>> from searchprune.config import PruneConfig
    >>> report = prune_(model, PruneConfig(method="magnitude", sparsity=0.8), input_shape=(1, 28, 28))
    >>> report.sparsity  # fraction of prunable weights now zero
    0.8
"""

from __future__ import annotations

import importlib
import pkgutil

from .allocation import allocate, get_allocation, list_allocations, register_allocation
from .api import prune_
from .context import PruneContext, PruneReport, build_report
from .loading import load_pruned_state_dict_, resize_to_state_dict_
from .masks import (
    Mask,
    MaskParametrization,
    apply_mask_,
    apply_masks_,
    fold_masks_,
    get_mask,
    layer_sparsity,
    prunable_layers,
    restore_masks_,
    weight_param,
)
from .method import GRANULARITIES, PruningMethod, check_config, get_method, list_methods, register_method
from .target import keep_fraction_from_compression, resolve_sparsity

__all__ = [
    "prune_", "list_methods", "register_method", "get_method", "prunable_layers", "fold_masks_",
    "layer_sparsity", "PruneReport", "PruneContext", "PruningMethod", "Mask", "MaskParametrization",
    "apply_mask_", "apply_masks_", "get_mask", "restore_masks_", "build_report", "allocate",
    "resolve_sparsity", "keep_fraction_from_compression", "resize_to_state_dict_",
    "load_pruned_state_dict_",
    # new with the layered layout
    "check_config", "GRANULARITIES", "list_allocations", "get_allocation", "register_allocation",
    "weight_param",
]


def _import_method_modules() -> None:
    """Imports every public module of this package, so their ``@register_method`` runs."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_method_modules()
