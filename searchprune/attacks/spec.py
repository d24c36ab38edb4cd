"""Attacks named with their options, ``NAME[:key=value,...]``, and one pass that scores a suite of them.

``autoattack:version=quick`` or ``square:queries=5000`` name a registered attack and the options it
runs with, so a config or a command line can state a budget (and a stored result can say it ran a
reduced one). :func:`suite_accuracy` scores clean accuracy, each attack and the per-example worst
case over all of them in one pass over the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._torch import eval_mode
from ..config import ThreatModel
from ..errors import ConfigError
from ._base import get_attack, predict
from .evaluate import iter_batches

__all__ = ["AttackSpec", "parse_attack", "suite_accuracy"]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack and the options it runs with (``NAME[:key=value,...]``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name


def _value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_attack(text: str) -> AttackSpec:
    """``"autoattack:version=quick,n_queries=1000"`` -> ``AttackSpec("autoattack", {...})``.

    Raises:
        ConfigError: an unregistered attack, or an option that is not ``key=value``.
    """
    name, _, rest = text.strip().partition(":")
    get_attack(name)  # unknown names fail here, naming the registered ones
    options: dict[str, Any] = {}
    for piece in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = piece.partition("=")
        if not eq or not key:
            raise ConfigError(f"attack {text!r}: option {piece!r} is not key=value")
        options[key.strip()] = _value(value.strip())
    return AttackSpec(name, options)


def suite_accuracy(model: torch.nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], threat: ThreatModel,
                   specs: Sequence[AttackSpec | str], *, max_images: int | None = None) -> dict[str, Any]:
    """Clean accuracy, each attack's and the per-example worst case over all of them.

    Args:
        model: the classifier (modes restored afterwards).
        loader: ``(x, y)`` batches in [0, 1].
        threat: the threat model every attack runs under (its norm, eps and clamp; PGD's steps).
        specs: the attacks (``AttackSpec`` or ``NAME[:key=value,...]``); a name given twice runs once.
        max_images: the first this many images (None: all).

    Returns:
        ``{"n", "clean", "worst", "acc": {name: accuracy}}``.

    Raises:
        ConfigError: a bad spec, or a loader that gives no images.
    """
    parsed = {s.name: s for s in (parse_attack(s) if isinstance(s, str) else s for s in specs)}
    fns = {name: get_attack(name) for name in parsed}
    counts = dict.fromkeys(["clean", "worst", *parsed], 0)
    n = 0
    with eval_mode(model):
        for x, y in iter_batches(model, loader, max_images):
            ok = predict(model, x) == y
            worst = ok.clone()
            counts["clean"] += int(ok.sum())
            for name, spec in parsed.items():
                ok_a = predict(model, fns[name](model, x, y, threat, **spec.options)) == y
                counts[name] += int(ok_a.sum())
                worst &= ok_a
            counts["worst"] += int(worst.sum())
            n += len(y)
    if n == 0:
        raise ConfigError("suite_accuracy: the loader gave no images")
    return {"n": n, "clean": counts["clean"] / n, "worst": counts["worst"] / n,
            "acc": {name: counts[name] / n for name in parsed}}
