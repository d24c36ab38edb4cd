"""Frozen, validated config objects: the boundary between YAML / CLI input and the library.

Every section of a study YAML maps to one dataclass here. ``build(cls, mapping, path)`` turns a
plain mapping into the dataclass, rejecting unknown keys and wrong types with the key's path in
the message (``space.prune.sparsity.low: expected a number, got 'high'``). Range checks live in each
class's ``__post_init__``. Names of registered things (methods, recipes, attacks, models) are
checked against their registries by ``validate_names`` once torch is importable.

No torch here: this module is imported by the CLI before anything heavy.

Units: ``eps``/``alpha`` are on the [0, 1] pixel scale; ``macs`` are multiply-adds.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError

__all__ = [
    "ThreatModel", "TrainConfig", "PruneConfig", "QuantConfig", "DataConfig", "ModelConfig",
    "EvalConfig", "ParamSpec", "SamplerConfig", "GateConfig", "ConstraintConfig", "TrialDefaults",
    "StudyConfig", "TrainRunConfig", "TrialParams", "load_yaml",
    "strip_tag", "build", "to_dict", "load_study_config", "trial_params_from_flat",
]


def _frozen_map(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(m or {}))


def _check(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {msg}")


# ---------------------------------------------------------------------------------------------
# Library configs: threat model, training, pruning, quantization
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreatModel:
    """The attack a study evaluates every trial with. Fixed by the study, never searched.

    Attributes:
        norm: "linf" or "l2".
        eps: perturbation budget on the [0, 1] pixel scale (before the model's normalization).
        alpha: step size, same scale.
        steps: PGD iterations.
        random_start: start from a uniform point in the eps-ball instead of the clean input.
        restarts: independent restarts; an input counts as robust only if it survives all.
        clamp: keep ``x_adv`` inside [0, 1].
    """

    norm: Literal["linf", "l2"] = "linf"
    eps: float = 0.05
    alpha: float = 0.005
    steps: int = 20
    random_start: bool = False
    restarts: int = 1
    clamp: bool = True

    def __post_init__(self) -> None:
        _check(self.eps >= 0, "threat.eps", f"expected eps >= 0 on the [0,1] pixel scale, got {self.eps}")
        _check(self.norm != "linf" or self.eps <= 1, "threat.eps",
               f"expected an L-inf eps <= 1 on the [0,1] scale, got {self.eps}")
        _check(self.alpha > 0, "threat.alpha", f"expected a step size > 0, got {self.alpha}")
        _check(self.steps >= 1, "threat.steps", f"expected at least 1 step, got {self.steps}")
        _check(self.restarts >= 1, "threat.restarts", f"expected at least 1 restart, got {self.restarts}")


@dataclass(frozen=True)
class TrainConfig:
    """A training or fine-tuning recipe.

    Attributes:
        recipe: name in ``searchprune.train.list_recipes()``: "standard", "pgd" (Madry PGD-AT),
            "fast" (FGSM with random start, Wong et al.), "trades" (Zhang et al.).
        epochs: passes over the training split; fractions run that share of the batches.
        lr: peak learning rate.
        optimizer: "sgd" (with ``momentum``) or "adam".
        schedule: "constant", "step" (x``gamma`` at each fraction in ``milestones``), "cosine",
            or "cyclic" (0 -> lr -> 0, peak at ``cyclic_peak``).
        attack: the training-time attack for "pgd"/"trades"/"fast"; None uses the study's threat
            model (the usual choice: train against what you evaluate).
        fast_alpha_ratio: FGSM-RS step as a multiple of eps (1.25 = Wong et al.'s 10/255 at 8/255).
        trades_beta: TRADES's robustness weight.
        max_batches: cap on batches per epoch (quick runs and tests); None = the whole split.
    """

    recipe: str = "standard"
    epochs: float = 1.0
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["constant", "step", "cosine", "cyclic"] = "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    cyclic_peak: float = 0.4
    batch_size: int = 128
    attack: ThreatModel | None = None
    fast_alpha_ratio: float = 1.25
    trades_beta: float = 6.0
    max_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "train.epochs", f"expected epochs >= 0, got {self.epochs}")
        _check(self.lr > 0, "train.lr", f"expected a learning rate > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, "train.momentum", f"expected 0 <= momentum < 1, got {self.momentum}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"expected >= 0, got {self.weight_decay}")
        _check(all(0 < m < 1 for m in self.milestones), "train.milestones",
               f"expected fractions of training in (0, 1), got {list(self.milestones)}")
        _check(0 < self.cyclic_peak < 1, "train.cyclic_peak", f"expected in (0, 1), got {self.cyclic_peak}")
        _check(self.batch_size >= 1, "train.batch_size", f"expected >= 1, got {self.batch_size}")
        _check(self.trades_beta >= 0, "train.trades_beta", f"expected >= 0, got {self.trades_beta}")
        _check(self.max_batches is None or self.max_batches >= 1, "train.max_batches",
               f"expected >= 1 or null, got {self.max_batches}")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune, by which criterion, and how sparsity is spread across layers.

    Sparsity semantics: ``sparsity`` is the fraction of *prunable* weights removed (for
    ``granularity="channel"``: the fraction of prunable output channels removed). Alternatively
    ``compression`` gives ShrinkBench's whole-model ratio c = total / nonzero over all parameters;
    the fraction of prunable weights kept is then ``(total / c - nonprunable) / prunable``.

    Attributes:
        method: scoring criterion, a name in ``searchprune.prune.list_methods()``.
        granularity: "weight" (unstructured), "kernel" (C_out x C_in), or "channel" (filters,
            removed physically).
        allocation: "global" (one threshold over all prunable layers), "uniform" (the same ratio
            per layer), "mrs" (ratios from module robustness sensitivity), "per_layer" (one ratio
            per layer in ``layer_sparsity``), or "learned" (the method learns the mask itself).
        layer_sparsity: layer name -> sparsity, for the "per_layer" allocation.
        include_classifier: prune the final classifier too (HYDRA and LAMP do; ShrinkBench doesn't).
        include_first: prune the first conv.
        options: the method's own hyperparameters (see each method's docstring).
    """

    method: str = "magnitude"
    granularity: Literal["weight", "kernel", "channel"] = "weight"
    allocation: Literal["global", "uniform", "mrs", "per_layer", "learned"] = "global"
    sparsity: float | None = 0.5
    compression: float | None = None
    layer_sparsity: Mapping[str, float] | None = None
    include_classifier: bool = False
    include_first: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _frozen_map(self.options))
        if self.layer_sparsity is not None:
            object.__setattr__(self, "layer_sparsity", _frozen_map(self.layer_sparsity))
            for k, v in self.layer_sparsity.items():
                _check(0 <= v < 1, f"prune.layer_sparsity.{k}", f"expected a sparsity in [0, 1), got {v}")
        _check(self.sparsity is None or 0 <= self.sparsity < 1, "prune.sparsity",
               f"expected a fraction of weights removed in [0, 1), got {self.sparsity}")
        _check(self.compression is None or self.compression >= 1, "prune.compression",
               f"expected a whole-model compression ratio >= 1, got {self.compression}")
        if self.allocation == "per_layer":
            _check(self.layer_sparsity is not None, "prune.layer_sparsity",
                   "the per_layer allocation needs a layer -> sparsity mapping")
        else:
            _check((self.sparsity is None) != (self.compression is None), "prune",
                   f"give exactly one of sparsity and compression, got sparsity={self.sparsity}, "
                   f"compression={self.compression}")


@dataclass(frozen=True)
class QuantConfig:
    """Fake quantization of conv/linear weights (and optionally activations).

    Attributes:
        mode: "none", "ptq" (calibrate only) or "qat" (insert quantizers, then fine-tune through
            a straight-through estimator).
        weight_bits: weight bitwidth, 2..16, symmetric.
        act_bits: activation bitwidth, 2..16, asymmetric per-tensor; None quantizes weights only.
        weight_granularity: "per_channel" (one scale per output channel) or "per_tensor".
        calibration: activation range from "minmax" or a "percentile" of |values|.
        calib_batches: batches of training data used to calibrate activation ranges.
        layer_bits: layer name -> weight bits, for mixed precision (others use ``weight_bits``).
    """

    mode: Literal["none", "ptq", "qat"] = "none"
    weight_bits: int = 8
    act_bits: int | None = 8
    weight_granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    calibration: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.99
    calib_batches: int = 4
    layer_bits: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        _check(2 <= self.weight_bits <= 16, "quant.weight_bits", f"expected 2..16 bits, got {self.weight_bits}")
        _check(self.act_bits is None or 2 <= self.act_bits <= 16, "quant.act_bits",
               f"expected 2..16 bits or null, got {self.act_bits}")
        _check(50 < self.percentile <= 100, "quant.percentile", f"expected in (50, 100], got {self.percentile}")
        _check(self.calib_batches >= 1, "quant.calib_batches", f"expected >= 1, got {self.calib_batches}")
        if self.layer_bits is not None:
            object.__setattr__(self, "layer_bits", _frozen_map(self.layer_bits))
            for k, v in self.layer_bits.items():
                _check(2 <= int(v) <= 16, f"quant.layer_bits.{k}", f"expected 2..16 bits, got {v}")


# ---------------------------------------------------------------------------------------------
# Study configs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how much of it.

    Attributes:
        dataset: name in ``searchprune.data.list_datasets()``.
        data_dir: where to look first (then ``$SEARCHPRUNE_DATA``, then system locations).
        download: allow downloading missing files (needs a network).
        train_size: training images used for fine-tuning (None = all that remain after val).
        val_size: images carved from the training set, class-balanced; the search selects on them.
        test_size: test images for final reports and export (None = all).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    train_size: int | None = None
    val_size: int = 5000
    test_size: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            _check(v is None or v >= 1, f"data.{name}", f"expected >= 1 or null, got {v}")
        _check(self.val_size >= 0, "data.val_size", f"expected >= 0, got {self.val_size}")
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "data.batch_size",
               f"expected >= 1, got {self.batch_size} / {self.eval_batch_size}")


@dataclass(frozen=True)
class ModelConfig:
    """The dense model a study compresses.

    Attributes:
        arch: name in ``searchprune.models.list_models()``; or ``factory`` instead.
        factory: "package.module:function" returning an ``nn.Module`` for a user's own model.
        kwargs: extra keyword arguments for the constructor.
        checkpoint: base checkpoint path (relative paths resolve against the study's output_dir).
            When missing and ``train`` is given, the base model is trained and saved there.
        train: the recipe that trains the base model when the checkpoint does not exist.
    """

    arch: str | None = "cnn8"
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", _frozen_map(self.kwargs))
        _check((self.arch is None) != (self.factory is None), "model",
               f"give exactly one of arch and factory, got arch={self.arch!r}, factory={self.factory!r}")
        if self.factory is not None:
            _check(":" in self.factory, "model.factory",
                   f"expected 'package.module:function', got {self.factory!r}")


@dataclass(frozen=True)
class EvalConfig:
    """How each trial is measured.

    Attributes:
        n_eval: validation images attacked per trial during search (None = the whole split).
        attacks: attacks run on every trial (names in ``searchprune.attacks.list_attacks()``).
        objective: "pgd" uses PGD accuracy as the robust objective; "min" the minimum over ``attacks``.
        export_attacks: the strong ensemble run when a trial is exported.
        transfer: also score the trial on examples crafted against the dense base model.
        checks: run the gradient-masking checks and store their flags.
        stagewise: measure clean and PGD accuracy after each stage (prune, fine-tune, quantize).
        n_stage_eval: images for the stage-wise measurements and the masking checks.
        check_apgd_steps, check_square_queries: budget of the strong attacks the masking checks
            run when ``attacks`` lists none (the APGD + Square ensemble of the AutoAttack paper;
            smaller than the paper's 100 / 5000 so every trial can afford it; exports run the
            full ``export_attacks`` ensemble on the test split).
    """

    n_eval: int | None = 1000
    attacks: tuple[str, ...] = ("pgd",)
    objective: Literal["pgd", "min"] = "pgd"
    export_attacks: tuple[str, ...] = ("pgd", "apgd", "square")
    transfer: bool = True
    checks: bool = True
    stagewise: bool = True
    n_stage_eval: int = 256
    check_apgd_steps: int = 50
    check_square_queries: int = 200

    def __post_init__(self) -> None:
        _check(self.check_apgd_steps >= 1 and self.check_square_queries >= 1, "eval.check_apgd_steps",
               f"expected >= 1, got {self.check_apgd_steps} / {self.check_square_queries}")
        _check(self.n_eval is None or self.n_eval >= 1, "eval.n_eval", f"expected >= 1 or null, got {self.n_eval}")
        _check(len(self.attacks) >= 1, "eval.attacks", "expected at least one attack")
        _check(self.n_stage_eval >= 1, "eval.n_stage_eval", f"expected >= 1, got {self.n_stage_eval}")


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
        object.__setattr__(self, "options", _frozen_map(self.options))
        _check(self.name in ("tpe", "nsga2", "nsga3", "gp", "random"), "sampler.name",
               f"unknown sampler {self.name!r}; expected one of: gp, nsga2, nsga3, random, tpe")


