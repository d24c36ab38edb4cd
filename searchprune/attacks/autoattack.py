"""AutoAttack (Croce & Hein, ICML 2020): the field's reference robustness evaluation, an ensemble of
four complementary parameter-free attacks run in sequence, each on the points still robust.

The "standard" version, as in the paper's code:

1. APGD-CE: 100 iterations, 1 restart (:func:`~searchprune.attacks.apgd.apgd`, ``loss="ce"``);
2. APGD-T: targeted DLR loss towards each of the 9 most likely wrong classes, 100 iterations each
   (``loss="dlr-targeted"``): scale-invariant, so a saturated softmax cannot hide its gradient;
3. FAB-T: the targeted minimum-norm boundary attack, 9 targets, 100 iterations
   (:func:`~searchprune.attacks.fab.fab`): follows the decision boundary, not a loss;
4. Square: 5,000 queries, ``p_init = 0.8``, the unscaled p schedule
   (:func:`~searchprune.attacks.square.square`): gradient-free, immune to any gradient masking.

An image is robust only if it is classified correctly clean and survives all four (the
per-example worst case). With fewer than 10 classes the targeted attacks use ``classes - 1``
targets. Square is L-inf only here, so an L2 evaluation runs the first three attacks and its
flags have no "square" entry.

Budgets: ``version="standard"`` is the configuration published results use. ``version="quick"``
runs the same four attacks with 25 iterations, 3 targets and 1,000 queries (about 10x cheaper)
for quick checks during a search; its numbers are *not* AutoAttack numbers and must be reported
as "AutoAttack (quick)". ``iters``, ``n_targets`` and ``n_queries`` override either version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ..config import ThreatModel
from ..errors import ConfigError
from ._base import Precision, call_with_options, conv_layout, eval_mode, predict, register_attack
from .apgd import apgd
from .fab import fab
from .square import square

__all__ = ["AutoAttackResult", "autoattack", "AUTOATTACK_VERSIONS"]

# version -> (iterations of APGD / FAB, target classes of APGD-T / FAB-T, Square queries)
AUTOATTACK_VERSIONS: dict[str, tuple[int, int, int]] = {"standard": (100, 9, 5000), "quick": (25, 3, 1000)}


@dataclass(frozen=True)
class AutoAttackResult:
    """What one AutoAttack run found.

    Attributes:
        x_adv: per example the first adversarial input found (the worst case), else the clean input.
        flags: "clean" and then each attack's name ("apgd-ce", "apgd-t", "fab-t", "square") ->
            bool (B,): still robust after that attack and all before it, as AutoAttack reports.
    """

    x_adv: torch.Tensor
    flags: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        """bool (B,): robust to the whole suite."""
        return list(self.flags.values())[-1]

    def accuracies(self) -> dict[str, float]:
        """Each entry of ``flags`` as a fraction of the images: clean and robust accuracy after
        each attack; the last value is AutoAttack's robust accuracy."""
        return {k: float(v.float().mean()) if v.numel() else 0.0 for k, v in self.flags.items()}


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
               version: str = "standard", iters: int | None = None, n_targets: int | None = None,
               n_queries: int | None = None, seed: int = 0, precision: Precision = "fp32") -> AutoAttackResult:
    """Runs AutoAttack's attacks in sequence, each on the images no earlier one broke.

    Args:
        model: classifier taking [0, 1] inputs; put in eval mode for the attack, modes restored.
        x: clean inputs (B, C, H, W) in [0, 1], on the model's device.
        y: true labels (B,).
        threat: norm, eps and clamp of the evaluation (the PGD step settings are not used).
        version: "standard" (100 iterations, 9 targets, 5,000 queries: the published
            configuration) or "quick" (25 iterations, 3 targets, 1,000 queries; not comparable
            with published AutoAttack numbers).
        iters: overrides the iterations of APGD-CE, APGD-T (per target) and FAB-T (per target).
        n_targets: overrides the target classes of APGD-T and FAB-T.
        n_queries: overrides Square's queries.
        seed: seeds every attack's private generator.
        precision: passed to every attack; robustness is always decided in fp32.

    Returns:
        An :class:`AutoAttackResult`.

    Raises:
        ConfigError: an unknown version or a budget below 1.

    Example:
        >>> res = autoattack(model, x, y, ThreatModel(eps=8 / 255))
        >>> res.accuracies()  # {'clean': ..., 'apgd-ce': ..., 'apgd-t': ..., 'fab-t': ..., 'square': ...}
    """
    if version not in AUTOATTACK_VERSIONS:
        raise ConfigError(f"autoattack version: expected one of {', '.join(AUTOATTACK_VERSIONS)}, got {version!r}")
    d_iters, d_targets, d_queries = AUTOATTACK_VERSIONS[version]
    iters = d_iters if iters is None else iters
    n_targets = d_targets if n_targets is None else n_targets
    n_queries = d_queries if n_queries is None else n_queries
    if iters < 1 or n_targets < 1 or n_queries < 1:
        raise ConfigError(f"autoattack: expected iters, n_targets and n_queries >= 1; got iters={iters}, "
                          f"n_targets={n_targets}, n_queries={n_queries}")
    eps, norm = threat.eps, threat.norm
    suite: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = [
        ("apgd-ce", lambda xs, ys: apgd(model, xs, ys, eps=eps, norm=norm, steps=iters, clamp=threat.clamp,
                                        seed=seed, precision=precision, loss="ce")),
        ("apgd-t", lambda xs, ys: apgd(model, xs, ys, eps=eps, norm=norm, steps=iters, clamp=threat.clamp,
                                       seed=seed, precision=precision, loss="dlr-targeted", n_targets=n_targets)),
        ("fab-t", lambda xs, ys: fab(model, xs, ys, eps=eps, norm=norm, steps=iters, targeted=True,
                                     n_targets=n_targets, seed=seed, precision=precision)),
    ]
    if norm == "linf":
        suite.append(("square", lambda xs, ys: square(model, xs, ys, eps=eps, queries=n_queries, p_init=0.8,
                                                      seed=seed, clamp=threat.clamp, precision=precision,
                                                      rescale_schedule=False)))
    x = x.detach()
    with eval_mode(model), conv_layout(model):
        ok = predict(model, x) == y  # (B,) still robust
        flags = {"clean": ok.clone()}
        x_adv = x.clone()
        for name, attack in suite:
            idx = torch.nonzero(ok).flatten()
            if len(idx):
                xa = attack(x[idx], y[idx])
                fooled = predict(model, xa) != y[idx]  # fp32, where accuracy is scored
                x_adv[idx[fooled]] = xa[fooled]
                ok[idx[fooled]] = False
            flags[name] = ok.clone()
    return AutoAttackResult(x_adv=x_adv, flags=flags)


@register_attack("autoattack")
def autoattack_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                      **options: Any) -> torch.Tensor:
    """Registered AutoAttack (standard unless ``version="quick"``): the worst-case inputs, so
    ``evaluate(..., attacks=("autoattack",))`` scores AutoAttack's robust accuracy. ``options``
    (``version``, ``iters``, ``n_targets``, ``n_queries``, ``seed``, ``precision``) go to
    :func:`autoattack`."""
    # call_with_options only checks option names; it returns whatever autoattack returns
    result = cast(AutoAttackResult, call_with_options(cast(Callable[..., torch.Tensor], autoattack), "autoattack",
                                                      {}, dict(options), model, x, y, threat))
    return result.x_adv
