"""Study configs: the search space, sampler, pruner, constraints and the whole :class:`StudyConfig`,
plus ``searchprune train --config``'s :class:`TrainRunConfig`. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ._build import _check, _frozen_map, build, load_yaml
from .core import COST_KINDS, DataConfig, EvalConfig, ModelConfig, PruneConfig, QuantConfig, ThreatModel, TrainConfig

__all__ = [
    "ParamSpec", "SamplerConfig", "PrunerConfig", "ConstraintConfig", "TrialDefaults", "StudyConfig", "TrainRunConfig",
    "load_study_config",
]


@dataclass(frozen=True)
class ParamSpec:
    """One search dimension.

    YAML shorthand: a list is a categorical choice, a scalar pins the value, a mapping gives
    ``low``/``high`` (with ``log``, ``step``, ``type``), ``choices`` or ``value``, plus ``when``.

    Attributes:
        when: conditions on other parameters, ``{name: [allowed values]}``: the parameter exists
            only when every condition holds (a method's hyperparameter exists only when it is chosen).
        per_layer: expand into one parameter per prunable layer of the model
            (``prune.layer_sparsity.<layer>``): the per-layer action space of AMC-like agents.
    """

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    type: Literal["float", "int", "categorical", "fixed"] | None = None
    value: Any = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    per_layer: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _frozen_map(self.when))
        kind = self.type
        if kind is None:
            if self.choices is not None:
                kind = "categorical"
            elif self.low is not None or self.high is not None:
                is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
                is_int = is_int and (self.step is None or float(self.step).is_integer())
                kind = "int" if is_int else "float"
            else:
                kind = "fixed"
            object.__setattr__(self, "type", kind)
        if kind == "categorical":
            _check(bool(self.choices), "choices", "expected a non-empty list of choices")
        elif kind in ("float", "int"):
            _check(self.low is not None and self.high is not None, "low/high", "a range needs both low and high")
            assert self.low is not None and self.high is not None
            _check(self.low <= self.high, "low/high", f"expected low <= high, got {self.low} > {self.high}")
            _check(not self.log or self.low > 0, "log", f"a log scale needs low > 0, got {self.low}")
            _check(not (self.log and self.step), "log", "log and step cannot be combined")

    @classmethod
    def parse(cls, raw: Any, path: str) -> ParamSpec:
        if isinstance(raw, list):
            return cls(choices=tuple(raw))
        if isinstance(raw, Mapping):
            raw = dict(raw)
            when = raw.pop("when", {}) or {}
            if not isinstance(when, Mapping):
                raise ConfigError(f"{path}.when: expected a mapping of parameter -> allowed values, got {when!r}")
            when = {k: tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in when.items()}
            bounds = [raw.get("low"), raw.get("high"), raw.get("step")]
            if "type" not in raw and "low" in raw and all(
                isinstance(b, int) and not isinstance(b, bool) for b in bounds if b is not None
            ):
                raw["type"] = "int"  # YAML ints stay ints; the dataclass fields are floats
            try:
                return build(cls, {**raw, "when": when}, path)
            except ConfigError as e:
                msg = str(e)
                raise ConfigError(msg if msg.startswith(path) else f"{path}.{msg}") from None
        return cls(value=raw, type="fixed")


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler by name ("tpe", "nsga2", "nsga3", "gp", "random") with a seed and its options."""

    name: str = "tpe"
    seed: int | None = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The name is checked against the sampler registry (search.samplers) by validate_study at
        # `study create`: one list of sampler names, owned by the registry.
        object.__setattr__(self, "options", _frozen_map(self.options))


@dataclass(frozen=True)
class PrunerConfig:
    """Early stopping by successive halving over rungs of fine-tuning budget (``pruner:`` in YAML).

    ``name: mo_asha`` runs multi-objective asynchronous successive halving
    (:mod:`searchprune.search.pruner`): a trial fine-tunes rung by rung (budgets
    ``min_epochs * eta**k`` below ``max_epochs``, one continuing run), is measured at each rung on
    ``rung_n_eval`` validation images with ``rung_pgd_steps`` PGD steps, and continues only while it
    ranks in the top ``1/eta`` of the trials that reached the rung (non-dominated sorting, hypervolume
    contribution breaks ties). ``floors`` add absolute minimums checked at every rung (the retired
    fixed ``gate`` is one rung, ``max_epochs <= min_epochs * eta``, with ``floors`` and a
    ``min_trials_per_rung`` above the study's trial count, so ranking never prunes). The last
    measurement is always the study's full evaluation. ``name: none`` runs every trial in full.

    Attributes:
        min_epochs: fine-tuning epochs at the first rung (fractions allowed).
        eta: reduction factor (integer >= 2).
        max_epochs: the full fine-tuning budget; rungs lie strictly below it.
        min_trials_per_rung: trials a rung needs before it ranks (None: ``eta``).
        floors: ``{metric: minimum}`` over ``clean_acc``, ``robust_acc``, ``pgd_acc``: a trial below one at
            any rung is pruned whatever its rank.
        rung_n_eval: validation images measured at a rung (None: ``eval.n_stage_eval``).
        rung_pgd_steps: PGD steps at a rung (None: the study's ``threat.steps``).
    """

    name: Literal["none", "mo_asha"] = "none"
    min_epochs: float = 0.25
    eta: int = 3
    max_epochs: float = 3.0
    min_trials_per_rung: int | None = None
    floors: Mapping[str, float] = field(default_factory=dict)
    rung_n_eval: int | None = None
    rung_pgd_steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "floors", _frozen_map(self.floors))
        _check(self.name in ("none", "mo_asha"), "pruner.name",
               f"unknown pruner {self.name!r}; expected one of: mo_asha, none")
        _check(self.eta >= 2, "pruner.eta", f"expected an integer >= 2, got {self.eta}")
        _check(self.min_epochs > 0, "pruner.min_epochs", f"expected a number of epochs > 0, got {self.min_epochs}")
        _check(self.max_epochs > self.min_epochs, "pruner.max_epochs",
               f"expected > min_epochs ({self.min_epochs}), got {self.max_epochs}")
        _check(self.min_trials_per_rung is None or self.min_trials_per_rung >= 1, "pruner.min_trials_per_rung",
               f"expected an integer >= 1 or null, got {self.min_trials_per_rung}")
        for k, v in self.floors.items():
            _check(k in ("clean_acc", "robust_acc", "pgd_acc"), f"pruner.floors.{k}",
                   "unknown metric; expected one of: clean_acc, pgd_acc, robust_acc")
            _check(isinstance(v, (int, float)) and 0 <= v <= 1, f"pruner.floors.{k}",
                   f"expected an accuracy in [0, 1], got {v!r}")
        _check(self.rung_n_eval is None or self.rung_n_eval >= 1, "pruner.rung_n_eval",
               f"expected >= 1 images or null, got {self.rung_n_eval}")
        _check(self.rung_pgd_steps is None or self.rung_pgd_steps >= 1, "pruner.rung_pgd_steps",
               f"expected >= 1 steps or null, got {self.rung_pgd_steps}")

    @property
    def enabled(self) -> bool:
        return self.name != "none"


