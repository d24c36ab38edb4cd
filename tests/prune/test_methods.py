"""Each criterion against a hand computation of its definition (methods.md A, E.5, F.1-F.3)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from searchprune import attacks
from searchprune.attacks import pgd
from searchprune.config import PruneConfig, ThreatModel
from searchprune.prune import PruneContext, get_mask, prunable_layers, prune_
from searchprune.prune.gap import adversarial_gradients, map_zeros
from searchprune.prune.gradient import MagGrad
from searchprune.prune.hessian import Hessian
from searchprune.prune.lamp import lamp_scores
from searchprune.prune.taylor import Taylor

INPUT = (3, 8, 8)
THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=3, random_start=False)


class Net(nn.Module):
    """conv 3->8 (BN, ReLU), conv 8->16 (BN, ReLU), pool 2x2, fc 64->16, classifier 16->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(64, 16)
        self.classifier = nn.Linear(16, 10)
        self.classifier.is_classifier = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.classifier(F.relu(self.fc(x.flatten(1))))


def _loader(n: int = 2, batch: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, *INPUT, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def _ctx(model: nn.Module, loader, cfg: PruneConfig | None = None) -> PruneContext:
    return PruneContext(model=model, layers=prunable_layers(model), cfg=cfg or PruneConfig(),
                        input_shape=INPUT, sparsity=0.5, loader=loader, threat=THREAT)


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: get_mask(m) for n, m in prunable_layers(model).items()}


# ---------------------------------------------------------------------------------------------
# GAP (methods.md A.5)
# ---------------------------------------------------------------------------------------------


def _hand_gap_gradient(model: nn.Module, loader) -> dict[str, torch.Tensor]:
    """G = sum over batches of grad_w mean CE(model(PGD(x, labels = predictions)), y), BN in train mode."""
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    G = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    model.train()
    for x, y in loader:
        x_adv = pgd(model, x, None, eps=THREAT.eps, alpha=THREAT.alpha, steps=THREAT.steps,
                    random_start=False, y_from_model=True, early_stop=False)
        model.zero_grad()
        F.cross_entropy(model(x_adv), y).backward()
        for n, m in layers.items():
            G[n] += m.weight.grad
    return G


def _gap_cfg(sparsity: float, **options) -> PruneConfig:
    opts = {"random_start": False, "seed": 0, **options}
    alloc = opts.pop("allocation", "global")
    return PruneConfig(method="gap", sparsity=sparsity, allocation=alloc, options=opts)


def test_gap_prunes_the_largest_signed_adversarial_gradients() -> None:
    torch.manual_seed(0)
    base, loader = Net(), _loader()
    G = _hand_gap_gradient(base, loader)
    model = copy.deepcopy(base)
    prune_(model, _gap_cfg(0.3), input_shape=INPUT, loader=loader, threat=THREAT)
    masks = _masks(model)
    pruned = torch.cat([G[n][masks[n] == 0] for n in G])
    kept = torch.cat([G[n][masks[n] == 1] for n in G])
    assert pruned.numel() == round(0.3 * (pruned.numel() + kept.numel()))
    # the global cut falls between the kept (smaller) and pruned (larger) signed values
    assert pruned.min() >= kept.max() - 1e-6
    assert (pruned > 0).all()  # greedy: the most positive gradients go first, not the largest |g|


def test_gap_layerwise_abs_variant_differs_from_signed() -> None:
    torch.manual_seed(0)
    base, loader = Net(), _loader()
    G = _hand_gap_gradient(base, loader)
    signed, absolute = copy.deepcopy(base), copy.deepcopy(base)
    prune_(signed, _gap_cfg(0.3), input_shape=INPUT, loader=loader, threat=THREAT)
    prune_(absolute, _gap_cfg(0.3, variant="abs", allocation="uniform"), input_shape=INPUT, loader=loader,
           threat=THREAT)
    ms, ma = _masks(signed), _masks(absolute)
    for n, g in G.items():  # per layer the largest |G| are pruned
        assert g.abs()[ma[n] == 0].min() >= g.abs()[ma[n] == 1].max() - 1e-6
        assert (ma[n] == 0).sum() == round(0.3 * g.numel())
    assert any(not torch.equal(ms[n], ma[n]) for n in G)
    # and GAP is not gradient-magnitude pruning |w * g| on clean data
    grad = copy.deepcopy(base)
    prune_(grad, PruneConfig(method="gradient", sparsity=0.3), input_shape=INPUT, loader=loader)
    assert any(not torch.equal(ms[n], m) for n, m in _masks(grad).items())


