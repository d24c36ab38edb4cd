"""THE core: one trial = prune -> fine-tune -> quantize -> attack -> measure.

``run_trial(params, ctx)`` is plain PyTorch with no Optuna in sight, so the same code runs live
inside a study (``space.suggest`` makes the params), replays a stored trial for export, and runs
in a unit test with hand-written params. Progress leaves through the optional ``report``
callback; a multi-fidelity gate leaves through :class:`TrialGated`, which the study turns into
``optuna.TrialPruned``. Nothing here writes files: the result carries the trial's model, and
:func:`checkpoint_metadata` the record a caller saves with it
(:class:`searchprune.search.objective.Objective` does, for a study).

Selection happens on the validation split (carved from train); the test split is only touched
by export / ``searchprune eval``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._torch import count_params, seed_everything
from .attacks import accuracy_on_batches, evaluate, transfer_examples
from .attacks.masking import CheckBudget, masking_checks
from .config import EvalConfig, GateConfig, ThreatModel, TrialParams, to_dict
from .data import BatchLoader, Splits
from .models.macs import count_dense_macs, count_macs
from .prune import prune_
from .quantize import count_bitops, model_size_bytes, quantize_
from .train import train_

__all__ = ["TrialContext", "TrialResult", "TrialGated", "run_trial", "StageMetrics", "checkpoint_metadata"]

Report = Callable[[str, Mapping[str, Any]], None]


class TrialGated(Exception):
    """Raised when a trial falls below the multi-fidelity gate after its short fine-tune."""

    def __init__(self, reason: str, metrics: Mapping[str, float]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics)


@dataclass
class TrialContext:
    """What every trial of a study shares: data, the dense base model, the threat model.

    Attributes:
        base_model: the dense model; each trial works on a deep copy.
        base_meta: the base checkpoint's ``model`` and ``dataset`` records (for trial checkpoints).
        cache_dir: where expensive per-base-model results (MRS scores) are cached.
    """

    base_model: nn.Module
    base_meta: Mapping[str, Any]
    splits: Splits
    threat: ThreatModel
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_batch_size: int = 256
    cache_dir: Path | None = None
    progress: bool = False  # fine-tuning reports progress (searchprune._progress: bar or 30 s lines)
    # transfer examples crafted once on the dense model, reused by every trial: (x_adv, y) batches
    _transfer: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        info = self.splits.info
        return (info.in_channels, *info.image_size)

    def train_loader(self, batch_size: int, seed: int) -> BatchLoader:
        return BatchLoader(self.splits.train, batch_size, shuffle=True, seed=seed, device=self.device)

    def val_loader(self, max_images: int | None) -> BatchLoader:
        return BatchLoader(self.splits.val, self.eval_batch_size, device=self.device, max_images=max_images)

    def transfer_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """PGD examples crafted on the dense base model for the evaluation images (cached)."""
        if self._transfer is None:
            source = self.base_model.to(self.device).eval()
            self._transfer = [(transfer_examples(source, x, y, self.threat), y)
                              for x, y in self.val_loader(self.eval.n_eval)]
        return self._transfer


@dataclass(frozen=True)
class StageMetrics:
    """Clean and PGD accuracy after one stage, on ``ctx.eval.n_stage_eval`` validation images."""

    clean_acc: float
    pgd_acc: float


@dataclass(frozen=True)
class TrialResult:
    """Everything a trial measured. Accuracies are fractions on the validation split.

    ``robust_acc`` is the robust objective (PGD accuracy, or the per-example worst case over the
    study's attacks); ``cost`` is the third objective (``macs`` or ``bitops``). ``model`` is the
    pruned, fine-tuned (and quantized) model itself; ``structural`` says channels were removed
    physically (a checkpoint must record the structure).
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
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def pgd_acc(self) -> float:
        return self.attack_acc.get("pgd", self.robust_acc)

    def cost(self, kind: str) -> float:
        return float(self.bitops if kind == "bitops" else self.macs)

    def metrics(self) -> dict[str, Any]:
        """Flat JSON-safe metrics (what the study stores as user attributes)."""
        out: dict[str, Any] = {
            "clean_acc": self.clean_acc, "robust_acc": self.robust_acc, "pgd_acc": self.pgd_acc,
            "transfer_acc": self.transfer_acc, "macs": self.macs, "dense_macs": self.dense_macs,
            "mac_ratio": self.macs / max(self.dense_macs, 1), "bitops": self.bitops, "params": self.params,
            "size_bytes": self.size_bytes, "sparsity": self.sparsity, "time_s": self.time_s, "n_eval": self.n_eval,
        }
        out.update({f"acc_{k}": v for k, v in self.attack_acc.items()})
        out.update({f"stage_{s}_{k}": v for s, m in self.stages.items() for k, v in dataclasses.asdict(m).items()})
        return out


def _stage(model: nn.Module, ctx: TrialContext) -> StageMetrics:
    res = evaluate(model, ctx.val_loader(ctx.eval.n_stage_eval), ctx.threat, attacks=("pgd",))
    return StageMetrics(clean_acc=res.clean, pgd_acc=res.robust["pgd"])


def _finetune(model: nn.Module, params: TrialParams, ctx: TrialContext, report: Report) -> None:
    """Fine-tunes with the trial's recipe; with the gate on, the first ``gate.epochs`` run first
    and the trial stops early (TrialGated) if it is below the floors."""
    cfg = params.finetune
    assert cfg is not None
    loader = ctx.train_loader(cfg.batch_size, seed=cfg.seed)
    gate = ctx.gate
    if gate.enabled and cfg.epochs > gate.epochs:
        train_(model, loader, dataclasses.replace(cfg, epochs=gate.epochs), threat=ctx.threat)
        m = _stage(model, ctx)
        report("gate", dataclasses.asdict(m))
        if m.clean_acc < gate.min_clean_acc or m.pgd_acc < gate.min_pgd_acc:
            raise TrialGated(
                f"after {gate.epochs} epochs of fine-tuning: clean {m.clean_acc:.3f} (floor {gate.min_clean_acc}), "
                f"PGD {m.pgd_acc:.3f} (floor {gate.min_pgd_acc})",
                dataclasses.asdict(m),
            )
        # The rest of the budget; the schedule restarts, which is exact for the constant schedule.
        cfg = dataclasses.replace(cfg, epochs=cfg.epochs - gate.epochs, seed=cfg.seed + 1)
        loader = ctx.train_loader(cfg.batch_size, seed=cfg.seed)
    train_(model, loader, cfg, threat=ctx.threat, progress=ctx.progress)


def run_trial(params: TrialParams, ctx: TrialContext, *, report: Report | None = None) -> TrialResult:
    """Runs one trial on a copy of the base model and measures it.

    Args:
        params: what to do (pruning, fine-tuning, quantization, seed).
        ctx: the study's shared data, base model and threat model.
        report: optional ``report(event, payload)`` callback for progress.

    Raises:
        TrialGated: the gate stopped the trial after its short fine-tune.
    """
    report = report or (lambda event, payload: None)
    t0 = time.perf_counter()
    seed_everything(params.seed)
    model = copy.deepcopy(ctx.base_model).to(ctx.device)
    stages: dict[str, StageMetrics] = {}
    calib = ctx.train_loader(128, seed=params.seed)

    # 1. prune (data-driven criteria see training batches and the study's threat model)
    prune_report = prune_(
        model, params.prune, input_shape=ctx.input_shape, loader=ctx.train_loader(128, seed=params.seed),
        threat=ctx.threat, train_cfg=params.finetune, cache_dir=ctx.cache_dir,
    )
    if ctx.eval.stagewise:
        stages["prune"] = _stage(model, ctx)
        report("prune", dataclasses.asdict(stages["prune"]))

    # 2. fine-tune; quantization-aware training inserts the quantizers first
    qmode = params.quant.mode
    if qmode == "qat":
        quantize_(model, params.quant, calib_loader=calib)
    if params.finetune is not None and params.finetune.epochs > 0:
        _finetune(model, params, ctx, report)
        if ctx.eval.stagewise:
            stages["finetune"] = _stage(model, ctx)
            report("finetune", dataclasses.asdict(stages["finetune"]))

    # 3. post-training quantization
    if qmode == "ptq":
        quantize_(model, params.quant, calib_loader=calib)
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
    if ctx.eval.checks:
        strong = [res.robust[a] for a in res.robust if a != "pgd"]
        mr = masking_checks(
            model, ctx.val_loader(ctx.eval.n_stage_eval), ctx.threat, pgd_acc=res.robust.get("pgd", robust),
            strong_acc=min(strong) if strong else None, transfer_acc=transfer,
            budget=CheckBudget(n_images=ctx.eval.n_stage_eval, apgd_steps=ctx.eval.check_apgd_steps,
                               square_queries=ctx.eval.check_square_queries, seed=params.seed),
        )
        checks, flags = mr.as_user_attrs(), dict(mr.flags)
    report("attack", {"clean_acc": res.clean, "robust_acc": robust})

    # 5. measure what it costs as it runs
    macs = count_macs(model, ctx.input_shape)
    result = TrialResult(
        clean_acc=res.clean, robust_acc=robust, attack_acc=dict(res.robust), transfer_acc=transfer,
        macs=macs, dense_macs=count_dense_macs(ctx.base_model, ctx.input_shape),
        bitops=count_bitops(model, ctx.input_shape), params=count_params(model, nonzero=True),
        size_bytes=model_size_bytes(model), sparsity=prune_report.sparsity,
        layer_sparsity=dict(prune_report.layer_sparsity), stages=stages, checks=checks, flags=flags,
        time_s=time.perf_counter() - t0, n_eval=res.n, structural=prune_report.structural, model=model,
    )
    return result


def checkpoint_metadata(params: TrialParams, ctx: TrialContext, result: TrialResult) -> dict[str, Any]:
    """The metadata a trial's checkpoint is saved with (what ``load_checkpoint`` rebuilds it from)."""
    return {
        **ctx.base_meta, "prune": to_dict(params.prune), "quant": to_dict(params.quant),
        "finetune": to_dict(params.finetune), "threat": to_dict(ctx.threat), "metrics": result.metrics(),
        "structure": result.structural,
    }

