"""In-train pruning: straight-through masks, the MAC cost model (checked against count_macs after
physical removal), the hinge penalty, fitting to the target, and a short run that meets it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _toys import bn_cnn
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import PruneConfig, ThreatModel, TrainConfig
from searchprune.data import ArrayDataset, BatchLoader
from searchprune.errors import ConfigError
from searchprune.models.macs import count_dense_macs, count_macs, layer_costs
from searchprune.prune import Mask, prunable_layers, prune_, weight_param
from searchprune.prune.in_train import (
    HardwareCost,
    HardwareLoss,
    InTrain,
    attach_channel_masks_,
    attach_layer_masks_,
    binarize,
    fit_to_target_,
    remove_channels_,
)

INPUT = (1, 8, 8)
THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=2)


def _net() -> nn.Module:
    """conv 1->8 (BN), conv 8->16 (BN), pool, flatten, classifier 256->4."""
    return bn_cnn()


class _ResNetLet(nn.Module):
    """A stem and one residual block (two convs writing into one sum), then fc and classifier: the
    channel groups couple the stem with the block's second conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4, 16)
        self.classifier = nn.Linear(16, 4)
        self.classifier.is_classifier = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.classifier(F.relu(self.fc(x)))


def _loader(n: int = 256, batch: int = 32):
    """Random but learnable: each class is a fixed random pattern under heavy uniform noise."""
    g = torch.Generator().manual_seed(4)
    protos = torch.rand(4, *INPUT, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    x = (0.4 * protos[y] + 0.6 * torch.rand(n, *INPUT, generator=g)).clamp(0, 1)
    return BatchLoader(ArrayDataset((x * 255).to(torch.uint8), y), batch, shuffle=True, seed=0)


# ---------------------------------------------------------------------------------------------
# Masks and the straight-through estimator
# ---------------------------------------------------------------------------------------------


def test_binarize_values_and_straight_through_gradient() -> None:
    m = torch.tensor([-2.0, -0.1, 0.0, 0.1, 1.0, 3.0], requires_grad=True)
    b = binarize(m)
    assert b.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    b.sum().backward()
    torch.testing.assert_close(m.grad, 0.5 * (1 - torch.tanh(m.detach()) ** 2))


@pytest.mark.parametrize("gran", ["weight", "kernel", "channel"])
def test_masks_start_all_ones_and_get_gradients(gran: str) -> None:
    torch.manual_seed(0)
    model = _net().eval()
    x, y = torch.rand(6, *INPUT), torch.randint(0, 4, (6,))
    before = model(x)
    layers = prunable_layers(model)
    if gran == "channel":
        masks = [g.mask for g in attach_channel_masks_(model, layers, torch.rand(1, *INPUT))]
    else:
        masks = list(attach_layer_masks_(layers, gran).values())
        shapes = [tuple(m.mask_logits.shape) for m in masks]
        expected = [tuple(weight_param(m).shape) if gran == "weight" else tuple(weight_param(m).shape[:2])
                    for m in layers.values()]
        assert shapes == expected
    assert all(bool((m.binary() == 1).all()) for m in masks)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    F.cross_entropy(model(x), y).backward()
    for m in masks:
        assert m.mask_logits.grad is not None and bool((m.mask_logits.grad != 0).any())


# ---------------------------------------------------------------------------------------------
# The cost model
# ---------------------------------------------------------------------------------------------


def _random_logits_(masks, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masks:
            m.mask_logits.copy_(torch.randn(m.mask_logits.shape, generator=g))
            m.mask_logits.view(-1)[0] = 1.0  # keep a unit in every group


@pytest.mark.parametrize("gran", ["weight", "kernel"])
@pytest.mark.parametrize("cost", ["macs", "params"])
def test_layer_mask_cost_equals_count_macs(gran: str, cost: str) -> None:
    model = _net()
    dense = layer_costs(model, INPUT)
    layers = prunable_layers(model)
    masks = attach_layer_masks_(layers, gran)
    hc = HardwareCost.for_layers({n: c.out_positions for n, c in dense.items()}, dict(model.named_modules()),
                                 masks, cost)
    _random_logits_(masks.values(), 1)
    now = layer_costs(model, INPUT)
    key = "macs" if cost == "macs" else "nonzero_params"
    full = "dense_macs" if cost == "macs" else "params"
    expected = sum(getattr(c, key) for c in now.values()) / sum(getattr(c, full) for c in dense.values())
    assert float(hc.ratio().detach()) == pytest.approx(expected, rel=1e-6)
    assert 0.2 < expected < 0.9


@pytest.mark.parametrize("make", [_net, _ResNetLet], ids=["sequential", "residual"])
def test_channel_cost_and_masking_match_physical_removal(make) -> None:
    torch.manual_seed(0)
    model = make().eval()
    dense_macs = count_dense_macs(model, INPUT)
    layers = prunable_layers(model)
    out_before = {n: weight_param(m).shape[0] for n, m in layers.items()}
    positions = {n: c.out_positions for n, c in layer_costs(model, INPUT).items()}
    groups = attach_channel_masks_(model, layers, torch.rand(1, *INPUT))
    hc = HardwareCost.for_groups(positions, dict(model.named_modules()), groups, "macs")
    _random_logits_([g.mask for g in groups], 2)
    x = torch.rand(5, *INPUT)
    masked_out = model(x)
    ratio = float(hc.ratio().detach())
    bins = [g.mask.binary().detach() for g in groups]
    kept = remove_channels_(groups, bins, out_before)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    # the cost model is exactly count_macs of the physically pruned model (both ends credited) ...
    assert count_macs(model, INPUT) / dense_macs == pytest.approx(ratio, rel=1e-6)
    assert ratio < 0.9
    # ... and masking a channel group was the same function as removing it
    torch.testing.assert_close(model(x), masked_out, rtol=1e-5, atol=1e-5)
    for n, k in kept.items():
        assert weight_param(dict(model.named_modules())[n]).shape[0] == len(k)


# ---------------------------------------------------------------------------------------------
# The hardware loss and fitting to the target
# ---------------------------------------------------------------------------------------------


def _hc_weight_masks():
    model = _net()
    layers = prunable_layers(model)
    masks = attach_layer_masks_(layers, "weight")
    positions = {n: c.out_positions for n, c in layer_costs(model, INPUT).items()}
    return model, masks, HardwareCost.for_layers(positions, dict(model.named_modules()), masks, "macs")


def test_hardware_loss_is_a_hinge_on_the_cost_ratio() -> None:
    model, masks, hc = _hc_weight_masks()
    logits = [m.mask_logits for m in masks.values()]
    under = HardwareLoss(hc, 1.0, 5.0, start=0, end=100, on_freeze=lambda: None)
    loss = under(model)
    assert float(loss.detach()) == 0.0
    assert all(g is None or bool((g == 0).all())
               for g in torch.autograd.grad(loss, logits, allow_unused=True))
    over = HardwareLoss(hc, 0.4, 5.0, start=0, end=100, on_freeze=lambda: None)
    loss = over(model)
    assert float(loss.detach()) == pytest.approx(5.0 * (1.0 - 0.4))
    grads = torch.autograd.grad(loss, logits)
    assert all(bool((g > 0).all()) for g in grads)  # every mask is pushed towards pruning
    # outside the window: zero
    late = HardwareLoss(hc, 0.4, 5.0, start=3, end=100, on_freeze=lambda: None)
    assert float(late(model)) == 0.0


def test_adaptive_weight_grows_only_while_over_target_and_freezes_when_met() -> None:
    model, masks, hc = _hc_weight_masks()
    frozen = []
    hw = HardwareLoss(hc, 0.5, 1.0, start=0, end=50, growth=0.5, freeze_when_met=True,
                      on_freeze=lambda: frozen.append(True))
    hw(model)
    hw(model)
    assert hw.lam == pytest.approx(1.5 ** 2)
    with torch.no_grad():
        for m in masks.values():
            m.mask_logits.fill_(-1.0)  # everything pruned: within the target
    assert float(hw(model)) == 0.0 and frozen == [True] and hw.lam == pytest.approx(2.25)
    assert float(hw(model)) == 0.0 and frozen == [True]  # past the (moved) end: no second freeze


@pytest.mark.parametrize("start_logit", [1.0, -1.0])
def test_fit_to_target_lands_within_one_unit(start_logit: float) -> None:
    _, masks, hc = _hc_weight_masks()
    torch.manual_seed(0)
    logits = [torch.randn_like(m.mask_logits) + start_logit for m in masks.values()]
    bins = [binarize(lg) for lg in logits]
    names = list(masks)

    def as_b(b):
        return dict(zip(names, b))

    dropped, revived = fit_to_target_(bins, logits, hc, 0.5, as_b)
    r = float(hc.ratio(as_b(bins)))
    assert r <= 0.5
    unit = max(hc.mult[n] for n in names) / hc.dense
    assert r >= 0.5 - unit
    assert (dropped > 0) == (start_logit > 0) and (revived > 0) == (start_logit < 0)
    for lg, b in zip(logits, bins):  # within each layer the kept units have the highest logits
        assert float(lg[b > 0].min()) >= float(lg[b == 0].max())


def test_fit_after_a_collapse_revives_every_layer() -> None:
    """Whole layers crossing in one step leave logits comparable within a layer only: the fill must
    not spend the budget on the layer whose masks were pushed least (here the last one)."""
    _, masks, hc = _hc_weight_masks()
    names = list(masks)
    torch.manual_seed(0)
    depth = {n: -3.0 + i for i, n in enumerate(names)}  # first layer pushed deepest
    logits = [torch.randn_like(masks[n].mask_logits) * 0.01 + depth[n] for n in names]
    bins = [binarize(lg) for lg in logits]
    assert all(float(b.sum()) == 0 for b in bins)

    def as_b(b):
        return dict(zip(names, b))

    fit_to_target_(bins, logits, hc, 0.5, as_b)
    kept = [float(b.mean()) for b in bins]
    assert float(hc.ratio(as_b(bins))) <= 0.5
    assert min(kept) > 0.3 and max(kept) - min(kept) < 0.05, kept  # uniform fallback, no dead layer


def test_fit_keeps_the_learned_allocation_shape() -> None:
    _, masks, hc = _hc_weight_masks()
    names = list(masks)
    g = torch.Generator().manual_seed(0)
    offset = {names[0]: 1.0, names[1]: -0.5}  # about 84% and 31% kept
    logits = [torch.randn(masks[n].mask_logits.shape, generator=g) + offset[n] for n in names]
    bins = [binarize(lg) for lg in logits]

    def as_b(b):
        return dict(zip(names, b))

    before = [float(b.mean()) for b in bins]
    target = float(hc.ratio(as_b(bins))) - 0.1
    fit_to_target_(bins, logits, hc, target, as_b)
    after = [float(b.mean()) for b in bins]
    assert float(hc.ratio(as_b(bins))) <= target
    assert after[0] > after[1] + 0.4  # the trained allocation survives
    shifts = [a - b for a, b in zip(after, before)]
    assert max(shifts) - min(shifts) < 0.02, shifts  # one shared shift


# ---------------------------------------------------------------------------------------------
# The registered method
# ---------------------------------------------------------------------------------------------


def test_options_are_checked() -> None:
    ctx = type("Ctx", (), {"sparsity": 0.5})()
    assert InTrain({}).target(ctx) == 0.5
    assert InTrain({"target_macs_ratio": 0.3}).target(ctx) == 0.3
    with pytest.raises(ConfigError, match="target_params_ratio"):
        InTrain({"target_params_ratio": 0.3}).target(ctx)
    with pytest.raises(ConfigError, match="prune.options.cost"):
        HardwareCost({}, {}, "flops")
    with pytest.raises(ConfigError, match="learned"):
        prune_(_net(), PruneConfig(method="in_train", allocation="global"), input_shape=INPUT,
               loader=_loader(), threat=THREAT)


@pytest.mark.parametrize("gran", ["weight", "kernel", "channel"])
def test_short_run_meets_the_mac_target(gran: str) -> None:
    torch.manual_seed(0)
    model = _net()
    dense = count_dense_macs(model, INPUT)
    cfg = PruneConfig(method="in_train", granularity=gran, allocation="learned", sparsity=0.5,
                      options={"epochs": 3, "lr": 0.05})
    report = prune_(model, cfg, input_shape=INPUT, loader=_loader(), threat=THREAT,
                    train_cfg=TrainConfig(recipe="fast", batch_size=32))
    achieved = count_macs(model, INPUT) / dense
    assert achieved <= 0.5 + 0.05, report.extra
    assert achieved == pytest.approx(report.extra["ratio_final"], rel=1e-6)
    assert achieved > 0.3, report.extra  # fitted to the target, not collapsed
    assert report.structural == (gran == "channel")
    assert model(torch.rand(2, *INPUT)).shape == (2, 4)
    if gran != "channel":
        for m in prunable_layers(model).values():
            assert [type(p) for p in m.parametrizations.weight] == [Mask]
    assert not any(type(p).__module__.endswith("in_train") for p in model.modules())


def test_paper_raw_binarization_still_meets_the_target() -> None:
    """A fixed weight (the paper's b), no fitting: the hinge alone pushes the cost under the target."""
    torch.manual_seed(0)
    model = _net()
    dense = count_dense_macs(model, INPUT)
    cfg = PruneConfig(method="in_train", granularity="weight", allocation="learned", sparsity=0.5,
                      options={"epochs": 3, "lr": 0.05, "lam": 5000.0, "enforce_target": False,
                               "fill_target": False, "freeze_when_met": False, "prune_start": 0.0,
                               "prune_end": 1.0})
    report = prune_(model, cfg, input_shape=INPUT, loader=_loader(), threat=THREAT,
                    train_cfg=TrainConfig(recipe="fast", batch_size=32))
    assert report.extra["dropped_units"] == report.extra["revived_units"] == 0
    assert count_macs(model, INPUT) / dense <= 0.55


def test_from_scratch_reinitializes() -> None:
    torch.manual_seed(0)
    model = _net()
    w0 = model[0].weight.detach().clone()
    cfg = PruneConfig(method="in_train", granularity="weight", allocation="learned", sparsity=0.3,
                      options={"epochs": 0, "from_scratch": True})
    report = prune_(model, cfg, input_shape=INPUT, loader=_loader(), threat=THREAT)
    assert not torch.allclose(weight_param(model[0]), w0)
    assert report.extra["ratio_final"] <= 0.7 and math.isclose(report.extra["target_ratio"], 0.7)
