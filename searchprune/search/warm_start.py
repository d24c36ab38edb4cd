"""Warm start: a new study begins with the feasible Pareto set of an earlier one.

``study create --warm-start OTHER`` enqueues, as the new study's first trials, the parameters of
every feasible Pareto-optimal trial of ``OTHER`` that the new space can express: each parameter the
new space would ask for (its ``when`` conditions evaluated on the old trial's values) is present
and inside the new range or choices, and the old trial set nothing the new space would not ask
for. The others are reported with the reason and skipped; nothing is silently changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from ..config import ParamSpec
from ..errors import ConfigError
from .space import walk

__all__ = ["WarmStart", "expressible", "warm_start_trials", "WARM_START_ATTR"]

WARM_START_ATTR = "warm_start"


@dataclass
class WarmStart:
    """What a warm start took from the source study.

    Attributes:
        source: the source study's name.
        enqueued: ``(source trial number, params)`` enqueued, in source order.
        skipped: ``{source trial number: reason}`` for Pareto trials the new space cannot express.
    """

    source: str
    enqueued: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-safe record (stored as the new study's ``warm_start`` user attribute)."""
        return {"source": self.source, "enqueued": [n for n, _ in self.enqueued],
                "skipped": {str(n): r for n, r in self.skipped.items()}}


def _fits(spec: ParamSpec, value: Any) -> bool:
    if spec.type == "categorical":
        assert spec.choices is not None
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in spec.choices)
    if spec.type == "fixed":
        return bool(value == spec.value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    assert spec.low is not None and spec.high is not None
    if not spec.low <= value <= spec.high:
        return False
    if spec.type == "int":
        step = int(spec.step) if spec.step else 1
        return float(value).is_integer() and (int(value) - int(spec.low)) % step == 0
    if spec.step:
        k = (value - spec.low) / spec.step
        return abs(k - round(k)) < 1e-9
    return True


def expressible(params: Mapping[str, Any], space: Mapping[str, ParamSpec]) -> tuple[bool, str]:
    """Whether the new ``space`` can propose exactly ``params`` (a stored trial's flat parameters).

    Returns:
        ``(ok, reason)``: the reason names the first parameter that does not fit.
    """
    problems: list[str] = []
    asked: set[str] = set()

    def choose(name: str, spec: ParamSpec) -> dict[str, Any]:
        if spec.per_layer:
            keys = [k for k in params if k.startswith(f"{name}.")]
            if not keys:
                problems.append(f"the new space asks for {name}.<layer>, which the trial did not set")
            for k in keys:
                asked.add(k)
                if not _fits(spec, params[k]):
                    problems.append(f"{k} = {params[k]!r} is outside the new space's {_describe(spec)}")
            return {k: params[k] for k in keys}
        if spec.type == "fixed":
            if name in params and not _fits(spec, params[name]):
                problems.append(f"{name} = {params[name]!r}, the new space fixes it to {spec.value!r}")
            asked.add(name)
            return {name: spec.value}
        asked.add(name)
        if name not in params:
            problems.append(f"the new space asks for {name}, which the trial did not set")
            return {}
        if not _fits(spec, params[name]):
            problems.append(f"{name} = {params[name]!r} is outside the new space's {_describe(spec)}")
        return {name: params[name]}

    walk(space, choose)
    extra = sorted(k for k in params if k not in asked)
    if extra:
        problems.append(f"{extra[0]} = {params[extra[0]]!r} is not a parameter of the new space")
    return (not problems, problems[0] if problems else "expressible")


def _describe(spec: ParamSpec) -> str:
    if spec.type == "categorical":
        return f"choices {list(spec.choices or ())}"
    return f"range [{spec.low}, {spec.high}]" + (f" step {spec.step}" if spec.step else "")


def warm_start_trials(source: optuna.Study, space: Mapping[str, ParamSpec]) -> WarmStart:
    """The feasible Pareto set of ``source`` split into what ``space`` can express and what it cannot.

    Raises:
        ConfigError: the source study has no completed trial.
    """
    done = source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise ConfigError(f"--warm-start {source.study_name!r}: the study has no completed trial to start from")
    out = WarmStart(source=source.study_name)
    for t in sorted(source.best_trials, key=lambda t: t.number):
        if t.user_attrs.get("feasible") is False:  # best_trials already prefers feasible ones; be explicit
            out.skipped[t.number] = "infeasible"
            continue
        ok, reason = expressible(t.params, space)
        if ok:
            out.enqueued.append((t.number, dict(t.params)))
        else:
            out.skipped[t.number] = reason
    return out
