"""Training and fine-tuning: one loop, four recipes (standard, PGD-AT, FGSM-RS, TRADES).

A *recipe* turns one batch into a loss; everything else (optimizer, per-batch learning-rate
schedule, fractional epochs, seeding, progress, devices) is shared by :func:`train_` (in
:mod:`._api`). Adding a recipe is one module with one decorated function, imported below::

    @register_recipe("mine")
    def mine(model, x, y, ctx: RecipeContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits   # (loss, logits the train accuracy is read from)

The base model a study compresses is trained by :func:`train_base_model` (:mod:`.base`).
"""

from __future__ import annotations

# recipe modules register their recipes on import
from . import fast, pgd, standard, trades  # noqa: F401
from ._api import RECIPES, RecipeContext, RecipeFn, list_recipes, register_recipe, scheduled_lr, train_
from .base import model_record, train_base_model

__all__ = [
    "RECIPES", "RecipeContext", "RecipeFn", "list_recipes", "model_record", "register_recipe", "scheduled_lr",
    "train_", "train_base_model",
]
