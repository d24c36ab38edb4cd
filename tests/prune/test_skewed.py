"""The skewed allocation: three searchable numbers, exact global sparsity, the skews do what they say."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from searchprune.config import PruneConfig
from searchprune.errors import ConfigError
from searchprune.prune import prune_
from searchprune.prune.allocation.skewed import skewed_ratios

UNITS = {"a": 200, "b": 3000, "c": 12000, "d": 800, "e": 50}
ONE = dict.fromkeys(UNITS, 1)


def _removed(r: dict[str, float], units=UNITS, size=ONE) -> int:
    return sum(round(r[n] * units[n]) * size[n] for n in units)


@pytest.mark.parametrize("sparsity,depth,size",
                         list(itertools.product((0.3, 0.7, 0.95), (-1, -0.4, 0, 1), (-1, 0, 0.5))))
def test_global_sparsity_is_exact(sparsity: float, depth: float, size: float) -> None:
    r = skewed_ratios(UNITS, ONE, sparsity, depth_skew=depth, size_skew=size)
    assert _removed(r) == round(sparsity * sum(UNITS.values()))
    assert all(0 <= v <= 0.98 for v in r.values())


def test_skews_shape_the_schedule() -> None:
    flat = skewed_ratios(UNITS, ONE, 0.5)
    assert max(flat.values()) - min(flat.values()) < 1e-3  # no skew: uniform
    deep = skewed_ratios(UNITS, ONE, 0.5, depth_skew=1.0)
    order = list(UNITS)
    assert all(deep[x] < deep[y] for x, y in zip(order, order[1:]))  # later layers pruned more
    shallow = skewed_ratios(UNITS, ONE, 0.5, depth_skew=-1.0)
    assert all(shallow[x] > shallow[y] for x, y in zip(order, order[1:]))
    big = skewed_ratios(UNITS, ONE, 0.5, size_skew=1.0)
    by_size = sorted(UNITS, key=UNITS.get)
    assert all(big[x] < big[y] for x, y in zip(by_size, by_size[1:]))  # larger layers pruned more


def test_cap_and_kernels() -> None:
    r = skewed_ratios(UNITS, ONE, 0.9, size_skew=1.0, max_ratio=0.92)
    assert max(r.values()) <= 0.92 and _removed(r) == round(0.9 * sum(UNITS.values()))
    size = {"a": 9, "b": 9, "c": 1, "d": 25, "e": 9}
    r = skewed_ratios(UNITS, size, 0.6, depth_skew=0.5)
    total = sum(UNITS[n] * size[n] for n in UNITS)
    assert abs(_removed(r, size=size) - 0.6 * total) <= max(size.values())
    with pytest.raises(ConfigError, match="max_ratio=0.5"):
        skewed_ratios(UNITS, ONE, 0.6, max_ratio=0.5)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 4))


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_through_prune(granularity: str) -> None:
    cfg = PruneConfig(method="magnitude", granularity=granularity, allocation="skewed", sparsity=0.5,
                      options={"depth_skew": 0.8, "size_skew": -0.3})
    report = prune_(_net(), cfg, input_shape=(1, 8, 8))
    if granularity == "weight":
        assert report.sparsity == pytest.approx(0.5, abs=1e-9)  # exact in weights
        ratios = list(report.layer_sparsity.values())
        assert ratios[0] < ratios[-1]
    else:
        assert report.sparsity == pytest.approx(0.5, abs=0.05)
    for bad, match in [({"depth_skew": 2.0}, "depth_skew"), ({"max_ratio": 1.0}, "max_ratio")]:
        with pytest.raises(ConfigError, match=match):
            prune_(_net(), PruneConfig(method="magnitude", allocation="skewed", sparsity=0.5, options=bad),
                   input_shape=(1, 8, 8))
