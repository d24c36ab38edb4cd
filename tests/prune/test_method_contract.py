"""The contract every pruning method meets, parametrized over ``list_methods()``: a method registered
tomorrow is tested the day it lands, for every granularity and allocation it declares.

Checks: forward works and the output shape is kept; the achieved sparsity is exact (within 0.5% of
prunable weights, or one unit); pruned weights stay exactly zero through SGD with momentum and weight
decay; MACs fall as sparsity rises; a checkpoint round-trips into a freshly built model; bad input
raises ConfigError naming what was wrong and what was expected.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from searchprune._torch import count_params
from searchprune.config import PruneConfig, ThreatModel, TrainConfig
from searchprune.data import ArrayDataset, BatchLoader
from searchprune.errors import ConfigError
from searchprune.models import macs
from searchprune.prune import (
    GRANULARITIES,
    Mask,
    PruningMethod,
    fold_masks_,
    get_method,
    layer_sparsity,
    list_allocations,
    list_methods,
    load_pruned_state_dict_,
    prunable_layers,
    prune_,
    register_method,
    weight_param,
)
from searchprune.prune.method import METHODS

INPUT = (3, 8, 8)
THREAT = ThreatModel(eps=0.03, alpha=0.01, steps=2)
# cheap settings for whichever of these knobs a method has (others keep their defaults)
FAST = {"n_batches": 1, "n_samples": 8, "max_batches": 1, "prune_epochs": 1, "epochs": 1, "steps": 1}


class TinyNet(nn.Module):
    """conv 3->16, conv 16->32 (BN, ReLU), pool to 2x2, fc 128->32, classifier 32->10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.fc = nn.Linear(128, 32)
        self.classifier = nn.Linear(32, 10)
        self.classifier.is_classifier = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.fc(self.features(x).flatten(1))))


