"""accuracy / robust_accuracy / evaluate and the transfer attack, on plain lists of batches."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from _toys import toy_data, toy_net
from torch import nn

import searchprune.attacks._base as base
from searchprune.attacks import (
    EvalResult,
    accuracy,
    accuracy_on_batches,
    evaluate,
    fgsm,
    pgd,
    robust_accuracy,
    transfer_accuracy,
    transfer_examples,
)
from searchprune.config import ThreatModel
from searchprune.errors import ConfigError

THREAT = ThreatModel(eps=0.1, alpha=0.02, steps=8, random_start=False)


def _toy_data(n: int, seed: int, classes: int = 4, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return toy_data(n, seed, classes, hw, proto_seed=7)


def _toy_net(seed: int = 0, classes: int = 4) -> nn.Module:
    return toy_net(seed, classes, dropout=None, lr=2e-2, steps=60, data_seed=0, proto_seed=7)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return _toy_net(0)


@pytest.fixture(scope="module")
def other() -> nn.Module:
    return _toy_net(1)


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _toy_data(300, seed=1)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 300, 64)]  # the last batch is short


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def test_accuracy_counts_every_image_and_respects_max_images(net: nn.Module, batches) -> None:
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert accuracy(net, batches) == pytest.approx(_correct(net, x, y).float().mean().item())
    # 100 images = one full batch of 64 + 36 of the next
    assert accuracy(net, batches, max_images=100) == pytest.approx(
        _correct(net, x[:100], y[:100]).float().mean().item())
    assert accuracy(net, []) == 0.0
    with pytest.raises(ConfigError, match="max_images"):
        accuracy(net, batches, max_images=0)


def test_robust_accuracy_matches_a_manual_loop(net: nn.Module, batches) -> None:
    manual = torch.cat([_correct(net, pgd(net, x, y, eps=0.1, alpha=0.02, steps=8, random_start=False,
                                          early_stop=True), y) for x, y in batches])
    assert robust_accuracy(net, batches, THREAT) == pytest.approx(manual.float().mean().item())
    by_fgsm = torch.cat([_correct(net, fgsm(net, x, y, eps=0.1), y) for x, y in batches])
    assert robust_accuracy(net, batches, THREAT, attack="fgsm") == pytest.approx(
        by_fgsm.float().mean().item())
    assert robust_accuracy(net, batches, THREAT) < accuracy(net, batches)
    with pytest.raises(ConfigError, match="unknown attack 'cw'"):
        robust_accuracy(net, batches, THREAT, attack="cw")


def test_evaluate_reports_clean_robust_worst(net: nn.Module, batches) -> None:
    res = evaluate(net, batches, THREAT, attacks=("fgsm", "pgd"))
    assert isinstance(res, EvalResult) and res.n == 300 and res.transfer is None
    assert res.clean == pytest.approx(accuracy(net, batches))
    assert res.robust["pgd"] == pytest.approx(robust_accuracy(net, batches, THREAT))
    assert res.robust["fgsm"] == pytest.approx(robust_accuracy(net, batches, THREAT, attack="fgsm"))
    # worst case: an image counts only if it survives both attacks (and is right when clean)
    worst = torch.cat([
        _correct(net, x, y) & _correct(net, fgsm(net, x, y, eps=0.1), y)
        & _correct(net, pgd(net, x, y, eps=0.1, alpha=0.02, steps=8, random_start=False, early_stop=True), y)
        for x, y in batches])
    assert res.worst == pytest.approx(worst.float().mean().item())
    assert res.worst <= min(res.robust.values()) <= res.clean
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.clean = 1.0  # type: ignore[misc]


def test_evaluate_max_images_and_unknown_attacks(net: nn.Module, batches) -> None:
    assert evaluate(net, batches, THREAT, max_images=70).n == 70
    with pytest.raises(ConfigError, match="unknown attack"):
        evaluate(net, batches, THREAT, attacks=("pgd", "nope"))


def test_evaluate_restores_modes(batches) -> None:
    net = _toy_net(0).train()
    stats = net[1].running_mean.clone()
    evaluate(net, batches, THREAT, attacks=("fgsm", "pgd"), source=net)
    accuracy(net, batches)
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net[1].running_mean, stats)
    assert all(p.grad is None for p in net.parameters())


def test_transfer_from_an_identical_source_equals_white_box(net: nn.Module, batches) -> None:
    # transfer examples are textbook PGD on the source: with the source = the target (and no
    # random start) they are exactly the white-box textbook PGD examples
    white_box = robust_accuracy(net, batches, THREAT, early_stop=False)
    assert transfer_accuracy(net, net, batches, THREAT) == white_box
    x, y = batches[0]
    assert torch.equal(transfer_examples(net, x, y, THREAT),
                       pgd(net, x, y, eps=0.1, alpha=0.02, steps=8, random_start=False))
    # evaluate's white-box PGD stops early, which is never weaker than the last iterate
    res = evaluate(net, batches, THREAT, source=net)
    assert res.transfer == white_box
    assert res.robust["pgd"] <= res.transfer


def test_transfer_from_another_model_is_weaker_than_white_box(net: nn.Module, other: nn.Module,
                                                              batches) -> None:
    res = evaluate(net, batches, THREAT, source=other)
    assert res.transfer is not None
    assert res.robust["pgd"] < res.transfer <= 1.0
    # a gradient-masking model: white-box PGD sees no gradient, transfer examples still hurt
    class Masked(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.detach())  # gradient obfuscation by construction

    masked = Masked(net)
    res_masked = evaluate(masked, batches, THREAT, source=net)
    assert res_masked.robust["pgd"] == pytest.approx(res_masked.clean)
    assert res_masked.transfer is not None and res_masked.transfer < res_masked.clean - 0.2


def test_evaluate_in_bf16_agrees_with_fp32(net: nn.Module, batches) -> None:
    fp32 = evaluate(net, batches, THREAT, attacks=("fgsm", "pgd"), source=net)
    bf16 = evaluate(net, batches, THREAT, attacks=("fgsm", "pgd"), source=net, precision="bf16")
    assert bf16.clean == fp32.clean  # scoring is fp32 either way
    for name in ("fgsm", "pgd"):
        assert abs(bf16.robust[name] - fp32.robust[name]) <= 0.03
    assert bf16.transfer is not None and fp32.transfer is not None
    assert abs(bf16.transfer - fp32.transfer) <= 0.03
    with pytest.raises(ConfigError, match="precision"):
        evaluate(net, batches, THREAT, precision="fp16")  # type: ignore[arg-type]


def test_accuracy_on_batches_scores_batches_as_given(net: nn.Module, batches) -> None:
    assert accuracy_on_batches(net, batches) == accuracy(net, batches)
    assert accuracy_on_batches(net, []) == 0.0
    crafted = [(transfer_examples(net, x, y, THREAT), y) for x, y in batches]
    assert accuracy_on_batches(net, crafted) == transfer_accuracy(net, net, batches, THREAT)
    model = _toy_net(0).train()
    accuracy_on_batches(model, batches)
    assert all(m.training for m in model.modules())


def test_base_imports_no_attack_or_evaluation_module() -> None:
    """The registry and geometry sit below every attack: no cycle through transfer/pgd/evaluate."""
    tree = ast.parse(Path(base.__file__).read_text())
    local = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert local == set(), local
