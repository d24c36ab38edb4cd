"""The input normalization layer that opens every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for inputs in [0, 1].

    The statistics are buffers, so they move with ``.to(device)`` and are saved in the state dict.
    Keeping normalization inside the model means attacks and budgets work on the [0, 1] pixel
    scale. With ``mean`` and ``std`` both None the layer is the identity (no buffers).

    Args:
        mean: one value per channel, or a single value broadcast over all channels.
        std: same length as ``mean``; every entry > 0.
        num_channels: if given, checks that ``mean``/``std`` have 1 or ``num_channels`` entries.

    Raises:
        ConfigError: only one of mean/std given, lengths that do not fit, or a std <= 0.
    """

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(
        self,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        *,
        num_channels: int | None = None,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ConfigError(f"Normalize: give both mean and std or neither, got mean={mean}, std={std}")
        if mean is None or std is None:
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
            return
        m = torch.as_tensor(mean, dtype=torch.float32).flatten()
        s = torch.as_tensor(std, dtype=torch.float32).flatten()
        if len(m) != len(s) or len(m) == 0:
            raise ConfigError(f"Normalize: mean and std need the same non-zero length, "
                              f"got {len(m)} and {len(s)}")
        if num_channels is not None and len(m) not in (1, num_channels):
            raise ConfigError(f"Normalize: expected 1 or {num_channels} mean/std values for "
                              f"{num_channels} input channels, got {len(m)}")
        if bool((s <= 0).any()):
            raise ConfigError(f"Normalize: expected every std > 0, got {s.tolist()}")
        self.register_buffer("mean", m.view(1, -1, 1, 1))  # (1, C, 1, 1) broadcasts over (B, C, H, W)
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if self.mean is None or self.std is None:
            return "identity"
        return f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, " \
               f"std={[round(v, 4) for v in self.std.flatten().tolist()]}"
