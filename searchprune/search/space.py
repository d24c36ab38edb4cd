"""The search space: the only place where an ``optuna.Trial`` becomes plain trial parameters.

A study's ``space`` maps dotted parameter names (``prune.sparsity``, ``finetune.recipe``,
``prune.options.n_batches``) to :class:`~searchprune.config.ParamSpec`. :func:`walk` visits the
space in order and is the one place that reads ``when``:

- a parameter with ``when`` exists only if every named parameter was already chosen with one of
  the allowed values (so a method's hyperparameters exist only when that method is chosen);
- a ``per_layer`` parameter expands to one parameter per prunable layer
  (``prune.layer_sparsity.<layer>``);
- a pinned (fixed) value is included without asking Optuna.

:func:`suggest` (a live trial), :func:`replay_params` (a stored trial, through
``optuna.trial.FixedTrial``), the baselines and the study validation all walk the space with it, so
a live trial, an export and a unit test produce identical :class:`TrialParams`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import optuna

from ..config import ParamSpec, PruneConfig, QuantConfig, TrainConfig, TrialDefaults, TrialParams, build, to_dict
from ..errors import ConfigError

__all__ = [
    "Choose", "walk", "suggest", "suggest_params", "replay_params", "validate_space", "strip_tag",
    "trial_params_from_flat", "combinations", "is_active",
]

Choose = Callable[[str, ParamSpec], Mapping[str, Any]]
"""``choose(name, spec) -> {flat name: value}`` for one active parameter (empty: leave it unset)."""

AnyTrial = optuna.Trial | optuna.trial.FixedTrial


def is_active(spec: ParamSpec, chosen: Mapping[str, Any]) -> bool:
    """Whether every ``when`` condition of ``spec`` holds on the values chosen so far."""
    return all(chosen.get(cond, _MISSING) in allowed for cond, allowed in spec.when.items())


_MISSING = object()


def walk(space: Mapping[str, ParamSpec], choose: Choose) -> dict[str, Any]:
    """Walks the space in order, asking ``choose`` for each parameter whose conditions hold.

    Returns:
        The flat dotted values chosen, in space order (what later ``when`` conditions see).
    """
    chosen: dict[str, Any] = {}
    for name, spec in space.items():
        if is_active(spec, chosen):
            chosen.update(choose(name, spec))
    return chosen


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


def _ask(trial: AnyTrial, name: str, spec: ParamSpec) -> Any:
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


def suggest(trial: AnyTrial, space: Mapping[str, ParamSpec], *, layer_names: Sequence[str] = ()) -> dict[str, Any]:
    """Samples the space into flat dotted parameters (conditional parameters only when active)."""

    def choose(name: str, spec: ParamSpec) -> dict[str, Any]:
        if not spec.per_layer:
            return {name: _ask(trial, name, spec)}
        if not layer_names:
            raise ConfigError(f"space.{name}: per_layer needs the model's prunable layers, none were given")
        return {f"{name}.{layer}": _ask(trial, f"{name}.{layer}", spec) for layer in layer_names}

    return walk(space, choose)


def suggest_params(trial: AnyTrial, space: Mapping[str, ParamSpec], defaults: TrialDefaults, *, seed: int,
                   layer_names: Sequence[str] = ()) -> TrialParams:
    """``suggest`` followed by merging into the study's defaults: the TrialParams a trial runs."""
    return trial_params_from_flat(defaults, suggest(trial, space, layer_names=layer_names), seed=seed)


def replay_params(stored: Mapping[str, Any], space: Mapping[str, ParamSpec], defaults: TrialDefaults, *,
                  seed: int, layer_names: Sequence[str] = ()) -> TrialParams:
    """Rebuilds a stored trial's TrialParams from its ``params`` (through ``FixedTrial``)."""
    return suggest_params(optuna.trial.FixedTrial(dict(stored)), space, defaults, seed=seed,
                          layer_names=layer_names)


