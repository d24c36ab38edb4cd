"""The pruning benchmark's bookkeeping on a tiny run: the networks it builds and the ratios it reports."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from _scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_prune")


def test_networks_keep_a_multiple_of_round_to(bench: ModuleType) -> None:
    nets = bench.networks("cnn8", [0.3], [1, 8])
    assert [label for label, _ in nets] == ["dense", "-30%", "-30% r8"]
    assert nets[1][1].conv1.out_channels == 22 and nets[2][1].conv1.out_channels == 24


def test_rows_relate_each_form_to_its_own_dense(bench: ModuleType) -> None:
    torch.set_num_threads(1)
    rows = bench.bench_model("cnn8", [0.5], repeats=1, batch=4, round_tos=[1])
    dense, pruned = rows
    assert dense["raw_speedup"] == dense["deploy_speedup"] == 1.0 == dense["mac_ratio"]
    assert pruned["mac_ratio"] > 3
    for form in ("raw", "deploy"):
        assert pruned[f"{form}_eff"] == pytest.approx(pruned[f"{form}_speedup"] / pruned["mac_ratio"])
        assert pruned[f"{form}_speedup"] == pytest.approx(dense[f"{form}_ms"] / pruned[f"{form}_ms"])
    assert ("reason" in pruned) is (pruned["deploy_eff"] < bench.TARGET)


def test_blocked_macs_round_output_channels_up(bench: ModuleType) -> None:
    from searchprune.models.macs import count_dense_macs

    (_, dense), (_, pruned) = bench.networks("cnn8", [0.3], [1])
    shape = (1, 28, 28)
    assert bench.blocked_macs(pruned, shape, 1) == count_dense_macs(pruned, shape)
    # conv1 keeps 22 of 32 channels: counted as 32 in blocks of 16, so no saving on its outputs
    assert pruned.conv1.out_channels == 22
    assert bench.blocked_macs(pruned, shape, 16) > count_dense_macs(pruned, shape)
    assert bench.blocked_macs(dense, shape, 16) == count_dense_macs(dense, shape) + 6 * 128  # fc2: 10 -> 16 rows
