"""Small shared pieces: the registry every concept hides behind, user errors, devices, seeds.

Nothing here imports the rest of the package, so every module may import it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = ["ConfigError", "Registry", "get_device", "seed_everything", "set_cpu_threads"]


class ConfigError(ValueError):
    """A user-facing error: a bad value in a config, a CLI flag or a file.

    The message always names the offending value and what was expected, so the CLI prints it
    without a traceback.
    """


class Registry(Generic[T]):
    """A name -> object table filled by a decorator (timm's ``@register_model`` pattern).

    Example:
        >>> MODELS: Registry[Callable] = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(): ...
        >>> MODELS.get("tiny") is tiny
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def get_device(name: str | None = None):  # -> torch.device
    """Returns ``torch.device(name)``, or CUDA when present and ``name`` is None or "auto".

    Raises:
        ConfigError: when the name is not a device torch knows, or CUDA is asked for but absent.
    """
    import torch

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
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_cpu_threads(n: int | None = None) -> None:
    """Sets torch's intra-op threads: ``n``, else ``$SEARCHPRUNE_THREADS``, else
    ``$OMP_NUM_THREADS``, else all cores."""
    import torch

    env = os.environ.get("SEARCHPRUNE_THREADS") or os.environ.get("OMP_NUM_THREADS") or "0"
    n = n or (int(env) if env.isdigit() else 0) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