def _parse_gate(raw: Any, path: str) -> None:
    if raw is None:
        return None
    raise ConfigError(f"{path}: the fixed gate is retired; use `pruner: {{name: mo_asha, min_epochs: ..., "
                      f"floors: {{clean_acc: ...}}}}` (successive halving with optional absolute floors)")


@dataclass(frozen=True)
class ConstraintConfig:
    """Feasibility constraints, stored with ``trial.set_constraint`` (value <= 0 is feasible)."""

    max_macs: float | None = None
    max_bitops: float | None = None
    min_clean_acc: float | None = None

    def __post_init__(self) -> None:
        # a budget of 0 divides by zero in the constraint, a negative one makes every trial feasible
        for n in ("max_macs", "max_bitops"):
            v = getattr(self, n)
            _check(v is None or v > 0, f"constraints.{n}", f"expected a budget > 0 or null, got {v}")
        v = self.min_clean_acc
        _check(v is None or 0 <= v <= 1, "constraints.min_clean_acc", f"expected an accuracy in [0, 1], got {v}")


@dataclass(frozen=True)
class TrialDefaults:
    """Values every trial starts from; the search space overrides some of them."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: TrainConfig | None = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


def _parse_space(raw: Any, path: str) -> dict[str, ParamSpec]:
    """``space:`` in YAML: parameter name -> ParamSpec shorthand (see :meth:`ParamSpec.parse`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of parameter -> spec, got {raw!r}")
    space = {str(n): ParamSpec.parse(s, f"{path}.{n}") for n, s in raw.items()}
    for n in space:
        tag = n.partition("@")[2].partition(".")[0]
        if "@" in n and not (tag and tag.replace("_", "").isalnum()):
            raise ConfigError(f"{path}.{n}: a tag after '@' must be letters, digits or '_'")
    return space


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: what to compress, how to measure it, and what to search.

    Attributes:
        output_dir: where the study's database, checkpoints and plots go ("{name}" is replaced).
        storage: Optuna storage URL or journal file path; None = SQLite in output_dir.
        cost: the third objective, one of :data:`~.core.COST_KINDS`: "macs" (effective multiply-adds
            after pruning), "dense_macs" (what a dense kernel executes), "bitops", "size_bytes" or
            "latency_ms" (measured on the study's device). Every trial stores all five.
        baselines: trials enqueued at creation ("dense", and seed-paper recipes, see study.py).
    """

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threat: ThreatModel = field(default_factory=ThreatModel)
    eval: EvalConfig = field(default_factory=EvalConfig)
    defaults: TrialDefaults = field(default_factory=TrialDefaults)
    space: Mapping[str, ParamSpec] = field(default_factory=dict, metadata={"parse": _parse_space})
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    constraints: ConstraintConfig = field(default_factory=ConstraintConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    gate: None = field(default=None, metadata={"parse": _parse_gate})  # retired: names its replacement
    cost: Literal["macs", "dense_macs", "bitops", "size_bytes", "latency_ms"] = "macs"
    baselines: tuple[str, ...] = ()
    n_trials: int = 10
    timeout_s: float | None = None
    output_dir: str = "runs/{name}"
    storage: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", _frozen_map(self.space))
        _check(bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name), "name",
               f"expected letters, digits, '-', '_' or '.', got {self.name!r}")
        _check(self.n_trials >= 0, "n_trials", f"expected >= 0, got {self.n_trials}")
        _check(self.cost in COST_KINDS, "cost", f"expected one of {', '.join(COST_KINDS)}, got {self.cost!r}")
        for key in self.space:
            _check(key.split(".")[0] in ("prune", "finetune", "quant"), f"space.{key}",
                   "expected a parameter under prune., finetune. or quant.")

    @property
    def out_path(self) -> Path:
        return Path(self.output_dir.replace("{name}", self.name))


@dataclass(frozen=True)
class TrainRunConfig:
    """``searchprune train --config``: train a base model and save a checkpoint.

    Attributes:
        output: checkpoint path to write.
        n_eval: test images for the final clean/PGD report (None = the whole test split).
    """

    output: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threat: ThreatModel = field(default_factory=ThreatModel)
    n_eval: int | None = None


def load_study_config(path: str | Path) -> StudyConfig:
    """Reads and validates a study YAML file.

    Raises:
        ConfigError: the file is missing, is not YAML, or has a bad key or value (named by path).
    """
    return build(StudyConfig, load_yaml(path))