def test_gap_attacks_model_predictions_with_bn_in_train_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    real_pgd = attacks.pgd

    def spy(model, x, y=None, **kw):
        calls.append({"y": y, **kw})
        return real_pgd(model, x, y, **kw)

    monkeypatch.setattr(attacks, "pgd", spy)
    torch.manual_seed(0)
    model = Net()
    bn_modes: list[bool] = []
    model.bn1.register_forward_hook(lambda m, i, o: bn_modes.append(m.training))
    stats = model.bn1.running_mean.clone()
    model.eval()
    prune_(model, _gap_cfg(0.3, update_bn_stats=True), input_shape=INPUT, loader=_loader(), threat=THREAT)
    assert len(calls) == 2 and all(c["y"] is None and c["y_from_model"] for c in calls)
    assert all(c["early_stop"] is False and c["eps"] == THREAT.eps for c in calls)
    assert True in bn_modes  # the gradient forward runs on batch statistics
    assert not torch.equal(model.bn1.running_mean, stats)  # the reference's side effect
    assert not any(m.training for m in model.modules())  # the caller's eval mode is restored

    model2 = Net()
    stats2 = model2.bn1.running_mean.clone()
    prune_(model2, _gap_cfg(0.3, update_bn_stats=False), input_shape=INPUT, loader=_loader(), threat=THREAT)
    assert torch.equal(model2.bn1.running_mean, stats2)


def test_gap_gradient_is_a_signed_sum_over_batches() -> None:
    torch.manual_seed(0)
    model = Net()
    b1, b2 = _loader(n=2)
    kw = {"n_batches": None, "update_bn_stats": False, "random_start": False}
    both, diag = adversarial_gradients(_ctx(model, [b1, b2]), **kw)
    one, _ = adversarial_gradients(_ctx(model, [b1]), **kw)
    two, _ = adversarial_gradients(_ctx(model, [b2]), **kw)
    assert diag["batches"] == 2
    for n in both:
        torch.testing.assert_close(both[n], one[n] + two[n])
    capped, diag = adversarial_gradients(_ctx(model, [b1, b2]), n_batches=1, update_bn_stats=False,
                                         random_start=False)
    assert diag["batches"] == 1
    for n in both:
        torch.testing.assert_close(capped[n], one[n])


def test_map_zeros() -> None:
    t = torch.tensor([-2.0, 0.0, 3.0, 0.0, -0.5])
    out = map_zeros(t, generator=torch.Generator().manual_seed(0))
    assert out[0] == -2.0 and out[4] == -0.5 and out[2] == 4.0
    assert ((out[[1, 3]] >= 0) & (out[[1, 3]] < 0.5)).all()
    assert torch.equal(torch.argsort(out[[0, 2, 4]]), torch.argsort(t[[0, 2, 4]]))  # order kept


# ---------------------------------------------------------------------------------------------
# LAMP (methods.md F.1)
# ---------------------------------------------------------------------------------------------


def test_lamp_scores_match_hand_computation() -> None:
    w = torch.tensor([1.0, -3.0, 2.0, 0.5])
    # squares 1, 9, 4, 0.25 -> ascending 0.25, 1, 4, 9 with tails 14.25, 14, 13, 9
    expected = torch.tensor([1 / 14, 1.0, 4 / 13, 0.25 / 14.25])
    torch.testing.assert_close(lamp_scores(w**2), expected)


