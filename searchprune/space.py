"""The only place where an ``optuna.Trial`` becomes plain trial parameters.

A study's ``space`` maps dotted parameter names (``prune.sparsity``, ``finetune.recipe``,
``prune.options.n_batches``) to :class:`~searchprune.config.ParamSpec`. ``suggest`` walks the
space in order:

- a parameter with ``when`` exists only if every named parameter was already chosen with one of
  the allowed values (so a method's hyperparameters exist only when that method is chosen);
- a ``per_layer`` parameter expands to one parameter per prunable layer
  (``prune.layer_sparsity.<layer>``);
- a pinned (fixed) value is included without asking Optuna.

Replaying a stored trial is the same walk over ``optuna.trial.FixedTrial(trial.params)``, so a
live trial, an export and a unit test all produce identical :class:`TrialParams`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from .config import ParamSpec, TrialDefaults, TrialParams, trial_params_from_flat
from .errors import ConfigError

__all__ = ["suggest", "suggest_params", "replay_params", "validate_space"]


def validate_space(space: Mapping[str, ParamSpec]) -> None:
    """Checks that every ``when`` refers to a parameter defined earlier in the space."""
    seen: set[str] = set()
    for name, spec in space.items():
        for cond in spec.when:
            if cond not in seen:
                raise ConfigError(
                    f"space.{name}.when: refers to {cond!r}, which is not a parameter defined before it; "
                    f"expected one of: {', '.join(sorted(seen)) or '(none)'}"
                )
        if spec.per_layer and spec.type not in ("float", "int", "categorical", "fixed"):
            raise ConfigError(f"space.{name}: per_layer needs a range, choices or a value")
        seen.add(name)


def _ask(trial: optuna.Trial | optuna.trial.FixedTrial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "fixed":
        return spec.value
    if spec.type == "categorical":
        assert spec.choices is not None
        return trial.suggest_categorical(name, list(spec.choices))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        step = int(spec.step) if spec.step else 1
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, space: Mapping[str, ParamSpec], *,
            layer_names: Sequence[str] = ()) -> dict[str, Any]:
    """Samples the space into flat dotted parameters (conditional parameters only when active)."""
    chosen: dict[str, Any] = {}
    for name, spec in space.items():
        if any(chosen.get(cond, _MISSING) not in allowed for cond, allowed in spec.when.items()):
            continue
        if spec.per_layer:
            if not layer_names:
                raise ConfigError(f"space.{name}: per_layer needs the model's prunable layers, none were given")
            for layer in layer_names:
                chosen[f"{name}.{layer}"] = _ask(trial, f"{name}.{layer}", spec)
        else:
            chosen[name] = _ask(trial, name, spec)
    return chosen


_MISSING = object()


def suggest_params(trial: optuna.Trial | optuna.trial.FixedTrial, space: Mapping[str, ParamSpec],
                   defaults: TrialDefaults, *, seed: int, layer_names: Sequence[str] = ()) -> TrialParams:
    """``suggest`` followed by merging into the study's defaults: the TrialParams a trial runs."""
    return trial_params_from_flat(defaults, suggest(trial, space, layer_names=layer_names), seed=seed)


def replay_params(stored: Mapping[str, Any], space: Mapping[str, ParamSpec], defaults: TrialDefaults, *,
                  seed: int, layer_names: Sequence[str] = ()) -> TrialParams:
    """Rebuilds a stored trial's TrialParams from its ``params`` (through ``FixedTrial``)."""
    return suggest_params(optuna.trial.FixedTrial(dict(stored)), space, defaults, seed=seed,
                          layer_names=layer_names)
