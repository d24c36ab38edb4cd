"""A model factory with a side effect, for the tests that loading never runs code a file names.

``touch_and_build`` creates the file ``marker`` and returns a real model: the marker existing
afterwards proves the factory ran (the trusted case); its absence proves it did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from searchprune.models import create_model

__all__ = ["FACTORY", "touch_and_build", "evil_meta"]

FACTORY = "_evil:touch_and_build"


def touch_and_build(marker: str, num_classes: int = 10, in_channels: int = 1, image_size: Sequence[int] = (28, 28),
                    mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)) -> nn.Module:
    Path(marker).touch()
    return create_model("cnn8", num_classes=num_classes, in_channels=in_channels, image_size=tuple(image_size),
                        mean=mean, std=std)


def evil_meta(factory: str, kwargs: dict[str, Any], *, dataset: str = "synthetic") -> dict[str, Any]:
    """Checkpoint metadata naming ``factory`` (with ``kwargs``) for a 1x28x28, 10-class dataset."""
    return {"model": {"arch": None, "factory": factory, "kwargs": kwargs},
            "dataset": {"name": dataset, "num_classes": 10, "in_channels": 1, "image_size": [28, 28],
                        "mean": [0.5], "std": [0.5]}}
