"""The "standard" recipe: cross-entropy on clean batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._api import RecipeContext, register_recipe

__all__ = ["standard"]

@register_recipe("standard")
def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RecipeContext
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the clean batch."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits
