"""Library configs: the threat model, data, model, training, pruning, quantization, evaluation and
the frozen :class:`TrialParams` that ``run_trial`` consumes.

Range checks live in each class's ``__post_init__`` and name their YAML path. No torch here.
Units: ``eps``/``alpha`` are on the [0, 1] pixel scale; ``macs`` are multiply-adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._build import _check, _frozen_map

__all__ = [
    "ThreatModel", "TrainConfig", "PruneConfig", "QuantConfig", "DataConfig", "ModelConfig", "EvalConfig",
    "TrialParams", "COST_KINDS", "ON_FLAG",
]

# The third objective a study may minimize (every trial stores all of them as user attributes):
# macs (effective multiply-adds after pruning, the papers' convention), dense_macs (what a dense
# kernel executes: only removed channels / layers count), bitops (macs x weight bits x activation
# bits), size_bytes (smallest honest storage of the deployed weights), latency_ms (measured on the
# study's device, deployable form).
COST_KINDS = ("macs", "dense_macs", "bitops", "size_bytes", "latency_ms")
# What a fired masking flag does to a trial (EvalConfig.on_flag).
ON_FLAG = ("infeasible", "worst", "record")


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
            per layer in ``layer_sparsity``), "skewed" (ratios from ``sparsity`` and the options
            ``depth_skew``/``size_skew``), or "learned" (the method learns the mask itself).
        layer_sparsity: layer name -> sparsity, for the "per_layer" allocation.
        include_classifier: prune the final classifier too (HYDRA and LAMP do; ShrinkBench doesn't).
        include_first: prune the first conv.
        options: the method's own hyperparameters (see each method's docstring).
    """

    method: str = "magnitude"
    # Names checked by the pruning method's ``check`` (prune.GRANULARITIES, prune.list_allocations()),
    # the one list of each, at `study create` and in ``prune_``.
    granularity: str = "weight"
    allocation: str = "global"
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


DEFAULT_ARCH = "cnn8"  # the model when a config names neither arch nor factory


@dataclass(frozen=True)
class ModelConfig:
    """The dense model a study compresses.

    Attributes:
        arch: name in ``searchprune.models.list_models()``; or ``factory`` instead. With neither
            given it is ``"cnn8"``; with ``factory`` alone it stays None (giving both is the error).
        factory: "package.module:function" returning an ``nn.Module`` for a user's own model.
        kwargs: extra keyword arguments for the constructor.
        checkpoint: base checkpoint path (relative paths resolve against the study's output_dir).
            When missing and ``train`` is given, the base model is trained and saved there.
        train: the recipe that trains the base model when the checkpoint does not exist.
    """

    arch: str | None = None
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", _frozen_map(self.kwargs))
        _check(self.arch is None or self.factory is None, "model",
               f"give one of arch and factory, not both: got arch={self.arch!r}, factory={self.factory!r}")
        if self.arch is None and self.factory is None:
            object.__setattr__(self, "arch", DEFAULT_ARCH)
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
        check_n_images: images the masking checks attack (None: ``n_stage_eval``).
        check_margin: accuracy gap (PGD above APGD + Square) at which ``strong_gap`` fires; lower it
            (with more ``check_n_images``) to catch smaller overstatements: APGD is honestly a few
            points stronger than PGD-20, so a low margin also flags honest trials.
        check_scaled: also run the logit-scaled PGD (``pgd_scaled``) in the checks, when registered.
        check_scaled_margin: gap (PGD above the logit-scaled PGD, paired: same images and start) at
            which ``scaled_gap`` fires.
        on_flag: what a fired masking flag does: "infeasible" (a violated constraint ``masking``
            with the flags as its reason: the trial leaves the feasible front and export refuses it
            without ``--force``), "worst" (the robust objective becomes the per-example worst case
            over ``strong_attacks``, re-run on the ``n_eval`` images), "record" (flags stored only).
        strong_attacks: the attacks "worst" re-runs, as ``NAME[:key=value,...]`` (default: the
            study's PGD, the logit-scaled PGD and standard AutoAttack: APGD-CE, APGD-T, FAB-T and
            Square with 5,000 queries).
        latency: measure ``latency_ms`` of every trial (always measured when it is the cost).
        latency_batch_size, latency_repeats: the timed batch and the number of timed runs (median).
        int8_attack: attack the deployed int8 form of 8-bit trials (transfer from the fake-quant
            model under the STE, and Square with ``check_square_queries``) on ``check_n_images``.
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
    check_n_images: int | None = None
    check_margin: float = 0.05
    check_scaled: bool = True
    check_scaled_margin: float = 0.03
    on_flag: Literal["infeasible", "worst", "record"] = "infeasible"
    strong_attacks: tuple[str, ...] = ("pgd", "pgd_scaled", "autoattack")
    latency: bool = True
    latency_batch_size: int = 128
    latency_repeats: int = 10
    int8_attack: bool = True

    def __post_init__(self) -> None:
        _check(self.on_flag in ON_FLAG, "eval.on_flag", f"expected one of {', '.join(ON_FLAG)}, got {self.on_flag!r}")
        _check(self.check_n_images is None or self.check_n_images >= 1, "eval.check_n_images",
               f"expected >= 1 or null, got {self.check_n_images}")
        for name in ("check_margin", "check_scaled_margin"):
            v = getattr(self, name)
            _check(0 <= v < 1, f"eval.{name}", f"expected in [0, 1), got {v}")
        _check(len(self.strong_attacks) >= 1, "eval.strong_attacks", "expected at least one attack")
        _check(self.latency_batch_size >= 1 and self.latency_repeats >= 1, "eval.latency_batch_size",
               f"expected >= 1, got {self.latency_batch_size} / {self.latency_repeats}")
        _check(self.check_apgd_steps >= 1 and self.check_square_queries >= 1, "eval.check_apgd_steps",
               f"expected >= 1, got {self.check_apgd_steps} / {self.check_square_queries}")
        _check(self.n_eval is None or self.n_eval >= 1, "eval.n_eval", f"expected >= 1 or null, got {self.n_eval}")
        _check(len(self.attacks) >= 1, "eval.attacks", "expected at least one attack")
        _check(self.n_stage_eval >= 1, "eval.n_stage_eval", f"expected >= 1, got {self.n_stage_eval}")

    @property
    def n_check(self) -> int:
        """Images the masking checks (and the int8 attacks) measure."""
        return self.check_n_images if self.check_n_images is not None else self.n_stage_eval


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
