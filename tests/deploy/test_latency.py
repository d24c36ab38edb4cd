"""latency_ms: cached by shape signature (the second call times nothing), and it ranks real savings."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from searchprune.config import PruneConfig, QuantConfig
from searchprune.deploy import LatencyCache, latency_ms, shape_signature
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.prune import prune_
from searchprune.quantize import quantize_

SHAPE = (1, 28, 28)


def _cnn8() -> nn.Module:
    return create_model("cnn8", num_classes=10, in_channels=1, image_size=SHAPE[1:]).eval()


def _channel_pruned(model: nn.Module, sparsity: float) -> nn.Module:
    pruned = copy.deepcopy(model)
    prune_(pruned, PruneConfig(method="magnitude", granularity="channel", allocation="uniform", sparsity=sparsity),
           input_shape=SHAPE)
    return pruned.eval()


def test_second_call_measures_nothing(timed: list[int]) -> None:
    cache = LatencyCache()
    model, x = _cnn8(), torch.rand(1, *SHAPE)
    first = latency_ms(model, x, batch_size=8, repeats=2, warmup=0, channels_last=False, cache=cache)
    n = len(timed)
    assert n == 1 and first > 0 and cache.misses == 1
    assert latency_ms(model, x, batch_size=8, repeats=2, warmup=0, channels_last=False, cache=cache) == first
    assert len(timed) == n and cache.hits == 1
    # unstructured zeros keep every shape: a dense kernel takes the same time, so the same entry
    masked = copy.deepcopy(model)
    prune_(masked, PruneConfig(method="magnitude", sparsity=0.9), input_shape=SHAPE)
    assert latency_ms(masked, x, batch_size=8, repeats=2, warmup=0, channels_last=False, cache=cache) == first
    assert len(timed) == n
    # another batch size, bit width or channel count is another measurement
    latency_ms(model, x, batch_size=4, repeats=2, warmup=0, channels_last=False, cache=cache)
    latency_ms(model, x, batch_size=8, repeats=2, warmup=0, channels_last=False, cache=cache, quant_bits=4)
    latency_ms(_channel_pruned(model, 0.5), x, batch_size=8, repeats=2, warmup=0, channels_last=False, cache=cache)
    assert len(timed) == n + 3


def test_file_cache_is_shared_between_instances(tmp_path: Path, timed: list[int]) -> None:
    model, x = _cnn8(), torch.rand(1, *SHAPE)
    first = latency_ms(model, x, batch_size=4, repeats=2, warmup=0, cache=LatencyCache(tmp_path))
    n = len(timed)
    assert n == 3  # the layout decision (NCHW, NHWC) and the measurement
    assert len(list(tmp_path.glob("*.json"))) == 2
    fresh = LatencyCache(tmp_path)  # e.g. another worker of the study
    assert latency_ms(model, x, batch_size=4, repeats=2, warmup=0, cache=fresh) == first
    assert len(timed) == n and fresh.hits == 1


def test_signature_holds_shapes_and_bits() -> None:
    model = _cnn8()
    sig = shape_signature(model, torch.rand(1, *SHAPE))
    assert sig[0] == ["Conv2d", 1, 32, [3, 3], [1, 1], "(1, 1)", [1, 1], 1, True, [28, 28], 32, None]
    assert sig[-1] == ["Linear", 128, 10, True, [], 32, None]
    quantize_(model, QuantConfig(mode="ptq", weight_bits=4, act_bits=None))
    assert shape_signature(model, torch.rand(1, *SHAPE))[1][-2:] == [4, None]
    pruned = _channel_pruned(_cnn8(), 0.5)
    assert shape_signature(pruned, torch.rand(1, *SHAPE))[0][2] == 16


def test_channel_pruned_cnn8_ranks_below_dense() -> None:
    """A rank check at batch 128, not a timed threshold: 70% of channels removed is ~10x fewer MACs."""
    dense = _cnn8()
    cache = LatencyCache()
    x = torch.rand(1, *SHAPE)
    pruned_ms = latency_ms(_channel_pruned(dense, 0.7), x, batch_size=128, repeats=7, cache=cache)
    dense_ms = latency_ms(dense, x, batch_size=128, repeats=7, cache=cache)
    assert pruned_ms < dense_ms


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        latency_ms(_cnn8(), torch.rand(1, *SHAPE), batch_size=0)
    with pytest.raises(ConfigError, match="repeats"):
        latency_ms(_cnn8(), torch.rand(1, *SHAPE), repeats=0)
