"""The attack registry and the L-p geometry every attack shares (balls, steps, input gradients).

An attack is a function ``fn(model, x, y, threat, **options) -> x_adv`` registered by name; it
puts the model in eval mode, restores each submodule's mode afterwards, and differentiates with
respect to the input only (``torch.autograd.grad``), so parameter ``.grad`` is never touched.
Scoring models with attacks lives in :mod:`.evaluate`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from .._registry import Registry
from .._torch import eval_mode
from ..errors import ConfigError

__all__ = [
    "ATTACKS", "AttackFn", "Precision", "register_attack", "list_attacks", "get_attack", "call_with_options",
    "check_precision",
    "eval_mode", "autocast", "random_start", "ascent_step", "project", "input_grad", "predict", "fast_layout",
    "conv_layout",
]  # eval_mode is _torch's, re-exported for the attack modules

AttackFn = Callable[..., torch.Tensor]
Precision = Literal["fp32", "bf16"]

ATTACKS: Registry[AttackFn] = Registry("attack")


def register_attack(name: str) -> Callable[[AttackFn], AttackFn]:
    """Registers ``fn(model, x, y, threat: ThreatModel, **options) -> x_adv`` under ``name``."""
    return ATTACKS.register(name)


def list_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    return ATTACKS.names()


def get_attack(name: str) -> AttackFn:
    """The registered attack ``name``.

    Raises:
        ConfigError: no attack has that name (the message lists the known ones).
    """
    return ATTACKS.get(name)


def call_with_options(fn: Callable[..., torch.Tensor], attack: str, kwargs: dict[str, Any],
                      options: dict[str, Any], *args: Any) -> torch.Tensor:
    """Calls ``fn(*args, **kwargs, **options)``; options override kwargs and are name-checked.

    Registered wrappers use this so that a misspelt option names the attack and the accepted
    options instead of surfacing as a bare ``TypeError`` deep inside the attack.
    """
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("model", "x", "y")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(f"attack {attack!r}: unknown option {unknown[0]!r}; "
                          f"expected one of: {', '.join(accepted)}")
    return fn(*args, **{**kwargs, **options})


# ---------------------------------------------------------------------------------------------
# Shared machinery: modes, precision, L-p balls
# ---------------------------------------------------------------------------------------------


def check_precision(precision: str, attack: str | None = None) -> None:
    """Raises ConfigError unless ``precision`` is "fp32" or "bf16"; ``attack`` prefixes the message."""
    if precision not in ("fp32", "bf16"):
        what = "precision" if attack is None else f"{attack} precision"
        raise ConfigError(f"{what}: expected 'fp32' or 'bf16', got {precision!r}")


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """An autocast context: bf16 for conv / linear when ``precision == "bf16"``, a no-op for fp32.

    Raises:
        ConfigError: ``precision`` is neither "fp32" nor "bf16".
    """
    check_precision(precision)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _channels_last_copy(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` copied into channels_last strides, or None if it already has them.

    ``t.contiguous(memory_format=torch.channels_last)`` is a no-op for ambiguous shapes such as a
    1-channel image batch or a first conv's ``(C_out, 1, k, k)`` weight: they count as contiguous in
    both formats, yet oneDNN then picks NCHW for that layer and reorders every activation after it
    (cnn8 on Fashion-MNIST ran 1.35x slower that way). Building the strides explicitly avoids that.
    """
    cl = torch.empty_like(t, memory_format=torch.channels_last)
    return None if cl.stride() == t.stride() else cl.copy_(t)


