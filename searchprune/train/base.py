"""The base model: built, trained and measured in one place, for ``searchprune train`` and for studies.

:func:`train_base_model` is the one code path that turns a model config and a recipe into a
trained dense model plus the metadata its checkpoint is saved with. Loading an existing base
checkpoint instead (and training and saving one when it is missing) is
:func:`searchprune.checkpoint.ensure_base_model`, one layer up: checkpoints rebuild pruned and
quantized models, which this layer sits below.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from torch import nn

from .._torch import seed_everything
from ..attacks import evaluate
from ..config import DataConfig, ModelConfig, ThreatModel, TrainConfig, to_dict
from ..data import ArrayDataset, BatchLoader, DatasetInfo, Splits
from ..models import build_model
from ._api import train_

__all__ = ["model_record", "train_base_model"]


def model_record(model_cfg: ModelConfig, info: DatasetInfo) -> dict[str, Any]:
    """The ``model`` and ``dataset`` records of a checkpoint's metadata (what rebuilds the model)."""
    return {
        "model": {"arch": model_cfg.arch, "factory": model_cfg.factory, "kwargs": dict(model_cfg.kwargs)},
        "dataset": {"name": info.name, "num_classes": info.num_classes, "in_channels": info.in_channels,
                    "image_size": list(info.image_size), "mean": list(info.mean), "std": list(info.std)},
    }


def train_base_model(model_cfg: ModelConfig, train_cfg: TrainConfig, splits: Splits, *, data: DataConfig,
                     threat: ThreatModel, device: torch.device, eval_split: Literal["val", "test"] = "val",
                     n_eval: int | None = None, train_set: ArrayDataset | None = None,
                     progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Builds the dense model, trains it with ``train_cfg`` and measures clean and PGD accuracy.

    Args:
        model_cfg: the architecture (or factory) to build.
        train_cfg: the recipe; its ``seed`` seeds the initialization and the training.
        splits: the data; the model trains on ``splits.train`` unless ``train_set`` is given.
        data: the data config the splits came from (recorded in the metadata; its
            ``eval_batch_size`` is the measuring batch size).
        threat: the threat model adversarial recipes train against and the PGD measures with.
        device: where to train.
        eval_split: the split measured afterwards: "val" for studies, "test" for ``searchprune train``.
        n_eval: images measured (None: the whole split).
        train_set: train on these images instead (a study's base model uses every training image).
        progress: show a progress bar.

    Returns:
        ``(model, meta)``: the trained model (on ``device``, in train mode as ``train_`` left it)
        and its checkpoint metadata: :func:`model_record`'s records, ``recipe``, ``threat``,
        ``data``, and ``metrics`` with ``<split>_clean_acc``, ``<split>_pgd_acc``, ``n_<split>``,
        ``train_seconds`` and ``train_history``.
    """
    seed_everything(train_cfg.seed)
    model = build_model(model_cfg, splits.info).to(device)
    images = splits.train if train_set is None else train_set
    loader = BatchLoader(images, train_cfg.batch_size, shuffle=True, seed=train_cfg.seed, device=device)
    t0 = time.perf_counter()
    history = train_(model, loader, train_cfg, threat=threat, progress=progress)
    train_s = time.perf_counter() - t0
    measured = splits.val if eval_split == "val" else splits.test
    res = evaluate(model, BatchLoader(measured, data.eval_batch_size, device=device, max_images=n_eval), threat,
                   attacks=("pgd",))
    meta = {
        **model_record(model_cfg, splits.info), "recipe": to_dict(train_cfg), "threat": to_dict(threat),
        "data": to_dict(data),
        "metrics": {f"{eval_split}_clean_acc": res.clean, f"{eval_split}_pgd_acc": res.robust["pgd"],
                    f"n_{eval_split}": res.n, "train_seconds": train_s, "train_history": history},
    }
    return model, meta