def combinations(space: Mapping[str, ParamSpec],
                 keep: Callable[[str], bool] = lambda name: True) -> Iterator[dict[str, Any]]:
    """Every assignment of the space's categorical and fixed values that a trial can reach.

    A range stands at its low end and a ``per_layer`` parameter at one placeholder layer ``*``,
    so each result, merged into the defaults, is a config some trial runs (up to the ranges).

    Args:
        space: the study's space.
        keep: which parameters to enumerate; the parameters their ``when`` conditions name are
            enumerated too, so each combination is one a trial can reach.
    """
    wanted = {name for name in space if keep(name)}
    for name in reversed(list(space)):  # a condition names an earlier parameter: one backward pass
        if name in wanted:
            wanted.update(space[name].when)
    items = [(name, spec) for name, spec in space.items() if name in wanted]

    def values(spec: ParamSpec) -> Sequence[Any]:
        if spec.type == "categorical":
            return spec.choices or ()
        if spec.type == "fixed":
            return (spec.value,)
        assert spec.low is not None
        return (int(spec.low) if spec.type == "int" else spec.low,)

    def rec(i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(items):
            yield dict(chosen)
            return
        name, spec = items[i]
        if not is_active(spec, chosen):
            yield from rec(i + 1, chosen)
            return
        key = f"{name}.*" if spec.per_layer else name
        for value in values(spec):
            chosen[key] = value
            yield from rec(i + 1, chosen)
            del chosen[key]

    yield from rec(0, {})


# --------------------------------------------------------------------------------------------
# Flat dotted parameters -> TrialParams
# --------------------------------------------------------------------------------------------

_LAYER_MAPS = ("prune.layer_sparsity.", "quant.layer_bits.")


def strip_tag(name: str) -> str:
    """``prune.granularity@filter`` -> ``prune.granularity``.

    A tag makes a separate search parameter for the same config field, so each method can offer
    its own choices (Optuna allows one distribution per parameter name):
    ``prune.granularity@filter: {value: channel, when: {prune.method: [l1_filter]}}``.
    """
    base, sep, rest = name.partition("@")
    if not sep:
        return name
    _tag, dot, tail = rest.partition(".")
    return f"{base}.{tail}" if dot else base


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    # layer names contain dots themselves ("features.0"): split only the prefix of layer maps
    prefix = next((p for p in _LAYER_MAPS if dotted.startswith(p)), None)
    if prefix is not None:
        parents, leaf = prefix[:-1].split("."), dotted[len(prefix):]
    else:
        *parents, leaf = dotted.split(".")
    for part in parents:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else dict(nxt)
            node[part] = nxt
        node = nxt
    node[leaf] = value


def trial_params_from_flat(defaults: TrialDefaults, flat: Mapping[str, Any], *, seed: int = 0) -> TrialParams:
    """Merges flat dotted parameters (``{"prune.sparsity": 0.8, "finetune.recipe": "fast"}``) into
    the study's defaults and validates the result.

    ``finetune.recipe: none`` (or null defaults with no finetune params) means no fine-tuning.
    ``prune.layer_sparsity.<layer>`` entries build the per-layer mapping.
    """
    tree = to_dict(defaults)
    if tree.get("finetune") is None:
        tree["finetune"] = {}
        no_ft_default = True
    else:
        no_ft_default = False
    touched_ft = False
    for name, value in flat.items():
        name = strip_tag(name)
        if name.split(".")[0] not in ("prune", "finetune", "quant"):
            raise ConfigError(f"{name}: expected a parameter under prune., finetune. or quant.")
        touched_ft |= name.startswith("finetune.")
        _set_dotted(tree, name, value)
    ft = tree["finetune"]
    if ft.get("recipe") == "none" or (no_ft_default and not touched_ft):
        tree["finetune"] = None
    # layer_sparsity given -> the default sparsity is irrelevant for per_layer allocation
    if tree["prune"].get("allocation") == "per_layer":
        tree["prune"]["sparsity"] = None
        tree["prune"]["compression"] = None
    elif tree["prune"].get("compression") is not None and "prune.sparsity" not in flat:
        tree["prune"]["sparsity"] = None
    return TrialParams(
        prune=build(PruneConfig, tree["prune"], "prune"),
        finetune=None if tree["finetune"] is None else build(TrainConfig, tree["finetune"], "finetune"),
        quant=build(QuantConfig, tree["quant"], "quant"),
        seed=seed,
    )
