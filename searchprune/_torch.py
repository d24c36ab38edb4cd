"""Small torch helpers shared by every layer: devices, seeds, threads, modes, parameter counts.

One copy of each: everything above this module imports them from here."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError

__all__ = ["get_device", "seed_everything", "set_cpu_threads", "eval_mode", "model_device", "count_params"]


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


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts every submodule in eval mode and restores each one's own flag on exit.

    Restoring per submodule (rather than ``model.train(was_training)``) keeps deliberately frozen
    parts, e.g. BatchNorm layers held in eval mode during fine-tuning, as they were.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (else first buffer); None for a model with neither."""
    ref: torch.Tensor | None = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    return None if ref is None else ref.device


def count_params(model: nn.Module, *, nonzero: bool) -> int:
    """Counts the model's parameters as deployed.

    A parametrized tensor (masked or fake-quantized weight) counts as its effective value
    ``module.weight``; the parametrization's own tensors (``original``, learned scores, quantizer
    scales) are training state and are not counted. Shared parameters count once.

    Args:
        model: the model.
        nonzero: count only nonzero entries (ShrinkBench's "nonzero parameters"); False counts all.
            No default: the two counts answer different questions, so every caller says which.
    """
    skip: set[int] = set()
    effective: list[torch.Tensor] = []
    with torch.no_grad():
        for module in model.modules():
            if parametrize.is_parametrized(module):
                params = module.parametrizations
                assert isinstance(params, nn.ModuleDict)
                skip.update(id(p) for p in params.parameters())
                effective.extend(getattr(module, name) for name in params)
        tensors = effective + [p for p in model.parameters() if id(p) not in skip]
        if nonzero:
            return sum(int(torch.count_nonzero(t)) for t in tensors)
        return sum(t.numel() for t in tensors)
