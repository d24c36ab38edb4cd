"""Baselines: fixed recipes of the seed papers, enqueued at study creation so the Pareto plot shows them.

Each baseline is one row of data (:class:`Baseline`); ``baseline_trials`` maps a row onto the
study's space with the same ``when`` walk as a live trial (:func:`searchprune.search.space.walk`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._registry import Registry
from ..config import ParamSpec, StudyConfig, TrialDefaults, to_dict
from ..errors import ConfigError
from .space import strip_tag, walk

__all__ = ["Baseline", "BASELINES", "register_baseline", "list_baselines", "baseline_trials"]


@dataclass(frozen=True)
class Baseline:
    """One fixed recipe: the config values it sets (None: left to the space and the defaults).

    Attributes:
        sparsity: a fixed sparsity (the dense model's 0); None: the study's sparsities.
        pins: values that make no difference to this recipe, set only where the space searches
            the field and allows the value (the dense model pins a magnitude method instead of
            letting the sampler pick a learned one that trains scores for a model it leaves dense).
        study_finetune: fine-tune with the study's default recipe (``defaults.finetune``, every
            ``finetune.*`` field the space searches pinned to its default), which must be an
            adversarial one: the control that separates what compression does from what the
            adversarial fine-tuning does.
    """

    doc: str
    method: str | None = None
    granularity: str | None = None
    allocation: str | None = None
    recipe: str | None = "standard"
    sparsity: float | None = None
    pins: Mapping[str, Any] = field(default_factory=dict)
    study_finetune: bool = False

    def values(self, sparsity: float) -> dict[str, Any]:
        """The flat dotted config values of this baseline at ``sparsity``."""
        fields = {"prune.method": self.method, "prune.granularity": self.granularity,
                  "prune.allocation": self.allocation}
        if self.recipe is not None:
            fields["finetune.recipe"] = self.recipe
        return {**{k: v for k, v in fields.items() if v is not None}, "prune.sparsity": sparsity, "quant.mode": "none"}


BASELINES: Registry[Baseline] = Registry("baseline")


def register_baseline(name: str, baseline: Baseline) -> Baseline:
    """Adds a baseline to the table (``baselines: [name]`` or ``[name@sparsity]`` in a study)."""
    return BASELINES.register(name)(baseline)


def list_baselines() -> list[str]:
    return BASELINES.names()


ADVERSARIAL_RECIPES = ("pgd", "fast", "trades")
_DENSE_PINS = {"prune.method": "magnitude", "prune.granularity": "weight", "prune.allocation": "global"}

_TABLE: dict[str, Baseline] = {
    "dense": Baseline("The dense base model, fine-tuning off.", recipe="none", sparsity=0.0, pins=_DENSE_PINS),
    "dense_aft": Baseline("The dense base model with the study's default adversarial fine-tuning recipe: the "
                          "control a compressed trial's robustness is credited against.", recipe=None,
                          sparsity=0.0, pins=_DENSE_PINS, study_finetune=True),
    "shrinkbench": Baseline("Global weight-magnitude pruning + standard fine-tuning (ShrinkBench GlobalMagWeight).",
                            "magnitude", "weight", "global", "standard"),
    "gap": Baseline("Greedy adversarial pruning (seed 000) + standard fine-tuning.",
                    "gap", "weight", "global", "standard"),
    "adver_fine": Baseline("L1-filter pruning of every conv at one ratio + PGD adversarial fine-tuning (seed 001).",
                           "l1_filter", "channel", "uniform", "pgd"),
    "hydra": Baseline("HYDRA learned scores + TRADES fine-tuning (seed 003).",
                      "hydra", "weight", "learned", "trades"),
    "mrpf": Baseline("Structured (channel) pruning at MRS-allocated per-layer ratios + TRADES fine-tuning (seed 004: "
                     "MRPF compares structured pruning methods).",
                     "magnitude", "channel", "mrs", "trades"),
    "in_train": Baseline("In-train channel masks with a MAC loss under fast adversarial training (seed 002).",
                         "in_train", "channel", "learned", "fast"),
}
for _name, _baseline in _TABLE.items():
    register_baseline(_name, _baseline)


def baseline_trials(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The Optuna parameter sets enqueued for ``cfg.baselines`` ("name" or "name@sparsity").

    Each baseline's config values are mapped onto the space the way a live trial walks it: the
    active parameter (tagged or not) for a field gets the baseline's value; a field the space does
    not search must already have that value in the defaults, else the baseline is refused.

    Raises:
        ConfigError: the space or the defaults cannot express a baseline.
    """
    out = []
    for entry in cfg.baselines:
        name, _, level = entry.partition("@")
        baseline = BASELINES.get(name)
        if level:
            levels: Sequence[float] = [float(level)]
        elif baseline.sparsity is not None:
            levels = [baseline.sparsity]
        else:
            levels = _study_sparsities(cfg)
        for sparsity in levels:
            want = baseline.values(sparsity)
            if baseline.study_finetune:
                want.update(_study_finetune(cfg, entry))
            out.append(_one(cfg, entry, baseline, want))
    return out


