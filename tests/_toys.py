"""Tiny learnable data, tiny CNNs (one trained) and perfectly robust constant models for attack tests.

Seconds on one CPU thread; every knob is explicit so each test keeps the exact setting its
thresholds were calibrated on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["toy_data", "toy_net", "bn_cnn", "accuracy", "MaskParam", "Constant", "Detached"]


def toy_data(n: int, seed: int, classes: int = 4, hw: int = 8, *,
             proto_seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-but-learnable images in [0, 1]: a fixed random prototype per class, half prototype,
    half uniform noise. Returns ``(x (n, 1, hw, hw), y (n,))``."""
    protos = torch.rand(classes, 1, hw, hw, generator=torch.Generator().manual_seed(proto_seed))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return (0.5 * protos[y] + 0.5 * torch.rand(n, 1, hw, hw, generator=g)).clamp(0, 1), y


def toy_net(seed: int = 0, classes: int = 4, *, dropout: float | None = 0.2, lr: float = 1e-2, steps: int = 120,
            data_seed: int | None = None, proto_seed: int = 123) -> nn.Module:
    """A small CNN trained full-batch with Adam on :func:`toy_data`; returned in eval mode.

    BatchNorm (and Dropout, unless ``dropout`` is None) make a forgotten ``eval()`` visible.
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten()]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    net = nn.Sequential(*layers, nn.Linear(16 * 4 * 4, classes))
    x, y = toy_data(512, seed=seed if data_seed is None else data_seed, proto_seed=proto_seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


def bn_cnn(hidden: int | None = None, classes: int = 4) -> nn.Sequential:
    """An untrained net for (1, 8, 8) inputs: conv 1->8 (BN), conv 8->16 (BN), 2x2 max-pool, flatten
    (256 features), [fc 256->hidden, ReLU,] classifier -> ``classes`` (marked ``is_classifier``).

    The layers are built in that order, so a seeded call draws the same weights as the inline net.
    """
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        *([] if hidden is None else [nn.Linear(256, hidden), nn.ReLU()]),
        nn.Linear(256 if hidden is None else hidden, classes),
    )
    setattr(m[-1], "is_classifier", True)
    return m


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, without gradients."""
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


class MaskParam(nn.Module):
    """A fixed 0/1 weight mask as a parametrization returning ``weight * mask`` (how the prune package masks)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class Constant(nn.Module):
    """Perfectly robust: the same logits for every input (the input still enters the graph, with a
    zero gradient). ``top`` rolls the logits so class ``top`` wins (None: the last class)."""

    def __init__(self, classes: int = 4, top: int | None = None) -> None:
        super().__init__()
        logits = torch.arange(classes, dtype=torch.float32)
        self.logits = nn.Parameter(logits if top is None else logits.roll(top - classes + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1) + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)


class Detached(Constant):
    """Constant logits with no path to the input at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.detach().expand(len(x), -1).clone()
