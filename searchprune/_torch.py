"""Small torch helpers shared by every layer: devices, seeds, threads."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["get_device", "seed_everything", "set_cpu_threads"]


def get_device(name: str | None = None) -> torch.device:
    """Returns ``torch.device(name)``, or CUDA when present and ``name`` is None or "auto".

    Raises:
        ConfigError: when the name is not a device torch knows, or CUDA is asked for but absent.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_cpu_threads(n: int | None = None) -> None:
    """Sets torch's intra-op threads: ``n``, else ``$SEARCHPRUNE_THREADS``, else
    ``$OMP_NUM_THREADS``, else all cores."""
    env = os.environ.get("SEARCHPRUNE_THREADS") or os.environ.get("OMP_NUM_THREADS") or "0"
    n = n or (int(env) if env.isdigit() else 0) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