@dataclass(frozen=True)
class GateConfig:
    """Multi-fidelity gate: after ``epochs`` of fine-tuning, prune the trial if it is below a floor.

    Optuna's pruners refuse multi-objective studies, so the trial raises ``optuna.TrialPruned``
    itself with the reason stored.
    """

    enabled: bool = False
    epochs: float = 0.25
    min_clean_acc: float = 0.0
    min_pgd_acc: float = 0.0

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "gate.epochs", f"expected > 0, got {self.epochs}")
        for n in ("min_clean_acc", "min_pgd_acc"):
            _check(0 <= getattr(self, n) <= 1, f"gate.{n}", f"expected an accuracy in [0, 1], got {getattr(self, n)}")


@dataclass(frozen=True)
class ConstraintConfig:
    """Feasibility constraints, stored with ``trial.set_constraint`` (value <= 0 is feasible)."""

    max_macs: float | None = None
    max_bitops: float | None = None
    min_clean_acc: float | None = None


@dataclass(frozen=True)
class TrialDefaults:
    """Values every trial starts from; the search space overrides some of them."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: TrainConfig | None = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: what to compress, how to measure it, and what to search.

    Attributes:
        output_dir: where the study's database, checkpoints and plots go ("{name}" is replaced).
        storage: Optuna storage URL or journal file path; None = SQLite in output_dir.
        cost: the third objective: "macs" or "bitops".
        baselines: trials enqueued at creation ("dense", and seed-paper recipes, see study.py).
    """

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threat: ThreatModel = field(default_factory=ThreatModel)
    eval: EvalConfig = field(default_factory=EvalConfig)
    defaults: TrialDefaults = field(default_factory=TrialDefaults)
    space: Mapping[str, ParamSpec] = field(default_factory=dict)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    constraints: ConstraintConfig = field(default_factory=ConstraintConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    cost: Literal["macs", "bitops"] = "macs"
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


@dataclass(frozen=True)
class TrialParams:
    """Everything one trial does, as plain frozen data: what ``run_trial`` consumes.

    ``finetune`` is None for "no fine-tuning". The same object comes from a live Optuna trial
    (``space.suggest``), from a stored trial's params (export, replay), or from a unit test.
    """

    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: TrainConfig | None = None
    quant: QuantConfig = field(default_factory=QuantConfig)
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Generic mapping -> dataclass builder
# ---------------------------------------------------------------------------------------------

_NONE = type(None)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is _NONE:
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (tuple, list):
        return "a list"
    if origin in (Mapping, dict) or tp is Mapping:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        options = [a for a in args if a is not _NONE]
        for a in options:
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1 or (isinstance(value, Mapping) and dataclasses.is_dataclass(options[0])):
            raise errors[0]  # only one alternative fits: its message is the precise one
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return build(tp, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: Mapping[str, Any], path: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{path}." if path else ""
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; expected one of: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        if cls is StudyConfig and k == "space":
            if not isinstance(v, Mapping):
                raise ConfigError(f"{prefix}space: expected a mapping of parameter -> spec, got {v!r}")
            kwargs[k] = {str(n): ParamSpec.parse(s, f"{prefix}space.{n}") for n, s in v.items()}
            for n in kwargs[k]:
                tag = n.partition("@")[2].partition(".")[0]
                if "@" in n and not (tag and tag.replace("_", "").isalnum()):
                    raise ConfigError(f"{prefix}space.{n}: a tag after '@' must be letters, digits or '_'")
            continue
        kwargs[k] = _convert(hints[k], v, f"{prefix}{k}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        if path and not msg.startswith(path):
            # __post_init__ names its own section ("prune.sparsity"); anchor it at the real path
            field_part = msg.split(":", 1)[0].split(".", 1)[-1]
            msg = f"{path}.{field_part}:{msg.split(':', 1)[1]}" if ":" in msg else f"{path}: {msg}"
        raise ConfigError(msg) from None
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-safe data from a config object (mappings, lists, scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def load_study_config(path: str | Path) -> StudyConfig:
    """Reads and validates a study YAML file.

    Raises:
        ConfigError: the file is missing, is not YAML, or has a bad key or value (named by path).
    """
    return build(StudyConfig, load_yaml(path))


def load_yaml(path: str | Path) -> Mapping[str, Any]:
    """Reads a YAML mapping, with ConfigErrors for a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study config {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


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
