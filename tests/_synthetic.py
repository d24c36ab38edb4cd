"""Base models on the synthetic dataset for trial-level tests: a checkpoint's metadata and a briefly trained net."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from searchprune.config import DataConfig, ThreatModel, TrainConfig
from searchprune.data import BatchLoader, Splits, make_splits
from searchprune.models import create_model
from searchprune.train import train_

__all__ = ["synthetic_meta", "trained_base"]


def synthetic_meta(arch: str, *, std: float = 0.25) -> dict[str, Any]:
    """The ``base_meta`` of a registered model ``arch`` built for the synthetic set (mean 0.5)."""
    return {"model": {"arch": arch, "factory": None, "kwargs": {}},
            "dataset": {"name": "synthetic", "num_classes": 10, "in_channels": 1, "image_size": [28, 28],
                        "mean": [0.5], "std": [std]}}


def trained_base(threat: ThreatModel, *, val_size: int, test_size: int) -> tuple[nn.Module, Splits]:
    """``mnist_small`` trained 2 epochs (seed 0) on 512 synthetic images, in eval mode, with its splits."""
    splits = make_splits(DataConfig(dataset="synthetic", train_size=512, val_size=val_size, test_size=test_size,
                                    seed=0))
    torch.manual_seed(0)
    model = create_model("mnist_small", in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.25,))
    train_(model, BatchLoader(splits.train, 64, shuffle=True), TrainConfig(epochs=2, lr=0.05), threat=threat)
    return model.eval(), splits
