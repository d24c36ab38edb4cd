"""Shim: the masking checks live in :mod:`searchprune.attacks.masking`.

# shim: removed once trial.py imports attacks.masking and passes CheckBudget / MaskingThresholds
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .attacks import masking as _masking
from .attacks.masking import FLAG_NAMES, CheckBudget, MaskingReport, MaskingThresholds, zero_grad_fraction
from .config import ThreatModel

__all__ = ["MaskingReport", "masking_checks", "masking_flags", "zero_grad_fraction", "FLAG_NAMES"]

_BUDGET = {f.name for f in dataclasses.fields(CheckBudget)}
_THRESHOLDS = {f.name for f in dataclasses.fields(MaskingThresholds)}


def masking_checks(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], threat: ThreatModel,
                   **kwargs: Any) -> MaskingReport:
    """The old flat-keyword form of :func:`searchprune.attacks.masking.masking_checks`."""
    budget = CheckBudget(**{k: kwargs.pop(k) for k in list(kwargs) if k in _BUDGET})
    thresholds = MaskingThresholds(**{k: kwargs.pop(k) for k in list(kwargs) if k in _THRESHOLDS})
    return _masking.masking_checks(model, loader, threat, budget=budget, thresholds=thresholds, **kwargs)


def masking_flags(**kwargs: Any) -> dict[str, bool]:
    """The old flat-keyword form of :func:`searchprune.attacks.masking.masking_flags`."""
    thresholds = MaskingThresholds(**{k: kwargs.pop(k) for k in list(kwargs) if k in _THRESHOLDS})
    return _masking.masking_flags(thresholds=thresholds, **kwargs)