def _study_finetune(cfg: StudyConfig, entry: str) -> dict[str, Any]:
    """``finetune.*`` values of the study's default recipe, for every fine-tuning field the space searches."""
    ft = cfg.defaults.finetune
    if ft is None or ft.recipe not in ADVERSARIAL_RECIPES:
        got = "none" if ft is None else ft.recipe
        raise ConfigError(f"baselines: {entry!r} fine-tunes with the study's default recipe, which must be "
                          f"adversarial ({', '.join(ADVERSARIAL_RECIPES)}); defaults.finetune.recipe is {got!r}")
    values = to_dict(ft)
    out: dict[str, Any] = {"finetune.recipe": ft.recipe}
    for key in cfg.space:
        name = strip_tag(key)
        field_name = name.removeprefix("finetune.")
        if name.startswith("finetune.") and field_name in values:
            value = values[field_name]
            out[name] = int(value) if cfg.space[key].type == "int" and float(value).is_integer() else value
    return out


def _one(cfg: StudyConfig, entry: str, baseline: Baseline, want: Mapping[str, Any]) -> dict[str, Any]:
    covered: set[str] = set()

    def choose(key: str, spec: ParamSpec) -> dict[str, Any]:
        field_name = strip_tag(key)
        covered.add(field_name)
        if spec.type == "fixed":
            if field_name in want and want[field_name] != spec.value:
                raise ConfigError(f"baselines: {entry!r} needs {field_name}={want[field_name]!r}, but the "
                                  f"space pins {key} to {spec.value!r}")
            return {key: spec.value}
        if field_name in want and not spec.per_layer:
            # a choice outside the space would fail the trial when Optuna replays it (ranges are
            # fine: the dense model's sparsity 0 sits below a searched range on purpose)
            choices = spec.choices or ()
            if spec.type == "categorical" and want[field_name] not in choices:
                raise ConfigError(f"baselines: {entry!r} sets {field_name}={want[field_name]!r} "
                                  f"(space allows: {', '.join(map(str, choices))}); add the value "
                                  f"to space.{key} to enqueue this baseline")
            return {key: want[field_name]}
        if spec.type == "categorical" and baseline.pins.get(field_name, _UNSET) in (spec.choices or ()):
            return {key: baseline.pins[field_name]}
        return {}

    chosen = walk(cfg.space, choose)
    missing = [k for k, v in want.items() if k not in covered and _default_of(cfg.defaults, k) != v]
    if missing:
        raise ConfigError(
            f"baselines: {entry!r} sets {', '.join(missing)}, which the space does not search and the "
            "defaults do not match; add them to the space (or pin them there) to enqueue this baseline"
        )
    return {k: v for k, v in chosen.items() if cfg.space[k].type != "fixed"}


_UNSET = object()


def _study_sparsities(cfg: StudyConfig) -> Sequence[float]:
    spec = cfg.space.get("prune.sparsity")
    if spec is None:
        return [cfg.defaults.prune.sparsity or 0.5]
    if spec.type == "categorical":
        return [float(c) for c in spec.choices or ()]
    if spec.type == "fixed":
        return [float(spec.value)]
    assert spec.low is not None and spec.high is not None
    return [round(spec.low + (spec.high - spec.low) * q, 3) for q in (0.25, 0.75)]


def _default_of(defaults: TrialDefaults, dotted: str) -> Any:
    node: Any = to_dict(defaults)
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    if dotted == "finetune.recipe" and defaults.finetune is None:
        return "none"
    return node
