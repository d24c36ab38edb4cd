"""Tiny end-to-end study configs on the synthetic dataset (seconds per trial on one CPU thread).

Shared by ``test_study.py`` and ``test_workers.py``: the same shape as ``test_cli.write_study``,
smaller still, with the optional per-trial measurements (transfer, masking checks, stage-wise
accuracy) off so a trial is prune -> short fine-tune -> PGD on 64 images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import yaml

from searchprune.config import StudyConfig, build
from searchprune.search import make_storage

__all__ = ["tiny_config", "tiny_study_config", "write_yaml", "trials_of"]


def tiny_config(tmp_path: Path, base: Path, *, name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A study mapping; ``overrides`` replace top-level sections (``space=..., gate=...``).

    Args:
        tmp_path: where the study's outputs go (``runs/{name}``).
        base: the base checkpoint; trained by ``optimize`` the first time (shared between tests).
    """
    cfg: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp_path / "runs" / "{name}"),
        "n_trials": 2,
        "data": {"dataset": "synthetic", "train_size": 256, "val_size": 128, "test_size": 64,
                 "batch_size": 64, "eval_batch_size": 128},
        "model": {"arch": "mnist_small", "checkpoint": str(base),
                  "train": {"recipe": "standard", "epochs": 2, "lr": 0.05}},
        "threat": {"eps": 0.02, "alpha": 0.01, "steps": 3, "random_start": False},
        "eval": {"n_eval": 64, "n_stage_eval": 32, "export_attacks": ["pgd"], "transfer": False,
                 "checks": False, "stagewise": False},
        "defaults": {"prune": {"method": "magnitude", "sparsity": 0.5},
                     "finetune": {"recipe": "fast", "epochs": 0.5, "lr": 0.02}},
        "space": {"prune.sparsity": {"low": 0.3, "high": 0.9}, "finetune.recipe": ["none", "fast"]},
        "sampler": {"name": "random", "seed": 0},
    }
    cfg.update(copy.deepcopy(overrides))
    return cfg


def tiny_study_config(tmp_path: Path, base: Path, **overrides: Any) -> StudyConfig:
    """:func:`tiny_config` built into a validated :class:`StudyConfig`."""
    return build(StudyConfig, tiny_config(tmp_path, base, **overrides))


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The stored trials, read with a plain Optuna handle (no searchprune sampler or config)."""
    return optuna.load_study(study_name=name, storage=make_storage(storage)).get_trials(deepcopy=False)
