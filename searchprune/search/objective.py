"""The Optuna objective: suggest params, run the Optuna-free core, store what it measured.

The trial core (:func:`searchprune.trial.run_trial`) writes no files; the objective saves each
trial's checkpoint (``<output_dir>/checkpoints/trial_NNNNN.pt`` with a ``.json`` record beside it)
and uploads both as Optuna artifacts when the study has an artifact directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from .. import checkpoint
from .._torch import get_device
from ..checkpoint import save_checkpoint
from ..config import StudyConfig, TrialParams, to_dict
from ..data import Splits, make_splits
from ..prune import prunable_layers
from ..trial import TrialContext, TrialResult, checkpoint_metadata, run_trial
from .pruner import from_config
from .space import suggest_params

__all__ = ["Objective", "build_context", "ensure_base_model", "prunable_layer_names"]


# --------------------------------------------------------------------------------------------
# The base model and the trial context
# --------------------------------------------------------------------------------------------


def base_checkpoint_path(cfg: StudyConfig) -> Path:
    if cfg.model.checkpoint is not None:
        return Path(cfg.model.checkpoint)
    return cfg.out_path / f"base_{cfg.model.arch or 'custom'}_{cfg.data.dataset}.pt"


def ensure_base_model(cfg: StudyConfig, splits: Splits, device: torch.device, *,
                      progress: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The study's base model: :func:`searchprune.checkpoint.ensure_base_model` with the study's settings."""
    return checkpoint.ensure_base_model(
        base_checkpoint_path(cfg), cfg.model, splits, data=cfg.data, train_cfg=cfg.model.train, threat=cfg.threat,
        device=device, n_eval=cfg.eval.n_eval, progress=progress,
    )


def build_context(cfg: StudyConfig, *, device: str | None = None,
                  progress: bool = True) -> TrialContext:
    """Data splits + base model + threat model: what every trial of the study shares."""
    dev = get_device(device)
    splits = make_splits(cfg.data)
    model, meta = ensure_base_model(cfg, splits, dev, progress=progress)
    return TrialContext(
        base_model=model.to(dev).eval(), base_meta={k: meta[k] for k in ("model", "dataset")}, splits=splits,
        threat=cfg.threat, eval=cfg.eval, device=dev, eval_batch_size=cfg.data.eval_batch_size,
        cache_dir=cfg.out_path.resolve() / "cache", rung_n_eval=cfg.pruner.rung_n_eval,
        rung_pgd_steps=cfg.pruner.rung_pgd_steps, cost=cfg.cost, progress=progress,
    )


def prunable_layer_names(cfg: StudyConfig, ctx: TrialContext) -> list[str]:
    p = cfg.defaults.prune
    return list(prunable_layers(ctx.base_model, include_classifier=p.include_classifier,
                                include_first=p.include_first))


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------