def _loader(n: int = 2, batch: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, *INPUT, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def _train_loader():
    """A real BatchLoader for methods that train (HYDRA, in-train pruning)."""
    g = torch.Generator().manual_seed(2)
    ds = ArrayDataset(torch.randint(0, 256, (16, *INPUT), generator=g, dtype=torch.uint8),
                      torch.randint(0, 10, (16,), generator=g))
    return BatchLoader(ds, 8)


def _needs_training(name: str) -> bool:
    return "learned" in get_method(name).allocations


def _options(name: str) -> dict:
    return {k: v for k, v in FAST.items() if k in get_method(name).default_options}


def _cfg(name: str, granularity: str, allocation: str, sparsity: float = 0.5, **kw) -> PruneConfig:
    if allocation == "per_layer":
        names = list(_method_layers(name, TinyNet()))
        return PruneConfig(method=name, granularity=granularity, allocation=allocation, sparsity=None,
                           layer_sparsity={names[0]: 0.25, names[1]: sparsity}, options=_options(name), **kw)
    return PruneConfig(method=name, granularity=granularity, allocation=allocation, sparsity=sparsity,
                       options=_options(name), **kw)


def _method_layers(name: str, model: nn.Module, **kw) -> dict[str, nn.Module]:
    return get_method(name)().select_layers(prunable_layers(model, **kw))


def _prune(model: nn.Module, cfg: PruneConfig):
    loader = _train_loader() if _needs_training(cfg.method) else _loader()
    return prune_(model, cfg, input_shape=INPUT, loader=loader, threat=THREAT,
                  train_cfg=TrainConfig(epochs=1, max_batches=1, batch_size=8))


FULL_CASES = [(m, g, a) for m in list_methods() for g in get_method(m).granularities
              for a in get_method(m).allocations]
# one allocation per (method, granularity) for the slower checks: the first score allocation
PAIR_CASES = [(m, g, get_method(m).allocations[0])
              for m in list_methods() for g in get_method(m).granularities]


def _ids(case: tuple[str, ...]) -> str:
    return "-".join(case)


# ---------------------------------------------------------------------------------------------
# Shape kept, sparsity exact
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FULL_CASES, ids=_ids)
def test_forward_shape_and_exact_sparsity(case: tuple[str, str, str]) -> None:
    name, gran, alloc = case
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.rand(4, *INPUT)
    dense_out = model(x).shape
    layers_before = {n: (m.weight.numel(), m.weight.shape[0]) for n, m in _method_layers(name, model).items()}
    cfg = _cfg(name, gran, alloc)
    report = _prune(model, cfg)

    assert model(x).shape == dense_out
    assert report.structural == (gran == "channel")
    assert report.method == name and set(report.layer_sparsity) == set(layers_before)
    if gran == "channel":
        layers = _method_layers(name, model)
        for n, kept in report.kept_channels.items():
            assert layers[n].weight.shape[0] == len(kept) >= 1
            assert kept == sorted(set(kept)) and max(kept) < layers_before[n][1]
        total = sum(c for n, (_, c) in layers_before.items() if n in report.kept_channels)
        tol = 1.0 / total  # one channel unit
    else:
        measured = layer_sparsity(model, _method_layers(name, model))
        zeros = sum(measured[n] * layers_before[n][0] for n in measured)
        assert report.sparsity == pytest.approx(zeros / sum(c for c, _ in layers_before.values()), abs=1e-9)
        tol = 0.005
    if get_method(name).target_unit == "macs":  # a cost target (in-train pruning): MACs removed
        dense_macs = macs.count_dense_macs(TinyNet(), INPUT)
        removed = 1 - macs.count_macs(model, INPUT) / dense_macs
        assert 0.5 - 1e-9 <= removed <= 0.5 + 0.05, removed  # never short of the target, about one unit over
    elif alloc == "per_layer":
        named = dict(cfg.layer_sparsity)
        for n, s in report.layer_sparsity.items():
            numel, ch = layers_before[n]
            unit = 1.0 / ch if gran == "channel" else (9.0 / numel if gran == "kernel" else 1.0 / numel)
            assert s == pytest.approx(named.get(n, 0.0), abs=unit + 1e-9), n
    else:
        assert report.sparsity == pytest.approx(0.5, abs=tol + 1e-9)
    if alloc == "uniform":
        for n, s in report.layer_sparsity.items():
            numel, ch = layers_before[n]
            unit = 1.0 / ch if gran == "channel" else (9.0 / numel if gran == "kernel" else 1.0 / numel)
            assert s == pytest.approx(0.5, abs=unit + 1e-9), n


# ---------------------------------------------------------------------------------------------
# Masked weights stay zero through training
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in PAIR_CASES if c[1] != "channel"], ids=_ids)
def test_pruned_weights_stay_zero_under_sgd(case: tuple[str, str, str]) -> None:
    name, gran, alloc = case
    torch.manual_seed(0)
    model = TinyNet()
    _prune(model, _cfg(name, gran, alloc))
    layers = _method_layers(name, model)
    zero = {n: (m.weight == 0).clone() for n, m in layers.items()}
    assert all(parametrize.is_parametrized(m, "weight") for m in layers.values())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for x, y in _loader(n=4, seed=5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for n, m in layers.items():
            assert torch.all(weight_param(m).grad[zero[n]] == 0), f"{n}: pruned entries got gradient"
        opt.step()
    for n, m in layers.items():
        assert torch.all(m.weight[zero[n]] == 0), f"{n}: a pruned weight came back"
        assert (m.weight != 0).any()


# ---------------------------------------------------------------------------------------------
# MACs fall monotonically as sparsity rises
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PAIR_CASES, ids=_ids)
def test_macs_fall_as_sparsity_rises(case: tuple[str, str, str]) -> None:
    name, gran, alloc = case
    torch.manual_seed(0)
    base = TinyNet()
    counts = [macs.count_macs(base, INPUT)]
    for s in (0.3, 0.6, 0.9):
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        _prune(model, _cfg(name, gran, alloc, sparsity=s))
        counts.append(macs.count_macs(model, INPUT))
    assert all(a > b for a, b in zip(counts, counts[1:])), counts