@contextmanager
def conv_layout(model: nn.Module) -> Iterator[nn.Module]:
    """Holds the model's 4-d weights in channels_last layout on CPU, restoring them on exit.

    oneDNN runs convolutions natively in channels_last; with NCHW weights every conv call pays a
    reorder, which cancels the gain of a channels_last input (PGD-10 on a BN CNN-8: 1.25x with the
    input alone, 1.5x with the weights too, 3.6x together with bf16). Only the storage layout of
    ``param.data`` changes (values, shapes, ``Parameter`` objects and optimizer references stay).
    On exit each converted tensor gets its original storage back, with any values written in the
    meantime (training inside the context) copied into it, so code that ``view``s weights later
    is unaffected. A no-op on CUDA and for models without 4-d weights.
    """
    changed: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor, its original data)
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or t.dim() != 4 or t.device.type != "cpu" or not t.is_contiguous():
            continue
        seen.add(id(t))
        cl = _channels_last_copy(t.data)
        if cl is not None:
            changed.append((t, t.data))
            t.data = cl
    try:
        yield model
    finally:
        for t, original in changed:
            if t.data.shape == original.shape:  # else the layer was rebuilt inside: leave it
                original.copy_(t.data)
                t.data = original


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout convolutions run fastest with on this device.

    On CPU that is channels_last (oneDNN's native layout; see :func:`conv_layout`). Values and
    shape are unchanged; only strides differ.
    """
    if x.dim() == 4 and x.device.type == "cpu":
        cl = _channels_last_copy(x)
        return x if cl is None else cl
    return x


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped to broadcast against ``t``: (B,) -> (B, 1, ..., 1)."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _check_norm(norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm: expected 'linf' or 'l2', got {norm!r}")


def random_start(x: torch.Tensor, *, norm: str, eps: float, clamp: bool = True) -> torch.Tensor:
    """A uniformly random point of the eps-ball around ``x``.

    L-inf: ``x + U(-eps, eps)`` per entry. L2: uniform in the ball's volume (a Gaussian direction
    scaled to radius ``eps * U^(1/d)``, d = entries per example). Uses the global torch RNG.

    Args:
        x: clean inputs (B, ...).
        norm: "linf" or "l2".
        eps: radius on the [0, 1] pixel scale.
        clamp: clip the result to [0, 1].
    """
    _check_norm(norm)
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        d = x[0].numel()
        direction = torch.randn_like(x)
        direction = direction / _per_example_norm(direction).clamp_min(1e-12)
        radius = eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype).pow(1.0 / d)
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    x_adv = x + delta
    return x_adv.clamp(0.0, 1.0) if clamp else x_adv


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, *, norm: str, alpha: float) -> torch.Tensor:
    """One steepest-ascent step of size ``alpha``: ``alpha * sign(grad)`` for L-inf,
    ``alpha * grad / ||grad||_2`` per example for L2 (zero gradients stay put)."""
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    # A confidently classified example can have a gradient of ~1e-21, whose squares underflow:
    # rescale by the largest entry first, so any nonzero gradient gets a full step of length alpha.
    peak = grad.flatten(1).abs().amax(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    grad = grad / torch.where(peak > 0, peak, torch.ones_like(peak))
    g_norm = _per_example_norm(grad)
    return x_adv + alpha * grad / torch.where(g_norm > 0, g_norm, torch.ones_like(g_norm))


def project(x_adv: torch.Tensor, x: torch.Tensor, *, norm: str, eps: float,
            clamp: bool = True) -> torch.Tensor:
    """Projects ``x_adv`` onto the eps-ball around ``x``, then (optionally) onto [0, 1].

    Clamping after the projection never leaves the ball: with ``x`` in [0, 1], clipping moves each
    coordinate of ``x_adv - x`` towards zero.
    """
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        delta = delta * (eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        x_adv = x + delta
    return x_adv.clamp(0.0, 1.0) if clamp else x_adv


def input_grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d loss / d x via ``torch.autograd.grad``: parameter ``.grad`` fields are never written, and
    weight gradients are not even computed. A loss that does not depend on ``x`` (a constant
    model) has a zero gradient."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def predict(model: nn.Module, x: torch.Tensor, *, precision: Precision = "fp32") -> torch.Tensor:
    """The model's predicted labels (B,), computed without gradients (mode left as it is)."""
    with torch.no_grad(), autocast(x.device, precision):
        return model(fast_layout(x)).argmax(dim=1)
