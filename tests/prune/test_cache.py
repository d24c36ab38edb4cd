"""StatCache: one cache for per-base-model statistics, keyed by model state, data and options; hits counted."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from searchprune.config import PruneConfig, ThreatModel
from searchprune.data import ArrayDataset, BatchLoader
from searchprune.prune import prune_
from searchprune.prune.cache import StatCache

THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=2, random_start=True)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))


def _data(seed: int = 0, n: int = 64) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(images=torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
                        labels=torch.randint(0, 4, (n,), generator=g))


def test_compute_counts_hits_and_keys_on_everything(tmp_path) -> None:
    cache = StatCache(tmp_path)
    calls = []

    def fn() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"s": torch.rand(3)}  # seeded from the key: the same value for the same key

    a = cache.compute("scores", {"model": "m1", "data": "d1", "options": {"n": 1}}, fn)
    b = cache.compute("scores", {"options": {"n": 1}, "data": "d1", "model": "m1"}, fn)  # key order is irrelevant
    assert torch.equal(a["s"], b["s"]) and len(calls) == 1
    for other in ({"model": "m2", "data": "d1", "options": {"n": 1}},
                  {"model": "m1", "data": "d2", "options": {"n": 1}},
                  {"model": "m1", "data": "d1", "options": {"n": 2}}):
        cache.compute("scores", other, fn)
    assert (cache.hits["scores"], cache.misses["scores"]) == (1, 4) and len(calls) == 4
    b["s"].zero_()  # callers get copies
    assert not torch.equal(cache.compute("scores", {"model": "m1", "data": "d1", "options": {"n": 1}}, fn)["s"],
                           b["s"])
    # a fresh cache on the same directory (another worker) reads the file
    again = StatCache(tmp_path)
    assert torch.equal(again.compute("scores", {"model": "m1", "data": "d1", "options": {"n": 1}}, fn)["s"], a["s"])
    assert again.hits["scores"] == 1 and len(calls) == 4
    assert len(list(tmp_path.glob("scores-*.pt"))) == 4


def test_seeded_compute_leaves_the_callers_random_stream_alone() -> None:
    cache = StatCache()
    torch.manual_seed(5)
    cache.compute("x", {"k": 1}, lambda: torch.rand(10))  # miss: draws numbers inside fork_rng
    after_miss = torch.rand(1)
    torch.manual_seed(5)
    cache.compute("x", {"k": 1}, lambda: torch.rand(10))  # hit
    assert torch.equal(torch.rand(1), after_miss)


def test_data_digest_sees_the_data_and_the_batching() -> None:
    cache = StatCache()
    ds = _data(0)
    base = cache.data_digest(BatchLoader(ds, 16, shuffle=True, seed=0))
    assert cache.data_digest(BatchLoader(ds, 16, shuffle=True, seed=0)) == base
    assert cache.data_digest(BatchLoader(_data(0), 16, shuffle=True, seed=0)) == base  # equal tensors
    for other in (BatchLoader(ds, 16, shuffle=True, seed=1), BatchLoader(ds, 32, shuffle=True, seed=0),
                  BatchLoader(ds, 16, shuffle=True, seed=0, max_images=32), BatchLoader(_data(1), 16, shuffle=True)):
        assert cache.data_digest(other) != base
    batches = [(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))]
    assert cache.data_digest(batches) != cache.data_digest([(batches[0][0] + 1e-3, batches[0][1])])


@pytest.mark.parametrize("method,options", [("gap", {"n_batches": 2}), ("hessian", {"n_samples": 8}),
                                            ("taylor", {"n_batches": 1}), ("gradient", {"adversarial": True})])
def test_scored_methods_compute_their_scores_once(tmp_path, method, options) -> None:
    cache = StatCache(tmp_path)
    loader = BatchLoader(_data(), 16, shuffle=True, seed=0)
    base = _net()
    results = []
    for sparsity, gran in ((0.5, "weight"), (0.7, "weight"), (0.5, "weight")):
        model = copy.deepcopy(base)
        cfg = PruneConfig(method=method, granularity=gran, sparsity=sparsity, options=options)
        prune_(model, cfg, input_shape=(1, 8, 8), loader=loader, threat=THREAT, cache=cache)
        results.append(model)
    assert (cache.misses["scores"], cache.hits["scores"]) == (1, 2)
    # a hit reproduces the miss exactly, BatchNorm statistics (GAP updates them while scoring) included
    for k, v in results[0].state_dict().items():
        assert torch.equal(v, results[2].state_dict()[k]), k
    # other data, another base model, other options: new statistics
    prune_(copy.deepcopy(base), PruneConfig(method=method, sparsity=0.5, options=options), input_shape=(1, 8, 8),
           loader=BatchLoader(_data(1), 16, shuffle=True, seed=0), threat=THREAT, cache=cache)
    prune_(_net(1), PruneConfig(method=method, sparsity=0.5, options=options), input_shape=(1, 8, 8),
           loader=loader, threat=THREAT, cache=cache)
    assert cache.misses["scores"] == 3
    # a fresh process on the same directory reuses the file
    fresh = StatCache(tmp_path)
    prune_(copy.deepcopy(base), PruneConfig(method=method, sparsity=0.6, options=options), input_shape=(1, 8, 8),
           loader=loader, threat=THREAT, cache=fresh)
    assert (fresh.hits["scores"], fresh.misses["scores"]) == (1, 0)


def test_cheap_criteria_are_not_cached() -> None:
    cache = StatCache()
    prune_(_net(), PruneConfig(method="magnitude", sparsity=0.5), input_shape=(1, 8, 8), cache=cache)
    assert not cache.hits and not cache.misses


def test_channel_pruning_uses_the_same_cache() -> None:
    cache = StatCache()
    loader = BatchLoader(_data(), 16, shuffle=True, seed=0)
    for sparsity in (0.25, 0.5):
        prune_(_net(), PruneConfig(method="taylor", granularity="channel", sparsity=sparsity), input_shape=(1, 8, 8),
               loader=loader, threat=THREAT, cache=cache)
    assert (cache.misses["scores"], cache.hits["scores"]) == (1, 1)


def test_memory_is_bounded_per_kind() -> None:
    cache = StatCache(memory_items=2)
    cache.compute("scores", {"k": 0}, lambda: {"v": 0})
    for i in range(5):  # many prune steps do not push the scores out
        cache.compute("prune_step", {"k": i}, lambda: {"v": 1}, disk=False)
    cache.compute("scores", {"k": 0}, lambda: {"v": 0})
    assert cache.hits["scores"] == 1
    cache.compute("prune_step", {"k": 0}, lambda: {"v": 1}, disk=False)  # the oldest step was dropped
    assert cache.hits["prune_step"] == 0 and cache.misses["prune_step"] == 6