# ---------------------------------------------------------------------------------------------
# Checkpoint round trip into a freshly built model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PAIR_CASES, ids=_ids)
def test_checkpoint_round_trip(case: tuple[str, str, str]) -> None:
    name, gran, alloc = case
    torch.manual_seed(0)
    model = TinyNet()
    _prune(model, _cfg(name, gran, alloc))
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(123)
    fresh = load_pruned_state_dict_(TinyNet(), state)
    model.eval()
    fresh.eval()
    x = torch.rand(4, *INPUT)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert layer_sparsity(fresh) == layer_sparsity(model)


# ---------------------------------------------------------------------------------------------
# Errors name the bad value and what was expected
# ---------------------------------------------------------------------------------------------


def test_unknown_method_lists_methods() -> None:
    with pytest.raises(ConfigError) as e:
        prune_(TinyNet(), PruneConfig(method="nope"), input_shape=INPUT)
    assert "nope" in str(e.value)
    for name in list_methods():
        assert name in str(e.value)


@pytest.mark.parametrize("name", list_methods())
def test_unsupported_granularity_and_allocation(name: str) -> None:
    cls = get_method(name)
    for gran in set(GRANULARITIES) - set(cls.granularities):
        with pytest.raises(ConfigError) as e:
            prune_(TinyNet(), PruneConfig(method=name, granularity=gran, allocation=cls.allocations[0]),
                   input_shape=INPUT, loader=_loader(), threat=THREAT)
        msg = str(e.value)
        assert name in msg and repr(gran) in msg and all(g in msg for g in cls.granularities)
    for alloc in set(list_allocations()) - set(cls.allocations):
        per_layer = {"layer_sparsity": {"fc": 0.5}, "sparsity": None} if alloc == "per_layer" else {}
        cfg = PruneConfig(method=name, granularity=cls.granularities[0], allocation=alloc, **per_layer)
        with pytest.raises(ConfigError) as e:
            prune_(TinyNet(), cfg, input_shape=INPUT, loader=_loader(), threat=THREAT)
        msg = str(e.value)
        assert name in msg and repr(alloc) in msg and all(a in msg for a in cls.allocations)


@pytest.mark.parametrize("name", [m for m in list_methods() if get_method(m).needs_data])
def test_data_driven_methods_need_a_loader(name: str) -> None:
    cls = get_method(name)
    cfg = PruneConfig(method=name, granularity=cls.granularities[0], allocation=cls.allocations[0])
    with pytest.raises(ConfigError, match="loader"):
        prune_(TinyNet(), cfg, input_shape=INPUT, threat=THREAT)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="prune.options.bogus"):
        prune_(TinyNet(), PruneConfig(method="magnitude", options={"bogus": 1}), input_shape=INPUT)


def test_per_layer_unknown_layer_lists_valid_names() -> None:
    cfg = PruneConfig(method="magnitude", allocation="per_layer", sparsity=None,
                      layer_sparsity={"classifier": 0.5})
    with pytest.raises(ConfigError) as e:
        prune_(TinyNet(), cfg, input_shape=INPUT)
    msg = str(e.value)
    assert "classifier" in msg and "features.0" in msg and "features.3" in msg and "fc" in msg


def test_compression_is_shrinkbench_whole_model_ratio() -> None:
    model = TinyNet()
    total = count_params(model, nonzero=False)
    report = prune_(model, PruneConfig(method="magnitude", sparsity=None, compression=2.0), input_shape=INPUT)
    removed = sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())
    assert total / (total - removed) == pytest.approx(2.0, rel=0.002)
    prunable = sum(m.weight.numel() for m in prunable_layers(TinyNet()).values())
    keep = (total / 2.0 - (total - prunable)) / prunable
    assert report.target_sparsity == pytest.approx(1 - keep)


