"""Timing, the shape signature that keys it, and the cache that makes a study pay once per shape.

A latency depends on what a dense kernel executes: the conv / linear layers' shapes (channels,
kernel, stride, groups, input size), their bit widths, the batch, the device and the thread count.
Unstructured zeros do not enter the signature (a dense kernel multiplies them), nor do weight
values; two models with the same signature take the same time, so the second one is not timed.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..quantize import QUANTIZABLE, layer_bitwidths

__all__ = ["LatencyCache", "DEFAULT_CACHE", "time_runs", "median_ms", "shape_signature", "signature_key",
           "resolve_bits", "model_device"]

FLOAT_BITS = 32


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _kind(module: nn.Module) -> str:
    """The module's class name, looking through torch's generated ``Parametrized<X>`` classes."""
    cls = type(module)
    return cls.__bases__[0].__name__ if parametrize.is_parametrized(module) else cls.__name__


def time_runs(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, *, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` forwards of ``fn(x)``, after ``warmup`` untimed ones.

    Runs under ``torch.inference_mode``; on a CUDA device each forward is bracketed by
    ``torch.cuda.synchronize`` so the time is the kernel time, not the launch time.
    """
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    out = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            sync()
            out.append(time.perf_counter() - t0)
    return out


def median_ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, *, repeats: int, warmup: int) -> float:
    """Median milliseconds per forward of ``fn(x)`` (through :func:`time_runs`)."""
    from . import _measure  # looked up at call time, so a test can count the timed runs

    return statistics.median(_measure.time_runs(fn, x, repeats=repeats, warmup=warmup)) * 1e3


def resolve_bits(model: nn.Module, quant_bits: int | None) -> int | None:
    """The model's uniform weight bit width: ``quant_bits`` if given, else read from its quantizers.

    Returns:
        32 for a float model, the common width when every conv / linear layer is quantized to it,
        None for mixed precision (some layers float or at other widths).

    Raises:
        ConfigError: ``quant_bits`` is not 2..16 or 32.
    """
    if quant_bits is not None:
        if isinstance(quant_bits, bool) or not isinstance(quant_bits, int) or not (
                2 <= quant_bits <= 16 or quant_bits == FLOAT_BITS):
            raise ConfigError(f"quant_bits: expected 2..16 or 32 (float), got {quant_bits!r}")
        return quant_bits
    widths = layer_bitwidths(model)
    if not widths:
        return FLOAT_BITS
    layers = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    bits = {w for w, _ in widths.values()}
    return bits.pop() if len(bits) == 1 and len(widths) == len(layers) else None


def shape_signature(model: nn.Module, example_input: torch.Tensor) -> list[list[Any]]:
    """What a dense kernel executes, layer by layer, in call order (one forward of one image).

    Each conv entry is ``[type, in, out, kernel, stride, padding, dilation, groups, bias, input
    size, weight bits, activation bits]``, each linear entry ``[type, in, out, bias, input shape,
    weight bits, activation bits]`` (32 = float, None = no activation quantizer).
    """
    bits = layer_bitwidths(model)
    names = {m: n for n, m in model.named_modules()}
    order: list[list[Any]] = []

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        w_bits, a_bits = bits.get(names[module], (FLOAT_BITS, None))
        size = list(args[0].shape[2:]) if isinstance(module, nn.modules.conv._ConvNd) else list(args[0].shape[1:-1])
        if isinstance(module, nn.modules.conv._ConvNd):
            order.append([_kind(module), module.in_channels, module.out_channels, list(module.kernel_size),
                          list(module.stride), str(module.padding), list(module.dilation), module.groups,
                          module.bias is not None, size, w_bits, a_bits])
        else:
            assert isinstance(module, nn.Linear)
            order.append(["Linear", module.in_features, module.out_features, module.bias is not None, size,
                          w_bits, a_bits])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
    return order


def signature_key(kind: str, model: nn.Module, example_input: torch.Tensor,
                  **settings: Any) -> tuple[str, dict[str, Any]]:
    """``(sha1 key, signature)`` of a measurement ``kind`` of ``model`` under ``settings``.

    The signature adds to :func:`shape_signature` the model class, its other leaf module kinds
    (counted), the per-image input shape, the device, torch's thread count and version.
    """
    leaves: dict[str, int] = {}
    for name, m in model.named_modules():
        # parametrizations (masks, quantizers) are training state: a deployed model has none
        if not list(m.children()) and not isinstance(m, QUANTIZABLE) and "parametrizations" not in name.split("."):
            leaves[_kind(m)] = leaves.get(_kind(m), 0) + 1
    device = model_device(model)
    sig = {"kind": kind, "model": type(model).__name__, "input": list(example_input.shape[1:]),
           "layers": shape_signature(model, example_input), "other_modules": dict(sorted(leaves.items())),
           "device": device.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
           **{k: settings[k] for k in sorted(settings)}}
    key = hashlib.sha1(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()
    return key, sig


class LatencyCache:
    """Measured values by signature key: in memory, and as one JSON file per key in ``directory``.

    Files are written atomically (a temporary file renamed), so study workers may share a directory.

    Attributes:
        directory: where entries persist (None: memory only).
        hits: lookups answered from the cache.
        misses: lookups that found nothing (each is followed by a measurement).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        """The stored value for ``key``, or None."""
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        if self.directory is not None:
            path = self.directory / f"{key}.json"
            if path.is_file():
                value = json.loads(path.read_text())["value"]
                self._memory[key] = value
                self.hits += 1
                return value
        self.misses += 1
        return None

    def put(self, key: str, value: Any, signature: dict[str, Any] | None = None) -> None:
        """Stores ``value`` (JSON-serializable) under ``key``, with its signature for the reader."""
        self._memory[key] = value
        if self.directory is not None:
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"value": value, "signature": signature}, f, default=str)
            os.replace(tmp, self.directory / f"{key}.json")

    def clear(self) -> None:
        """Forgets the in-memory entries (files stay) and resets the counters."""
        self._memory.clear()
        self.hits = self.misses = 0


DEFAULT_CACHE = LatencyCache()