def test_lamp_global_mask_matches_hand_computation() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))     # LAMP: 1/30, 4/29, 9/25, 1
        model[1].weight.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.05]]))    # 0.0025/.1425, .01/.14, .04/.13, 1
    # scores ascending: 0.0175(1.0), 0.0333(0.0), 0.0714(1.1), 0.1379(0.1), 0.3077(1.2), 0.36(0.2), 1, 1
    prune_(model, PruneConfig(method="lamp", sparsity=0.5), input_shape=(2,))
    assert torch.equal(get_mask(model[0]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(get_mask(model[1]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_lamp_keeps_a_weight_in_every_layer() -> None:
    torch.manual_seed(0)
    base = Net()
    with torch.no_grad():
        base.fc.weight.mul_(1e-4)  # a layer global magnitude pruning wipes out
    lamp, mag = copy.deepcopy(base), copy.deepcopy(base)
    prune_(lamp, PruneConfig(method="lamp", sparsity=0.99), input_shape=INPUT)
    prune_(mag, PruneConfig(method="magnitude", sparsity=0.99), input_shape=INPUT)
    assert all((m.weight != 0).sum() >= 1 for m in prunable_layers(lamp).values())
    assert (mag.fc.weight != 0).sum() == 0


# ---------------------------------------------------------------------------------------------
# Random, gradient, Taylor, Hessian, L1 filter
# ---------------------------------------------------------------------------------------------


def test_random_is_seeded() -> None:
    def masks(**options):
        model = Net()
        prune_(model, PruneConfig(method="random", sparsity=0.5, options=options), input_shape=INPUT)
        return _masks(model)

    a, b, c = masks(seed=1), masks(seed=1), masks(seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    torch.manual_seed(7)
    d = masks()
    torch.manual_seed(7)
    e = masks()
    assert all(torch.equal(d[n], e[n]) for n in d)


def test_gradient_is_abs_weight_times_gradient_in_train_mode() -> None:
    torch.manual_seed(0)
    model, loader = Net(), _loader()
    ref = copy.deepcopy(model).train()
    F.cross_entropy(ref(loader[0][0]), loader[0][1]).backward()
    expected = {n: (m.weight * m.weight.grad).abs() for n, m in prunable_layers(ref).items()}
    stats = model.bn1.running_mean.clone()
    got = MagGrad({"update_bn_stats": False}).scores(_ctx(model, loader))
    for n in expected:
        torch.testing.assert_close(got[n], expected[n])
    assert torch.equal(model.bn1.running_mean, stats)
    MagGrad().scores(_ctx(model, loader))  # ShrinkBench's default: the train-mode batch updates BN
    assert not torch.equal(model.bn1.running_mean, stats)


def test_taylor_squares_the_unit_sum_per_batch() -> None:
    torch.manual_seed(0)
    model, loader = Net(), _loader()
    wg_per_batch = []
    for x, y in loader:
        ref = copy.deepcopy(model).train()
        F.cross_entropy(ref(x), y).backward()
        wg_per_batch.append({n: m.weight * m.weight.grad for n, m in prunable_layers(ref).items()})
    stats = model.bn1.running_mean.clone()
    ctx = _ctx(model, loader)
    chan = Taylor({"n_batches": 2}).unit_scores(ctx, "channel")
    weight = Taylor({"n_batches": 2}).scores(ctx)
    for n in chan:
        exp_c = sum(wg[n].flatten(1).sum(1) ** 2 for wg in wg_per_batch) / 2
        exp_w = sum(wg[n] ** 2 for wg in wg_per_batch) / 2
        torch.testing.assert_close(chan[n], exp_c)
        torch.testing.assert_close(weight[n], exp_w)
    assert torch.equal(model.bn1.running_mean, stats)


def test_hessian_uses_per_sample_squared_gradients() -> None:
    torch.manual_seed(0)
    model, loader = Net(), _loader(n=1, batch=6)
    x, y = loader[0]
    ref = copy.deepcopy(model).eval()
    layers = prunable_layers(ref)
    sq = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    batch_grad = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    for i in range(len(x)):  # one sample at a time: the definition
        ref.zero_grad()
        F.cross_entropy(ref(x[i:i + 1]), y[i:i + 1]).backward()
        for n, m in layers.items():
            sq[n] += m.weight.grad ** 2 / len(x)
            batch_grad[n] += m.weight.grad / len(x)
    got = Hessian({"n_samples": 6}).scores(_ctx(model, loader))
    for n, m in layers.items():
        torch.testing.assert_close(got[n], m.weight.detach() ** 2 * sq[n])
        # E[g^2] is not (E[g])^2: the squared batch gradient would give another score
        assert not torch.allclose(got[n], m.weight.detach() ** 2 * batch_grad[n] ** 2)


def test_hessian_caps_samples() -> None:
    method = Hessian({"n_samples": 5})
    method.scores(_ctx(Net(), _loader(n=3, batch=4)))
    assert method.extra_report()["samples"] == 5


def test_l1_filter_keeps_the_largest_filters() -> None:
    torch.manual_seed(0)
    model = Net()
    norms = {n: m.weight.detach().abs().flatten(1).sum(1) for n, m in prunable_layers(model).items()}
    report = prune_(model, PruneConfig(method="l1_filter", granularity="channel", allocation="uniform",
                                       sparsity=0.5), input_shape=INPUT)
    assert set(report.kept_channels) == {"conv1", "conv2"}  # convs only (Li et al.; NNI op_types Conv2d)
    assert model.fc.out_features == 16
    for n, kept in report.kept_channels.items():
        expected = sorted(torch.topk(norms[n], len(norms[n]) // 2).indices.tolist())
        assert kept == expected
