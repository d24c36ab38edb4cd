"""The attack registry and the evaluation helpers every attack shares.

An attack is a function ``fn(model, x, y, threat, **options) -> x_adv`` registered by name.
"""

from __future__ import annotations

from collections.abc import Callable

from ..utils import Registry

AttackFn = Callable[..., "torch.Tensor"]  # noqa: F821

ATTACKS: Registry[AttackFn] = Registry("attack")


def register_attack(name: str) -> Callable[[AttackFn], AttackFn]:
    """Registers ``fn(model, x, y, threat: ThreatModel, **options) -> x_adv`` under ``name``."""
    return ATTACKS.register(name)


def list_attacks() -> list[str]:
    return ATTACKS.names()
