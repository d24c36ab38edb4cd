"""Pruning: ``prune_(model, cfg, ...)`` and the registry of criteria.

Every public module of this package (a file not starting with ``_``) is imported here, so a new
criterion is one file with a ``@register_method("name")`` class and is picked up by ``list_methods()``
and the contract tests the day it lands. See ``_base.py`` for the method API and the sparsity
semantics.

Example:
    >>> from searchprune.config import PruneConfig
    >>> report = prune_(model, PruneConfig(method="magnitude", sparsity=0.8), input_shape=(1, 28, 28))
    >>> report.sparsity  # fraction of prunable weights now zero
    0.8
"""

from __future__ import annotations

import importlib
import pkgutil

from ._allocation import allocate, keep_fraction_from_compression, resolve_sparsity
from ._base import (
    Mask,
    MaskParametrization,
    PruneContext,
    PruneReport,
    PruningMethod,
    apply_mask_,
    apply_masks_,
    build_report,
    fold_masks_,
    get_mask,
    get_method,
    layer_sparsity,
    list_methods,
    prunable_layers,
    prune_,
    register_method,
    restore_masks_,
)
from ._structured import load_pruned_state_dict_, resize_to_state_dict_

__all__ = [
    "prune_", "list_methods", "register_method", "get_method", "prunable_layers", "fold_masks_",
    "layer_sparsity", "PruneReport", "PruneContext", "PruningMethod", "Mask", "MaskParametrization",
    "apply_mask_", "apply_masks_", "get_mask", "restore_masks_", "build_report", "allocate",
    "resolve_sparsity", "keep_fraction_from_compression", "resize_to_state_dict_",
    "load_pruned_state_dict_",
]



def _import_method_modules() -> None:
    """Imports every public module of this package, so their ``@register_method`` runs."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_method_modules()
