"""HYDRA: scaled score init = layer-wise magnitude pruning, straight-through scores, a prune phase
that trains the scores only, and a fixed shared Mask with exact per-layer sparsity afterwards."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _toys import bn_cnn
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import PruneConfig, ThreatModel, TrainConfig
from searchprune.data import ArrayDataset, BatchLoader
from searchprune.errors import ConfigError
from searchprune.prune import Mask, prunable_layers, prune_, weight_param
from searchprune.prune.hydra import (
    GetSubnet,
    PopupScores,
    attach_scores_,
    freeze_scores_,
    hydra_prune_phase_,
    hydra_train_config,
    n_pruned,
    scaled_score_init,
    score_parameters,
)

INPUT = (1, 8, 8)
THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=2)


def _net() -> nn.Module:
    """conv 1->8 (BN), conv 8->16 (BN), pool, fc 256->32, classifier 32->4."""
    return bn_cnn(hidden=32)


def _loader():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (64,), generator=g)
    protos = torch.rand(4, *INPUT, generator=g)
    x = (0.5 * protos[y] + 0.5 * torch.rand(64, *INPUT, generator=g)).clamp(0, 1)
    return BatchLoader(ArrayDataset((x * 255).to(torch.uint8), y), 16, shuffle=True, seed=0)


def _magnitude_mask(w: torch.Tensor, j: int) -> torch.Tensor:
    mask = torch.ones(w.numel())
    mask[torch.sort(w.detach().abs().reshape(-1), stable=True).indices[:j]] = 0
    return mask.reshape(w.shape)


def test_n_pruned_is_hydras_floor() -> None:
    assert n_pruned(10, 0.7) == 7 and n_pruned(10, 0.3) == 3  # (1 - 0.7) * 10 = 2.9999... in floats
    assert n_pruned(9, 0.5) == 4 and n_pruned(100, 0.999) == 99 and n_pruned(5, 0.0) == 0


def test_get_subnet_prunes_exactly_the_smallest() -> None:
    s = torch.tensor([[0.3, 0.1, 0.5], [0.2, 0.9, 0.1]])
    m = GetSubnet.apply(s, 3)
    assert m.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]  # tie at 0.1: both go (j = 3)
    for j in range(7):
        assert int((GetSubnet.apply(torch.rand(2, 3), j) == 0).sum()) == j


def test_scaled_score_init_formula() -> None:
    conv, fc = nn.Conv2d(4, 6, 3, groups=2), nn.Linear(20, 5)
    s = scaled_score_init(conv.weight)
    fan_in = (4 // 2) * 9
    torch.testing.assert_close(s, math.sqrt(6 / fan_in) * conv.weight / conv.weight.abs().max())
    assert float(s.abs().max()) == pytest.approx(math.sqrt(6 / fan_in))
    torch.testing.assert_close(scaled_score_init(fc.weight),
                               math.sqrt(6 / 20) * fc.weight / fc.weight.abs().max())
    assert torch.equal(scaled_score_init(torch.zeros(3, 4)), torch.zeros(3, 4))


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_initial_mask_is_layerwise_magnitude_pruning(sparsity: float) -> None:
    model = _net()
    ref = copy.deepcopy(model)
    layers = prunable_layers(model, include_classifier=True)
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    counts = {n: n_pruned(w.numel(), sparsity) for n, w in weights.items()}
    scores = attach_scores_(layers, counts)
    for n, p in scores.items():
        assert torch.equal(p.current_mask(), _magnitude_mask(weights[n], counts[n])), n
        assert torch.equal(layers[n].weight, weights[n] * _magnitude_mask(weights[n], counts[n]))
    # the same as the framework's own layer-wise magnitude pruning (uniform allocation)
    magnitude = PruneConfig(method="magnitude", allocation="uniform", sparsity=sparsity,
                            include_classifier=True)
    prune_(ref, magnitude, input_shape=INPUT)
    for n, m in prunable_layers(ref, include_classifier=True).items():
        if round(sparsity * m.weight.numel()) == counts[n]:  # uniform rounds, HYDRA floors
            assert torch.equal((m.weight != 0).float(), scores[n].current_mask()), n


def test_straight_through_gradient_reaches_the_scores() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    scores = attach_scores_({"fc": layer}, {"fc": 9})["fc"]
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    g = scores.popup_scores.grad
    assert g is not None and bool((g != 0).all()), "every score, pruned or kept, gets a gradient"
    # d loss / d mask * sign(score): the STE passes d loss / d mask through |.| unchanged
    w = weight_param(layer).detach()
    mask = scores.current_mask().requires_grad_(True)
    nn.functional.linear(x, w * mask, layer.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(g, mask.grad * scores.popup_scores.detach().sign())
    assert weight_param(layer).grad is not None  # weights still differentiable; the phase freezes them


def test_freeze_scores_leaves_one_fixed_mask() -> None:
    model = _net()
    layers = prunable_layers(model)
    counts = {n: n_pruned(m.weight.numel(), 0.8) for n, m in layers.items()}
    scores = attach_scores_(layers, counts)
    with torch.no_grad():  # pretend the prune phase moved the scores
        for p in scores.values():
            p.popup_scores.copy_(torch.randn_like(p.popup_scores))
    expected = {n: p.current_mask().clone() for n, p in scores.items()}
    x = torch.rand(2, *INPUT)
    model.eval()
    before = model(x)
    masks = freeze_scores_(layers)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    for n, m in layers.items():
        plist = list(m.parametrizations.weight)
        assert len(plist) == 1 and isinstance(plist[0], Mask)
        assert torch.equal(masks[n], expected[n])
        assert int((m.weight == 0).sum()) == counts[n]
        assert torch.equal(weight_param(m) == 0, expected[n] == 0)  # the raw tensor is zeroed too
    assert not any("popup_scores" in k for k in model.state_dict())


def test_refuses_non_mask_parametrizations() -> None:
    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    layer = nn.Linear(4, 4)
    parametrize.register_parametrization(layer, "weight", Double())
    with pytest.raises(ConfigError, match="quantize"):
        attach_scores_({"fc": layer}, {"fc": 2})


def test_train_config_uses_hydra_prune_phase_settings() -> None:
    base = TrainConfig(recipe="fast", lr=0.01, epochs=7, weight_decay=5e-4, max_batches=3)
    opts = {"recipe": "trades", "prune_epochs": 2, "prune_lr": 0.1, "prune_schedule": "cosine",
            "prune_weight_decay": 1e-4, "trades_beta": 3.0, "max_batches": None}
    cfg = hydra_train_config(base, opts)
    assert (cfg.recipe, cfg.epochs, cfg.lr, cfg.schedule, cfg.weight_decay, cfg.optimizer, cfg.momentum,
            cfg.trades_beta, cfg.max_batches) == ("trades", 2.0, 0.1, "cosine", 1e-4, "sgd", 0.9, 3.0, 3)


# ---------------------------------------------------------------------------------------------
# With training (searchprune.train)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_prune_phase_trains_only_scores(freeze_bn: bool) -> None:
    torch.manual_seed(0)
    model = _net()
    layers = prunable_layers(model, include_classifier=True)
    attach_scores_(layers, {n: n_pruned(m.weight.numel(), 0.7) for n, m in layers.items()})
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "popup_scores" not in n}
    scores0 = [p.detach().clone() for p in score_parameters(layers)]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cfg = TrainConfig(recipe="trades", epochs=1, lr=0.1, schedule="cosine", max_batches=2, batch_size=16)
    hydra_prune_phase_(model, layers, _loader(), cfg, threat=THREAT, freeze_bn=freeze_bn)
    after = dict(model.named_parameters())
    for n, before in frozen.items():
        is_bn = n.startswith(("1.", "4."))
        if is_bn and not freeze_bn:
            continue  # HYDRA trains BatchNorm's affine parameters by default
        assert torch.equal(after[n], before), f"{n} changed during the prune phase"
    if not freeze_bn:
        assert not torch.equal(after["1.weight"], frozen["1.weight"])
    assert all(not torch.equal(a, b) for a, b in zip(score_parameters(layers), scores0))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_apply_exact_sparsity_and_mask_survives_finetuning(sparsity: float) -> None:
    torch.manual_seed(0)
    model = _net()
    cfg = PruneConfig(method="hydra", allocation="learned", sparsity=sparsity, include_classifier=True,
                      options={"prune_epochs": 1, "max_batches": 2, "prune_lr": 0.5})
    report = prune_(model, cfg, input_shape=INPUT, loader=_loader(), threat=THREAT,
                    train_cfg=TrainConfig(batch_size=16))
    layers = prunable_layers(model, include_classifier=True)
    assert set(report.layer_sparsity) == set(layers)
    for n, m in layers.items():
        assert report.layer_sparsity[n] == n_pruned(m.weight.numel(), sparsity) / m.weight.numel()
        assert [type(p) for p in m.parametrizations.weight] == [Mask]
    assert not any(isinstance(p, PopupScores) for p in model.modules())
    assert 0 <= report.extra["kept_changed_vs_magnitude"] <= 1
    # fine-tuning trains the surviving weights; pruned ones stay exactly zero
    zero = {n: (m.weight == 0).clone() for n, m in layers.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for x, y in _loader():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, m in layers.items():
        assert torch.all(m.weight[zero[n]] == 0)
        assert int((m.weight == 0).sum()) >= int(zero[n].sum())


def test_classifier_follows_the_config() -> None:
    model = _net()
    cfg = PruneConfig(method="hydra", allocation="uniform", sparsity=0.5,
                      options={"prune_epochs": 1, "max_batches": 1})
    report = prune_(model, cfg, input_shape=INPUT, loader=_loader(), threat=THREAT)
    assert "10" not in report.layer_sparsity and not parametrize.is_parametrized(model[10])
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
