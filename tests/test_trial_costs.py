"""Issue 9's cost axes at the trial level: quantization never changes ``macs``, ``dense_macs`` counts only
removed channels, every trial stores every cost kind, and ``latency_ms`` is cached and ranks real savings."""

from __future__ import annotations

import pytest
import torch
from _synthetic import synthetic_meta

from searchprune.config import (
    COST_KINDS,
    DataConfig,
    EvalConfig,
    PruneConfig,
    QuantConfig,
    StudyConfig,
    ThreatModel,
    TrialParams,
    build,
)
from searchprune.data import make_splits
from searchprune.deploy import _measure
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.models.macs import count_dense_macs, count_macs
from searchprune.prune import prune_
from searchprune.quantize import count_bitops, pruned_macs, quantize_
from searchprune.trial import TrialContext, run_trial

THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=2, random_start=False)
META = synthetic_meta("cnn8")
SHAPE = (1, 28, 28)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits():
    return make_splits(DataConfig(dataset="synthetic", train_size=256, val_size=64, test_size=32, seed=0))


def _ctx(splits, **eval_kw) -> TrialContext:
    torch.manual_seed(0)
    model = create_model("cnn8", in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.25,)).eval()
    ev = EvalConfig(n_eval=16, stagewise=False, transfer=False, checks=False, int8_attack=False,
                    **{"latency": False, **eval_kw})
    return TrialContext(base_model=model, base_meta=META, splits=splits, threat=THREAT, eval=ev, eval_batch_size=16)


def _params(prune: PruneConfig, quant: QuantConfig = QuantConfig()) -> TrialParams:
    return TrialParams(prune=prune, finetune=None, quant=quant, seed=0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantization_never_changes_macs(splits, bits: int) -> None:
    ctx = _ctx(splits)
    dense = count_dense_macs(ctx.base_model, SHAPE)
    r = run_trial(_params(PruneConfig(sparsity=0.0), QuantConfig(mode="ptq", weight_bits=bits, act_bits=8)), ctx)
    assert r.macs == dense == r.base_macs == r.dense_macs
    assert r.metrics()["mac_ratio"] == 1.0
    # the bit widths enter bitops once, with the unquantized MACs
    assert r.bitops == dense * bits * 8
    if bits == 2:  # what issue 9 measured: the rounded weights' zeros would count as pruned
        assert count_macs(r.model, SHAPE) < 0.5 * dense


def test_pruned_macs_keep_the_masks_and_ignore_rounding() -> None:
    model = create_model("cnn8", in_channels=1, image_size=(28, 28))
    prune_(model, PruneConfig(method="magnitude", sparsity=0.6), input_shape=SHAPE)
    before = pruned_macs(model, SHAPE)
    assert before == count_macs(model, SHAPE) < 0.7 * count_dense_macs(model, SHAPE)
    quantize_(model, QuantConfig(mode="ptq", weight_bits=2, act_bits=None))
    assert pruned_macs(model, SHAPE) == before
    assert count_bitops(model, SHAPE) == before * 2 * 32


def test_unstructured_90_keeps_dense_macs(splits) -> None:
    ctx = _ctx(splits)
    r = run_trial(_params(PruneConfig(method="magnitude", sparsity=0.9)), ctx)
    assert r.dense_macs == r.base_macs
    assert r.macs < 0.5 * r.base_macs  # the papers' effective MACs do drop


def test_channel_pruned_dense_macs_count_the_new_shapes(splits) -> None:
    ctx = _ctx(splits)
    r = run_trial(_params(PruneConfig(method="magnitude", granularity="channel", allocation="uniform",
                                      sparsity=0.5)), ctx)
    assert r.structural
    assert r.dense_macs == count_dense_macs(r.model, SHAPE) < 0.5 * r.base_macs
    assert r.macs == r.dense_macs  # no zeros left inside the smaller weights


def test_every_trial_stores_every_cost_kind(splits) -> None:
    ctx = _ctx(splits, latency=True, latency_batch_size=4, latency_repeats=1)
    r = run_trial(_params(PruneConfig(sparsity=0.5), QuantConfig(mode="ptq", weight_bits=4, act_bits=8)), ctx)
    m = r.metrics()
    for kind in COST_KINDS:
        assert m[kind] is not None and m[kind] > 0
        assert r.cost(kind) == float(m[kind])
        assert m[f"base_{kind}"] > 0
    assert m["size_bytes"] < m["base_size_bytes"]  # 4-bit weights, half of them zero
    with pytest.raises(ConfigError, match="flops"):
        r.cost("flops")


def test_latency_cached_and_ranks_channel_pruned_below_dense(splits, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[int] = []
    real = _measure.time_runs

    def counting(fn, x, *, repeats, warmup):  # type: ignore[no-untyped-def]
        timed.append(repeats)
        return real(fn, x, repeats=repeats, warmup=warmup)

    monkeypatch.setattr(_measure, "time_runs", counting)
    ctx = _ctx(splits, latency=True, latency_batch_size=128, latency_repeats=7)
    dense_ms = ctx.base_costs().latency_ms
    n = len(timed)
    assert dense_ms is not None and n >= 1
    # unstructured zeros: the dense kernel's shapes, so the cached measurement (nothing timed)
    r = run_trial(_params(PruneConfig(method="magnitude", sparsity=0.9)), ctx)
    assert r.latency_ms == dense_ms and len(timed) == n
    pruned = run_trial(_params(PruneConfig(method="magnitude", granularity="channel", allocation="uniform",
                                           sparsity=0.7)), ctx)
    assert len(timed) > n
    assert pruned.latency_ms is not None and pruned.latency_ms < dense_ms


def test_study_cost_is_validated_at_create() -> None:
    with pytest.raises(ConfigError, match="cost"):
        build(StudyConfig, {"name": "x", "cost": "flops"})
    for kind in COST_KINDS:
        assert build(StudyConfig, {"name": "x", "cost": kind}).cost == kind
