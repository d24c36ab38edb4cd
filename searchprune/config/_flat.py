"""Flat dotted search parameters (``{"prune.sparsity": 0.8}``) -> :class:`TrialParams`.

Search logic that waits here for its move to ``searchprune/search/space.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ._build import build, to_dict
from .core import PruneConfig, QuantConfig, TrainConfig, TrialParams
from .study import TrialDefaults

__all__ = ["strip_tag", "trial_params_from_flat"]


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
