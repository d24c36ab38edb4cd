"""THE core: one trial = prune -> fine-tune -> quantize -> attack -> measure.

``run_trial(params, ctx)`` is plain PyTorch with no Optuna in sight, so the same code runs live
inside a study (``space.suggest`` makes the params), replays a stored trial for export, and runs
in a unit test with hand-written params. Progress leaves through the optional ``report``
callback. Successive halving enters through ``rungs`` and ``on_rung``: fine-tuning pauses at each
rung budget inside one continuing run (same model, optimizer and schedule), the trial is measured
cheaply (``ctx.rung_n_eval`` images, ``ctx.rung_pgd_steps`` PGD steps) and ``on_rung`` sees the
metrics; whatever it raises (the study's ``optuna.TrialPruned``) ends the trial, and passes through
here untouched. Nothing here writes files (but the statistics cache in ``ctx.cache_dir``, see
:mod:`searchprune.prune.cache`): the result carries the trial's model, and
:func:`checkpoint_metadata` the record a caller saves with it
(:class:`searchprune.search.objective.Objective` does, for a study).

Selection happens on the validation split (carved from train); the test split is only touched
by export / ``searchprune eval``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._torch import count_params, seed_everything
from .attacks import accuracy_on_batches, evaluate, transfer_examples
from .attacks.masking import CheckBudget, MaskingReport, MaskingThresholds, masking_checks
from .attacks.spec import suite_accuracy
from .config import EvalConfig, ThreatModel, TrialParams, to_dict
from .data import BatchLoader, Splits
from .deploy import Costs, LatencyCache, LatencySpec, int8_robustness, measure_costs
from .errors import ConfigError
from .models.macs import count_macs
from .prune import PruneReport, get_method, prune_
from .prune.cache import StatCache
from .quantize import count_bitops, layer_bitwidths, quantizable_layers, quantize_
from .train import train_

__all__ = ["TrialContext", "TrialResult", "TrialDiverged", "run_trial", "StageMetrics", "checkpoint_metadata",
           "chance_threshold", "OnRung", "rung_threat"]

Report = Callable[[str, Mapping[str, Any]], None]
OnRung = Callable[[int, float, Mapping[str, float]], None]
"""``on_rung(k, epochs_done, metrics)``: called at rung ``k``; metrics ``clean_acc``, ``robust_acc``,
``pgd_acc`` (fractions), ``macs``, ``bitops``, ``n_eval``; it may raise to stop the trial."""


class TrialDiverged(ValueError):
    """A stage left non-finite weights (a loss that went to inf/NaN): the trial fails with the reason."""


def _check_finite(model: nn.Module, stage: str) -> None:
    """Raises TrialDiverged naming the first parameter or buffer holding inf or NaN after ``stage``."""
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrialDiverged(f"after {stage}: non-finite values in {name} (a loss that went to inf/NaN? "
                                "lower the learning rate)")


def chance_threshold(num_classes: int, n: int) -> float:
    """Clean accuracy at or below which a trial is no better than guessing on ``n`` images.

    1/num_classes plus two binomial standard errors of a guesser (at least 0.02): a model this
    close to chance has lost what it learned, however it scores on the other objectives.
    """
    p = 1.0 / max(num_classes, 1)
    return p + max(0.02, 2.0 * math.sqrt(p * (1 - p) / max(n, 1)))


@dataclass
class TrialContext:
    """What every trial of a study shares: data, the dense base model, the threat model.

    Attributes:
        base_model: the dense model; each trial works on a deep copy.
        base_meta: the base checkpoint's ``model`` and ``dataset`` records (for trial checkpoints).
        cache_dir: where expensive per-base-model results are stored (None: kept in memory only).
        stat_cache: the :class:`~searchprune.prune.cache.StatCache` every trial of the context shares:
            scoring statistics (GAP gradients, Hessian/Taylor scores, MRS), transfer examples and whole
            identical prune steps, computed once (made on ``cache_dir`` when not given).
        prune_seed: seed of the training-batch order the prune step scores on; the same for every trial,
            so the statistics computed on those batches are reusable.
        rung_n_eval: validation images measured at a successive-halving rung (None: ``eval.n_stage_eval``).
        rung_pgd_steps: PGD steps at a rung (None: the threat model's).
        cost: the study's third objective (a ``COST_KINDS`` name); a failed ``latency_ms``
            measurement fails the trial only when it is the objective.
    """

    base_model: nn.Module
    base_meta: Mapping[str, Any]
    splits: Splits
    threat: ThreatModel
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_batch_size: int = 256
    cache_dir: Path | None = None
    rung_n_eval: int | None = None
    rung_pgd_steps: int | None = None
    stat_cache: StatCache | None = None
    prune_seed: int = 0
    cost: str = "macs"
    progress: bool = False  # fine-tuning reports progress (searchprune._progress: bar or 30 s lines)
    _base_digest: str | None = field(default=None, repr=False)
    _latency_cache: LatencyCache | None = field(default=None, repr=False)
    _base_costs: Costs | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.stat_cache is None:
            self.stat_cache = StatCache(self.cache_dir, memory_items=4)

    @property
    def base_digest(self) -> str:
        """Hash of the base model's state (computed once: the base is never changed)."""
        if self._base_digest is None:
            assert self.stat_cache is not None
            self._base_digest = self.stat_cache.model_digest(self.base_model)
        return self._base_digest

    @property
    def input_shape(self) -> tuple[int, int, int]:
        info = self.splits.info
        return (info.in_channels, *info.image_size)

    def train_loader(self, batch_size: int, seed: int) -> BatchLoader:
        return BatchLoader(self.splits.train, batch_size, shuffle=True, seed=seed, device=self.device)

    def val_loader(self, max_images: int | None) -> BatchLoader:
        return BatchLoader(self.splits.val, self.eval_batch_size, device=self.device, max_images=max_images)

    def prune_loader(self) -> BatchLoader:
        """The training batches the prune step scores on (one order for every trial, see ``prune_seed``)."""
        return BatchLoader(self.splits.train, 128, shuffle=True, seed=self.prune_seed, device=self.device)

    def transfer_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """PGD examples crafted on the dense base model for the evaluation images (once per base, data
        and threat model, through the context's cache)."""
        assert self.stat_cache is not None
        loader = self.val_loader(self.eval.n_eval)

        def craft() -> list[tuple[torch.Tensor, torch.Tensor]]:
            source = self.base_model.to(self.device).eval()
            return [(transfer_examples(source, x, y, self.threat).cpu(), y.cpu()) for x, y in loader]

        parts = {"model": self.base_digest, "data": self.stat_cache.data_digest(loader), "threat": repr(self.threat)}
        return [(x.to(self.device), y.to(self.device)) for x, y in self.stat_cache.compute("transfer", parts, craft)]

    @property
    def latency_cache(self) -> LatencyCache:
        """Latencies by shape signature: under ``cache_dir/latency`` (shared by the study's workers)."""
        if self._latency_cache is None:
            self._latency_cache = LatencyCache(self.cache_dir / "latency" if self.cache_dir is not None else None)
        return self._latency_cache

    def measure_costs(self, model: nn.Module) -> Costs:
        """Every cost kind of ``model`` (latency when ``eval.latency`` is on or it is the objective)."""
        ev = self.eval
        spec = (LatencySpec(batch_size=ev.latency_batch_size, repeats=ev.latency_repeats)
                if ev.latency or self.cost == "latency_ms" else None)
        return measure_costs(model, self.input_shape, latency=spec, cache=self.latency_cache,
                             calib_loader=self.train_loader(128, seed=0), latency_required=self.cost == "latency_ms")

    def base_costs(self) -> Costs:
        """The dense base model's costs (measured once): the reference a trial's costs are read against."""
        if self._base_costs is None:
            self._base_costs = self.measure_costs(self.base_model)
        return self._base_costs


@dataclass(frozen=True)
class StageMetrics:
    """Clean and PGD accuracy after one stage, on ``ctx.eval.n_stage_eval`` validation images."""

    clean_acc: float
    pgd_acc: float


@dataclass(frozen=True)
class TrialResult:
    """Everything a trial measured. Accuracies are fractions on the validation split.

    ``robust_acc`` is the robust objective (PGD accuracy, or the per-example worst case over the
    study's attacks; with ``eval.on_flag: worst`` and a fired flag, the worst case over
    ``eval.strong_attacks``, as ``robust_from`` says). ``cost(kind)`` is the third objective, any
    of ``COST_KINDS``: ``macs`` (effective, after pruning; quantization never changes it),
    ``dense_macs`` (what a dense kernel executes), ``bitops``, ``size_bytes``, ``latency_ms``.
    ``base_costs`` are the dense base model's. ``int8`` holds the deployed int8 model's
    accuracies (8-bit trials). ``model`` is the pruned, fine-tuned (and quantized) model itself;
    ``structural`` says channels were removed physically (a checkpoint must record the structure).
    """

    clean_acc: float
    robust_acc: float
    attack_acc: Mapping[str, float]
    transfer_acc: float | None
    macs: int
    dense_macs: int
    bitops: int
    params: int
    size_bytes: int
    sparsity: float
    layer_sparsity: Mapping[str, float]
    stages: Mapping[str, StageMetrics]
    checks: Mapping[str, Any]
    flags: Mapping[str, bool]
    time_s: float
    n_eval: int
    structural: bool = False
    latency_ms: float | None = None
    base_costs: Mapping[str, Any] = field(default_factory=dict)
    int8: Mapping[str, Any] = field(default_factory=dict)
    robust_from: str = "pgd"
    strong_acc: Mapping[str, float] = field(default_factory=dict)
    flag_reason: str | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def pgd_acc(self) -> float:
        return self.attack_acc.get("pgd", self.robust_acc)

    @property
    def base_macs(self) -> int:
        """The dense base model's MACs (what ``mac_ratio`` divides by)."""
        return int(self.base_costs.get("macs", self.dense_macs))

    @property
    def flagged(self) -> bool:
        """A masking flag fired (``flag_reason`` names them); ``steps_not_converged`` alone does not count."""
        return self.flag_reason is not None

    def costs(self) -> dict[str, Any]:
        """``{kind: value}`` for every cost kind."""
        return {"macs": self.macs, "dense_macs": self.dense_macs, "bitops": self.bitops,
                "size_bytes": self.size_bytes, "latency_ms": self.latency_ms}

    def cost(self, kind: str) -> float:
        """The cost ``kind`` (one of ``COST_KINDS``) as the study's third objective value.

        Raises:
            ConfigError: an unknown kind, or ``latency_ms`` that was not measured.
        """
        costs = self.costs()
        if kind not in costs:
            raise ConfigError(f"cost {kind!r}: expected one of {', '.join(costs)}")
        if costs[kind] is None:
            raise ConfigError(f"cost {kind!r} was not measured for this trial (eval.latency off or failed)")
        return float(costs[kind])

    def metrics(self) -> dict[str, Any]:
        """Flat JSON-safe metrics (what the study stores as user attributes)."""
        out: dict[str, Any] = {
            "clean_acc": self.clean_acc, "robust_acc": self.robust_acc, "pgd_acc": self.pgd_acc,
            "robust_from": self.robust_from, "transfer_acc": self.transfer_acc, **self.costs(),
            "base_macs": self.base_macs, "mac_ratio": self.macs / max(self.base_macs, 1),
            "dense_mac_ratio": self.dense_macs / max(self.base_macs, 1), "params": self.params,
            "sparsity": self.sparsity, "time_s": self.time_s, "n_eval": self.n_eval,
        }
        out.update({f"base_{k}": v for k, v in self.base_costs.items() if k in self.costs()})
        out.update({f"acc_{k}": v for k, v in self.attack_acc.items()})
        out.update({f"strong_acc_{k}": v for k, v in self.strong_acc.items()})
        out.update(self.int8)
        if self.flag_reason is not None:
            out["flag_reason"] = self.flag_reason
        out.update({f"stage_{s}_{k}": v for s, m in self.stages.items() for k, v in dataclasses.asdict(m).items()})
        return out


def _stage(model: nn.Module, ctx: TrialContext) -> StageMetrics:
    res = evaluate(model, ctx.val_loader(ctx.eval.n_stage_eval), ctx.threat, attacks=("pgd",))
    return StageMetrics(clean_acc=res.clean, pgd_acc=res.robust["pgd"])


def rung_threat(threat: ThreatModel, steps: int | None) -> ThreatModel:
    """The threat model of a cheap rung measurement: ``steps`` PGD steps (None: unchanged), with the step
    size raised to ``2.5 * eps / steps`` where the study's would not reach the ball's surface."""
    if steps is None or steps >= threat.steps:
        return threat
    return dataclasses.replace(threat, steps=steps, alpha=max(threat.alpha, 2.5 * threat.eps / steps))


def _rung_metrics(model: nn.Module, ctx: TrialContext) -> dict[str, float]:
    n = ctx.rung_n_eval if ctx.rung_n_eval is not None else ctx.eval.n_stage_eval
    res = evaluate(model, ctx.val_loader(n), rung_threat(ctx.threat, ctx.rung_pgd_steps), attacks=("pgd",))
    pgd = res.robust["pgd"]
    return {"clean_acc": res.clean, "robust_acc": pgd, "pgd_acc": pgd, "n_eval": float(res.n),
            "macs": float(count_macs(model, ctx.input_shape)), "bitops": float(count_bitops(model, ctx.input_shape))}


def _finetune(model: nn.Module, params: TrialParams, ctx: TrialContext, report: Report,
              rungs: Sequence[float], on_rung: OnRung | None) -> None:
    """Fine-tunes with the trial's recipe in one run; at each rung budget below the run's length it pauses,
    measures and calls ``on_rung`` (which may raise), then the same run continues."""
    cfg = params.finetune
    assert cfg is not None

    def pause(k: int, epochs_done: float) -> None:
        assert on_rung is not None
        m = _rung_metrics(model, ctx)
        report(f"rung_{k}", m)
        on_rung(k, epochs_done, m)

    pause_at = tuple(rungs) if on_rung is not None else ()
    train_(model, ctx.train_loader(cfg.batch_size, seed=cfg.seed), cfg, threat=ctx.threat,
           pause_at=pause_at, on_pause=pause if pause_at else None, progress=ctx.progress)


def _prune_step(model: nn.Module, params: TrialParams, ctx: TrialContext) -> tuple[nn.Module, PruneReport]:
    """``prune_`` on the trial's copy; identical steps (same base, data, config, fine-tuning recipe, and
    seed unless the method is ``seed_free``) are computed once per context (kept in memory: masked models
    do not pickle)."""
    loader = ctx.prune_loader()
    cache = ctx.stat_cache

    def run() -> tuple[nn.Module, PruneReport]:
        report = prune_(model, params.prune, input_shape=ctx.input_shape, loader=loader, threat=ctx.threat,
                        train_cfg=params.finetune, cache=cache)
        return model, report

    if cache is None:
        return run()
    seed_free = get_method(params.prune.method).seed_free
    parts = {"base": ctx.base_digest, "data": cache.data_digest(loader), "prune": to_dict(params.prune),
             "finetune": to_dict(params.finetune), "threat": repr(ctx.threat),
             "seed": None if seed_free else params.seed}
    return cache.compute("prune_step", parts, run, disk=False, seeded=False)


def run_trial(params: TrialParams, ctx: TrialContext, *, report: Report | None = None,
              rungs: Sequence[float] = (), on_rung: OnRung | None = None) -> TrialResult:
    """Runs one trial on a copy of the base model and measures it.

    Args:
        params: what to do (pruning, fine-tuning, quantization, seed).
        ctx: the study's shared data, base model and threat model.
        report: optional ``report(event, payload)`` callback for progress.
        rungs: increasing fine-tuning budgets in epochs (fractions allowed) at which the trial is measured
            and ``on_rung`` called; budgets at or past the trial's own ``finetune.epochs`` are skipped (its
            final measurement is the study's full evaluation).
        on_rung: ``on_rung(k, epochs_done, metrics)`` at rung ``k`` (see :data:`OnRung`); an exception it
            raises ends the trial and propagates unchanged.

    Raises:
        TrialDiverged: pruning, fine-tuning or quantization left non-finite weights.
    """
    report = report or (lambda event, payload: None)
    t0 = time.perf_counter()
    seed_everything(params.seed)
    model = copy.deepcopy(ctx.base_model).to(ctx.device)
    stages: dict[str, StageMetrics] = {}
    calib = ctx.train_loader(128, seed=params.seed)

    # 1. prune (data-driven criteria see training batches and the study's threat model)
    model, prune_report = _prune_step(model, params, ctx)
    seed_everything(params.seed)  # what follows draws the same numbers whether the step was cached or not
    _check_finite(model, "pruning")
    if ctx.eval.stagewise:
        stages["prune"] = _stage(model, ctx)
        report("prune", dataclasses.asdict(stages["prune"]))

    # 2. fine-tune; quantization-aware training inserts the quantizers first
    qmode = params.quant.mode
    if qmode == "qat":
        quantize_(model, params.quant, calib_loader=calib)
    if params.finetune is not None and params.finetune.epochs > 0:
        try:
            _finetune(model, params, ctx, report, rungs, on_rung)
        except FloatingPointError as e:  # train_ saw the epoch's loss go to inf/NaN
            raise TrialDiverged(f"fine-tuning diverged: {e}") from None
        _check_finite(model, "fine-tuning")
        if ctx.eval.stagewise:
            stages["finetune"] = _stage(model, ctx)
            report("finetune", dataclasses.asdict(stages["finetune"]))

    # 3. post-training quantization
    if qmode == "ptq":
        quantize_(model, params.quant, calib_loader=calib)
    if qmode != "none":
        _check_finite(model, "quantization")
    if qmode != "none" and ctx.eval.stagewise:
        stages["quantize"] = _stage(model, ctx)
        report("quantize", dataclasses.asdict(stages["quantize"]))

    # 4. attack: the study's fixed threat model on the validation images
    model.eval()
    res = evaluate(model, ctx.val_loader(ctx.eval.n_eval), ctx.threat, attacks=ctx.eval.attacks)
    robust = res.robust["pgd"] if ctx.eval.objective == "pgd" else res.worst
    # examples crafted (once, with gradients) on the dense model, scored on this one
    transfer = accuracy_on_batches(model, ctx.transfer_batches()) if ctx.eval.transfer else None
    checks: dict[str, Any] = {}
    flags: dict[str, bool] = {}
    reason = None
    robust_from: str = ctx.eval.objective
    strong_acc: dict[str, float] = {}
    if ctx.eval.checks:
        ev = ctx.eval
        strong = [res.robust[a] for a in res.robust if a != "pgd"]
        mr = masking_checks(
            model, ctx.val_loader(ev.n_check), ctx.threat, pgd_acc=res.robust.get("pgd", robust),
            strong_acc=min(strong) if strong else None, transfer_acc=transfer,
            budget=CheckBudget(n_images=ev.n_check, apgd_steps=ev.check_apgd_steps,
                               square_queries=ev.check_square_queries, seed=params.seed, scaled=ev.check_scaled),
            thresholds=MaskingThresholds(strong_gap_margin=ev.check_margin, scaled_gap_margin=ev.check_scaled_margin),
        )
        checks, flags = mr.as_user_attrs(), dict(mr.flags)
        if mr.masking:  # steps_not_converged alone is the study's PGD, not this model: recorded only
            reason = flag_reason(mr)
            if ev.on_flag == "worst":
                # the flagged number is not trusted: the worst case over the strong attacks at
                # their full default budgets, on the same validation images
                strong_res = suite_accuracy(model, ctx.val_loader(ev.n_eval), ctx.threat, ev.strong_attacks)
                robust, robust_from = min(robust, strong_res["worst"]), "worst"
                strong_acc = {**strong_res["acc"], "worst": strong_res["worst"]}
    # a model at chance level is a failed compression, not a point on the front (the study keeps it off)
    checks["chance_threshold"] = chance_threshold(ctx.splits.info.num_classes, res.n)
    flags["chance"] = res.clean <= checks["chance_threshold"]
    report("attack", {"clean_acc": res.clean, "robust_acc": robust})

    # 5. the deployed int8 model, attacked itself (transfer under the STE, and Square)
    int8: dict[str, Any] = {}
    if ctx.eval.int8_attack and _is_8bit(model):
        int8 = int8_robustness(model, ctx.val_loader(ctx.eval.n_check), ctx.threat,
                               calib_loader=ctx.train_loader(128, seed=params.seed), max_images=ctx.eval.n_check,
                               square_queries=ctx.eval.check_square_queries, seed=params.seed,
                               calib_batches=params.quant.calib_batches)

    # 6. measure what it costs: every cost kind, whatever the study's objective
    costs = ctx.measure_costs(model)
    result = TrialResult(
        clean_acc=res.clean, robust_acc=robust, attack_acc=dict(res.robust), transfer_acc=transfer,
        macs=costs.macs, dense_macs=costs.dense_macs, bitops=costs.bitops, params=count_params(model, nonzero=True),
        size_bytes=costs.size_bytes, sparsity=prune_report.sparsity,
        layer_sparsity=dict(prune_report.layer_sparsity), stages=stages, checks=checks, flags=flags,
        time_s=time.perf_counter() - t0, n_eval=res.n, structural=prune_report.structural,
        latency_ms=costs.latency_ms, base_costs=ctx.base_costs().as_dict(), int8=int8, robust_from=robust_from,
        strong_acc=strong_acc, flag_reason=reason, model=model,
    )
    return result


def _is_8bit(model: nn.Module) -> bool:
    """Every conv / linear weight fake-quantized to 8 bits: the model has a torch.ao int8 form."""
    widths = layer_bitwidths(model)
    return bool(widths) and len(widths) == len(quantizable_layers(model)) and {w for w, _ in widths.values()} == {8}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def flag_reason(report: MaskingReport) -> str:
    """One line naming the fired masking flags and the numbers behind them."""
    r = report
    detail = {
        "zero_grad": f"{r.zero_grad_frac:.0%} of correct inputs have a zero gradient",
        "strong_gap": f"PGD {_fmt(r.pgd_acc)} vs strong attacks {_fmt(r.strong_acc)}",
        "scaled_gap": f"PGD {_fmt(r.pgd_subset_acc)} vs logit-scaled PGD {_fmt(r.scaled_acc)}",
        "transfer_above_whitebox": f"transfer {_fmt(r.transfer_acc)} below white-box PGD {_fmt(r.pgd_acc)}",
        "steps_non_monotone": f"PGD x{r.more_steps_factor} steps {_fmt(r.pgd_more_acc)} above "
                              f"PGD {_fmt(r.pgd_subset_acc)}",
        "steps_not_converged": f"PGD x{r.more_steps_factor} steps {_fmt(r.pgd_more_acc)} below "
                               f"PGD {_fmt(r.pgd_subset_acc)}",
    }
    fired = "; ".join(f"{name} ({detail.get(name, 'fired')})" for name in r.masking)
    return f"masking: {fired} on {r.n_images} images"


def checkpoint_metadata(params: TrialParams, ctx: TrialContext, result: TrialResult) -> dict[str, Any]:
    """The metadata a trial's checkpoint is saved with (what ``load_checkpoint`` rebuilds it from)."""
    return {
        **ctx.base_meta, "prune": to_dict(params.prune), "quant": to_dict(params.quant),
        "finetune": to_dict(params.finetune), "threat": to_dict(ctx.threat), "metrics": result.metrics(),
        "structure": result.structural,
    }
