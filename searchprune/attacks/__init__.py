"""Adversarial attacks and robust evaluation.

Every registered attack has the signature ``fn(model, x, y, threat: ThreatModel, **options) ->
x_adv``; :func:`evaluate` runs any of them by name. The keyword-level functions (:func:`pgd`,
:func:`fgsm`, ...) are for code that sets every knob itself (training, pruning criteria).

Example:
    >>> threat = ThreatModel(eps=0.1, alpha=0.01, steps=20)
    >>> result = evaluate(model, loader, threat, attacks=("fgsm", "pgd"), max_images=1000)
    >>> result.clean, result.robust["pgd"], result.worst
"""

from __future__ import annotations

# Importing each attack module registers its attacks; adding an attack = one module + one line.
from . import apgd as _apgd_module  # noqa: F401
from . import autoattack as _autoattack_module  # noqa: F401
from . import fab as _fab_module  # noqa: F401
from . import fgsm as _fgsm_module  # noqa: F401
from . import pgd as _pgd_module  # noqa: F401
from . import pgd_scaled as _pgd_scaled_module  # noqa: F401
from . import square as _square_module  # noqa: F401
from . import transfer as _transfer_module  # noqa: F401
from ._base import (
    Precision,
    ascent_step,
    autocast,
    conv_layout,
    eval_mode,
    fast_layout,
    get_attack,
    input_grad,
    list_attacks,
    predict,
    project,
    random_start,
    register_attack,
)
from .apgd import apgd
from .evaluate import (
    EvalResult,
    accuracy,
    accuracy_on_batches,
    evaluate,
    iter_batches,
    robust_accuracy,
    transfer_accuracy,
)
from .fgsm import fgsm
from .masking import CheckBudget, MaskingReport, MaskingThresholds, masking_checks, masking_flags
from .pgd import pgd
from .square import square
from .transfer import transfer_examples

__all__ = [
    "CheckBudget", "EvalResult", "MaskingReport", "MaskingThresholds", "Precision", "accuracy",
    "accuracy_on_batches", "apgd", "ascent_step", "autocast", "conv_layout", "eval_mode", "evaluate",
    "fast_layout", "fgsm", "get_attack", "input_grad", "iter_batches", "list_attacks", "masking_checks",
    "masking_flags", "pgd", "predict", "project", "random_start", "register_attack", "robust_accuracy",
    "square", "transfer_accuracy", "transfer_examples",
]
