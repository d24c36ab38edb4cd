"""Pruning units: per-weight tensors ``(C_out, C_in, *k)`` aggregated per weight, kernel
``(C_out, C_in)`` or output channel ``(C_out,)``, and per-unit decisions broadcast back."""

from __future__ import annotations

import torch

__all__ = ["reduce_to_units", "expand_units"]


def reduce_to_units(score: torch.Tensor, granularity: str, reduction: str = "sum") -> torch.Tensor:
    """Aggregates a per-weight tensor ``(C_out, C_in, *k)`` into pruning units.

    Returns:
        ``score`` itself for "weight"; ``(C_out, C_in)`` (reduced over the kernel's spatial dims)
        for "kernel"; ``(C_out,)`` for "channel".
    """
    if granularity == "weight":
        return score
    if granularity == "kernel":
        flat = score.reshape(score.shape[0], score.shape[1] if score.dim() > 1 else 1, -1)
    elif granularity == "channel":
        flat = score.reshape(score.shape[0], 1, -1)
    else:
        raise ValueError(f"unknown granularity {granularity!r}")
    if reduction == "sum":
        red = flat.sum(-1)
    elif reduction == "l2":
        red = flat.pow(2).sum(-1).sqrt()
    elif reduction == "mean":
        red = flat.mean(-1)
    else:
        raise ValueError(f"unknown reduction {reduction!r}")
    return red if granularity == "kernel" else red[:, 0]


def expand_units(
    keep: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], granularity: str
) -> torch.Tensor:
    """Broadcasts a per-unit keep tensor (see :func:`reduce_to_units`) back to the weight's shape."""
    shape = tuple(weight_shape)
    if granularity == "weight":
        return keep.reshape(shape)
    if granularity == "kernel":
        view = keep.reshape(shape[:2] + (1,) * (len(shape) - 2))
    else:
        view = keep.reshape(shape[:1] + (1,) * (len(shape) - 1))
    return view.expand(shape).clone()