class Objective:
    """``optuna`` objective: suggest params, run the Optuna-free core, store what it measured.

    Args:
        cfg: the study's config.
        ctx: the shared trial context (:func:`build_context`).
        artifact_dir: where checkpoints are uploaded as Optuna artifacts (None: not uploaded).
        checkpoint_dir: where trial checkpoints are written (default: ``<output_dir>/checkpoints``).
        log: where the one-line trial summaries go.
    """

    def __init__(self, cfg: StudyConfig, ctx: TrialContext, *, artifact_dir: str | None,
                 checkpoint_dir: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.cfg, self.ctx, self.log = cfg, ctx, log
        self.checkpoint_dir = checkpoint_dir or cfg.out_path.resolve() / "checkpoints"
        self.store = FileSystemArtifactStore(artifact_dir) if artifact_dir else None
        if artifact_dir:
            Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        self.layer_names = prunable_layer_names(cfg, ctx)
        self.pruner = from_config(cfg.pruner, log=log)  # successive halving (None: every trial runs in full)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        # a heartbeat retry inherits the killed trial's user attrs: rerun it with the same seed
        seed = int(trial.user_attrs.get("seed", self.cfg.seed * 100_003 + trial.number))
        trial.set_user_attr("seed", seed)
        cpu0 = time.process_time()  # the trial's compute, whatever its end (what equal-budget comparisons add)
        try:
            params = suggest_params(trial, self.cfg.space, self.cfg.defaults, seed=seed,
                                    layer_names=self.layer_names)
            if self.pruner is None:
                result = run_trial(params, self.ctx)
            else:
                reporter = self.pruner.reporter(trial)
                # rungs measure macs and bitops; other cost kinds (size, latency) rank by MACs there,
                # which fine-tuning does not change either
                kind = self.cfg.cost if self.cfg.cost in ("macs", "bitops") else "macs"

                def on_rung(k: int, epochs_done: float, metrics: Mapping[str, float]) -> None:
                    reporter(k, epochs_done, {**metrics, "cost": metrics[kind]})

                result = run_trial(params, self.ctx, rungs=self.pruner.rungs, on_rung=on_rung)
        except optuna.TrialPruned:
            raise  # the reporter stored the rung metrics and pruned_reason; not a failure
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            self.log(f"trial {trial.number} failed: {type(e).__name__}: {e}")
            raise
        finally:
            trial.set_user_attr("cpu_s", round(time.process_time() - cpu0, 3))
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("layer_sparsity", {k: round(v, 5) for k, v in result.layer_sparsity.items()})
        for k, v in result.checks.items():
            trial.set_user_attr(f"check_{k}", v)
        for k, v in result.flags.items():
            trial.set_user_attr(f"flag_{k}", bool(v))
        trial.set_user_attr("flag_any", any(result.flags.values()))
        trial.set_user_attr("cost_kind", self.cfg.cost)
        self._constraints(trial, result)
        self._save(trial, result, params)
        cost = result.cost(self.cfg.cost)
        flagged = f"  FLAGGED ({self.cfg.eval.on_flag}): {result.flag_reason}" if result.flag_reason else ""
        self.log(f"trial {trial.number}: clean {result.clean_acc:.4f}  robust {result.robust_acc:.4f}  "
                 f"macs {result.macs / 1e6:.2f}M ({result.macs / max(result.base_macs, 1):.0%})  "
                 + ("" if self.cfg.cost == "macs" else f"{self.cfg.cost} {cost:.4g}  ")
                 + f"{result.time_s:.1f}s{flagged}")
        return result.clean_acc, result.robust_acc, cost

    def _constraints(self, trial: optuna.Trial, result: TrialResult) -> None:
        c = self.cfg.constraints
        if c.max_macs is not None:
            trial.set_constraint("max_macs", (result.macs - c.max_macs) / c.max_macs)
        if c.max_bitops is not None:
            trial.set_constraint("max_bitops", (result.bitops - c.max_bitops) / c.max_bitops)
        if c.min_clean_acc is not None:
            trial.set_constraint("min_clean_acc", c.min_clean_acc - result.clean_acc)
        # Every trial: > 0 (infeasible, off the front) exactly when it is flagged at chance level.
        gap = float(result.checks["chance_threshold"]) - result.clean_acc
        trial.set_constraint("above_chance", max(gap, 1e-9) if result.flags.get("chance") else min(gap, -1e-9))
        masking = self.cfg.eval.checks and self.cfg.eval.on_flag == "infeasible"
        if masking:
            # a fired masking flag: the robustness number is not trusted, so the trial leaves the
            # feasible front (1.0 = violated; 0.0 = satisfied)
            trial.set_constraint("masking", 1.0 if result.flagged else 0.0)
            if result.flagged:
                trial.set_user_attr("infeasible_reason", result.flag_reason)
        if any(v > 0 for v in getattr(trial, "constraints", {}).values()):
            trial.set_user_attr("feasible", False)
        elif c.max_macs is not None or c.max_bitops is not None or c.min_clean_acc is not None or masking:
            trial.set_user_attr("feasible", True)

    def _save(self, trial: optuna.Trial, result: TrialResult, params: TrialParams) -> None:
        """Writes the checkpoint and its JSON record; uploads both as artifacts."""
        assert result.model is not None
        path = self.checkpoint_dir / f"trial_{trial.number:05d}.pt"
        save_checkpoint(path, result.model, checkpoint_metadata(params, self.ctx, result))
        meta_path = path.with_suffix(".json")
        meta_path.write_text(json.dumps({
            "study": self.cfg.name, "trial": trial.number, "params": trial.params, "seed": params.seed,
            "trial_params": to_dict(params), "metrics": result.metrics(), "stages": to_dict(result.stages),
            "layer_sparsity": dict(result.layer_sparsity), "flags": dict(result.flags),
            "threat": to_dict(self.cfg.threat), "checkpoint": path.name,
        }, indent=2, default=str))
        trial.set_user_attr("checkpoint", str(path))
        if self.store is None:
            return
        for file, mime in ((str(path), "application/octet-stream"), (str(meta_path), "application/json")):
            artifact_id = upload_artifact(artifact_store=self.store, file_path=file, study_or_trial=trial,
                                          mimetype=mime)
            key = "artifact_checkpoint" if mime.endswith("stream") else "artifact_metadata"
            trial.set_user_attr(key, artifact_id)