def test_compression_out_of_range_and_channel() -> None:
    with pytest.raises(ConfigError, match="prune.compression"):
        prune_(TinyNet(), PruneConfig(method="magnitude", sparsity=None, compression=1000.0),
               input_shape=INPUT)
    with pytest.raises(ConfigError, match="prune.compression"):  # beyond one channel per group
        prune_(TinyNet(), PruneConfig(method="magnitude", granularity="channel", sparsity=None,
                                      compression=1000.0), input_shape=INPUT)
    with pytest.raises(ConfigError, match="prune.compression"):
        prune_(TinyNet(), PruneConfig(method="magnitude", granularity="channel", allocation="mrs",
                                      sparsity=None, compression=2.0), input_shape=INPUT)


# ---------------------------------------------------------------------------------------------
# Layer selection, masks, folding, re-pruning, registration
# ---------------------------------------------------------------------------------------------


def test_prunable_layers_selection() -> None:
    model = TinyNet()
    assert list(prunable_layers(model)) == ["features.0", "features.3", "fc"]
    assert list(prunable_layers(model, include_first=False)) == ["features.3", "fc"]
    assert list(prunable_layers(model, include_classifier=True)) == [
        "features.0", "features.3", "fc", "classifier"]
    report = prune_(model, PruneConfig(method="magnitude", sparsity=0.9), input_shape=INPUT)
    assert "classifier" not in report.layer_sparsity
    assert not parametrize.is_parametrized(model.classifier)
    assert not any(parametrize.is_parametrized(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_fold_masks_gives_plain_dense_weights() -> None:
    model = TinyNet().eval()
    prune_(model, PruneConfig(method="magnitude", sparsity=0.7), input_shape=INPUT)
    x = torch.rand(2, *INPUT)
    before = model(x)
    zeros = layer_sparsity(model)
    fold_masks_(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(type(m.weight) is nn.Parameter for m in prunable_layers(model).values())
    assert layer_sparsity(model) == zeros
    torch.testing.assert_close(model(x), before)
    assert not any("mask" in k or "parametrizations" in k for k in model.state_dict())


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_fold_masks_keeps_other_parametrizations() -> None:
    model = TinyNet().eval()
    prune_(model, PruneConfig(method="magnitude", sparsity=0.5), input_shape=INPUT)
    parametrize.register_parametrization(model.fc, "weight", _Double())
    x = torch.rand(2, *INPUT)
    before = model(x)
    fold_masks_(model)
    plist = list(model.fc.parametrizations.weight)
    assert len(plist) == 1 and isinstance(plist[0], _Double)
    torch.testing.assert_close(model(x), before)


def test_repruning_never_revives_weights() -> None:
    model = TinyNet()
    prune_(model, PruneConfig(method="magnitude", sparsity=0.6), input_shape=INPUT)
    zero = {n: (m.weight == 0).clone() for n, m in prunable_layers(model).items()}
    with torch.no_grad():  # make the pruned weights' originals large: a naive re-prune would revive them
        for m in prunable_layers(model).values():
            weight_param(m).add_(10.0)
    report = prune_(model, PruneConfig(method="magnitude", sparsity=0.3), input_shape=INPUT)
    for n, m in prunable_layers(model).items():
        assert torch.all(m.weight[zero[n]] == 0)
    assert report.sparsity == pytest.approx(0.6, abs=0.005)
    assert sum(isinstance(p, Mask) for p in model.fc.parametrizations.weight) == 1


def test_new_methods_are_picked_up() -> None:
    @register_method("_test_negmag")
    class NegMag(PruningMethod):
        """Keeps the smallest weights (a deliberately odd criterion)."""

        def scores(self, ctx):
            return {n: -m.weight.detach().abs() for n, m in ctx.layers.items()}

    try:
        assert "_test_negmag" in list_methods()
        model = TinyNet()
        report = prune_(model, PruneConfig(method="_test_negmag", sparsity=0.5), input_shape=INPUT)
        assert report.sparsity == pytest.approx(0.5, abs=0.005)
    finally:
        METHODS._items.pop("_test_negmag", None)
