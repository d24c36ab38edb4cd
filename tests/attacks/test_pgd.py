"""FGSM and PGD: strength, the threat-model contract (ball, box, modes, gradients, layout),
restarts, early stopping, determinism, labels from the model, precision and the registry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _toys import Constant, Detached, toy_data, toy_net
from torch import nn

from searchprune.attacks import conv_layout, fast_layout, fgsm, get_attack, list_attacks, pgd, project, random_start
from searchprune.config import ThreatModel, TrainConfig
from searchprune.data import BatchLoader, make_synthetic
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.train import train_

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _toy_data(n: int, seed: int, classes: int = 4, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return toy_data(n, seed, classes, hw, proto_seed=7)


def _toy_net(classes: int = 4) -> nn.Module:
    return toy_net(0, classes, lr=2e-2, steps=60, proto_seed=7)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return _toy_net()


@pytest.fixture()
def net(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return _toy_data(512, seed=1)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return _correct(model, x, y).float().mean().item()


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(dim=1)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


KW = dict(eps=0.1, alpha=0.02, steps=10)


def test_attacks_are_registered() -> None:
    assert {"fgsm", "pgd"} <= set(list_attacks())


def test_pgd_is_stronger_than_fgsm_which_beats_nothing(net: nn.Module, test_set) -> None:
    x, y = test_set
    clean = _acc(net, x, y)
    acc_fgsm = _acc(net, fgsm(net, x, y, eps=0.1), y)
    acc_pgd = _acc(net, pgd(net, x, y, **KW), y)
    assert clean > 0.9
    assert acc_fgsm < clean - 0.1
    assert acc_pgd < acc_fgsm - 0.05


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.1, 0.02), ("l2", 0.8, 0.2)])
@pytest.mark.parametrize("start", [False, True])
@pytest.mark.parametrize("clamp", [False, True])
def test_perturbation_stays_in_the_ball(net: nn.Module, test_set, norm: str, eps: float, alpha: float,
                                        start: bool, clamp: bool) -> None:
    x, y = test_set
    x_adv = pgd(net, x, y, eps=eps, alpha=alpha, steps=5, norm=norm, random_start=start, clamp=clamp)
    dist = _linf(x_adv, x) if norm == "linf" else _l2(x_adv, x)
    assert (dist <= eps * (1 + 1e-5) + 1e-6).all()
    assert dist.max() > 0.5 * eps  # it did move
    if clamp:
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad and x_adv.is_contiguous()


def test_clamp_matters_near_the_box_edge(net: nn.Module, test_set) -> None:
    x, y = test_set
    bright = (x * 0.05 + 0.95)  # pixels near 1: an unclamped step leaves the box
    free = pgd(net, bright, y, **KW, clamp=False)
    boxed = pgd(net, bright, y, **KW, clamp=True)
    assert free.max() > 1.0
    assert boxed.min() >= 0 and boxed.max() <= 1
    f = fgsm(net, bright, y, eps=0.1, clamp=True)
    assert f.min() >= 0 and f.max() <= 1


def test_fgsm_takes_a_full_sign_step(net: nn.Module, test_set) -> None:
    x, y = test_set
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(x_req), y, reduction="sum"), x_req)
    # confidently classified examples can have an exactly zero gradient (saturated softmax)
    assert (grad != 0).float().mean() > 0.5
    moved = (fgsm(net, x, y, eps=0.05, clamp=False) - x).abs()
    assert torch.allclose(moved[grad != 0], torch.full_like(moved[grad != 0], 0.05), atol=1e-6)
    assert (moved[grad == 0] == 0).all()
    live = grad.flatten(1).norm(dim=1) > 0
    x_l2 = fgsm(net, x, y, eps=0.5, norm="l2", clamp=False)
    assert torch.allclose(_l2(x_l2, x)[live], torch.full((int(live.sum()),), 0.5), atol=1e-4)


def test_no_random_start_is_deterministic(net: nn.Module, test_set) -> None:
    x, y = test_set
    a = pgd(net, x, y, **KW, random_start=False)
    torch.manual_seed(123)
    b = pgd(net, x, y, **KW, random_start=False)
    assert torch.equal(a, b)
    c = pgd(net, x, y, **KW, random_start=True)
    d = pgd(net, x, y, **KW, random_start=True)
    assert not torch.equal(c, d)  # the random start really is random


@pytest.mark.parametrize("early_stop", [False, True])
def test_restarts_never_increase_robust_accuracy(net: nn.Module, test_set, early_stop: bool) -> None:
    x, y = test_set
    torch.manual_seed(5)
    one = _correct(net, pgd(net, x, y, **KW, restarts=1, early_stop=early_stop), y)
    torch.manual_seed(5)  # the first restart draws the same start as the single run
    five = _correct(net, pgd(net, x, y, **KW, restarts=5, early_stop=early_stop), y)
    assert not (five & ~one).any()  # no example robust under 5 restarts that 1 restart fooled
    assert five.sum() <= one.sum()


def test_early_stopping_is_never_weaker_than_the_last_iterate(net: nn.Module, test_set) -> None:
    x, y = test_set
    last = _correct(net, pgd(net, x, y, **KW, random_start=False, early_stop=False), y)
    early = _correct(net, pgd(net, x, y, **KW, random_start=False, early_stop=True), y)
    assert not (early & ~last).any()
    # clean mistakes are kept as they are: delta = 0 already fools the model
    wrong = ~_correct(net, x, y)
    x_adv = pgd(net, x, y, **KW, random_start=False, early_stop=True)
    assert torch.equal(x_adv[wrong], x[wrong])


@pytest.mark.parametrize("model_cls", [Constant, Detached])
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_constant_model_is_unaffected(test_set, model_cls: type[nn.Module], attack: str) -> None:
    x, y = test_set
    model = model_cls()
    threat = ThreatModel(eps=0.3, alpha=0.05, steps=5, random_start=True, restarts=2)
    x_adv = get_attack(attack)(model, x, y, threat)
    assert _acc(model, x_adv, y) == _acc(model, x, y)
    assert model.logits.grad is None


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_modes_restored_and_parameter_grads_untouched(net: nn.Module, test_set, attack: str) -> None:
    x, y = test_set
    threat = ThreatModel(eps=0.1, alpha=0.02, steps=3, random_start=False)
    in_eval = get_attack(attack)(net.eval(), x, y, threat)
    net.train()
    net[6].eval()  # a deliberately frozen Dropout stays frozen
    stats = net[1].running_mean.clone()
    layouts = {n: p.stride() for n, p in net.named_parameters()}
    x_adv = get_attack(attack)(net, x, y, threat)
    assert net.training and net[0].training and net[1].training and not net[6].training
    assert torch.equal(net[1].running_mean, stats)  # BatchNorm statistics not updated
    assert torch.equal(x_adv, in_eval)  # crafted in eval mode: no Dropout noise, running BN stats
    assert all(p.grad is None for p in net.parameters())
    assert {n: p.stride() for n, p in net.named_parameters()} == layouts  # channels_last undone


def test_labels_from_the_model(net: nn.Module, test_set) -> None:
    x, y = test_set
    with torch.no_grad():
        pred = net(x).argmax(dim=1)
    a = pgd(net, x, None, **KW, random_start=False, y_from_model=True)
    b = pgd(net, x, pred, **KW, random_start=False)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="y_from_model"):
        pgd(net, x, None, **KW)


def test_custom_loss_is_ascended(net: nn.Module, test_set) -> None:
    x, y = test_set
    target = torch.zeros_like(y)

    def toward_class_0(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(logits, target, reduction="sum")  # ascend = targeted descent

    x_adv = pgd(net, x, y, eps=0.3, alpha=0.05, steps=20, random_start=False, loss_fn=toward_class_0)
    with torch.no_grad():
        before = (net(x).argmax(dim=1) == 0).float().mean()
        after = (net(x_adv).argmax(dim=1) == 0).float().mean()
    assert after > before + 0.3


def test_bf16_matches_fp32_robust_accuracy(net: nn.Module, test_set) -> None:
    x, y = test_set
    acc32 = _acc(net, pgd(net, x, y, **KW, random_start=False, early_stop=True), y)
    acc16 = _acc(net, pgd(net, x, y, **KW, random_start=False, early_stop=True, precision="bf16"), y)
    assert abs(acc32 - acc16) <= 0.03
    x16 = pgd(net, x, y, **KW, random_start=False, precision="bf16")
    assert x16.dtype == torch.float32 and _linf(x16, x).max() <= 0.1 + 1e-6


def test_registered_pgd_uses_the_threat_model(net: nn.Module, test_set) -> None:
    x, y = test_set
    threat = ThreatModel(norm="l2", eps=0.5, alpha=0.1, steps=4, random_start=False)
    via_registry = get_attack("pgd")(net, x, y, threat)
    direct = pgd(net, x, y, norm="l2", eps=0.5, alpha=0.1, steps=4, random_start=False, early_stop=True)
    assert torch.equal(via_registry, direct)
    textbook = get_attack("pgd")(net, x, y, threat, early_stop=False)  # options override
    assert torch.equal(textbook, pgd(net, x, y, norm="l2", eps=0.5, alpha=0.1, steps=4, random_start=False))
    with pytest.raises(ConfigError, match="unknown option 'stepz'"):
        get_attack("pgd")(net, x, y, threat, stepz=3)


def test_bad_arguments_raise_config_errors(net: nn.Module, test_set) -> None:
    x, y = test_set
    with pytest.raises(ConfigError, match="norm"):
        pgd(net, x, y, **KW, norm="l1")
    with pytest.raises(ConfigError, match="restarts"):
        pgd(net, x, y, **KW, restarts=0)
    with pytest.raises(ConfigError, match="precision"):
        pgd(net, x, y, **KW, precision="fp8")
    with pytest.raises(ConfigError, match="eps"):
        fgsm(net, x, y, eps=-1.0)
    assert torch.equal(pgd(net, x, y, eps=0.0, alpha=0.1, steps=3), x)


def test_l2_random_start_fills_the_ball() -> None:
    x = torch.full((2000, 1, 4, 4), 0.5)
    start = random_start(x, norm="l2", eps=0.2, clamp=False)
    r = _l2(start, x)
    assert (r <= 0.2 + 1e-6).all()
    # uniform in a 16-d ball: P(r < 0.9 eps) = 0.9^16 = 0.185
    assert 0.14 < (r < 0.18).float().mean() < 0.23
    linf = random_start(x, norm="linf", eps=0.2, clamp=False)
    assert _linf(linf, x).max() <= 0.2 and (linf - x).abs().mean() == pytest.approx(0.1, abs=0.01)


def test_project_onto_ball_and_box() -> None:
    x = torch.tensor([[[[0.0, 0.5, 1.0]]]])
    far = torch.tensor([[[[-1.0, 0.9, 2.0]]]])
    assert torch.allclose(project(far, x, norm="linf", eps=0.1), torch.tensor([[[[0.0, 0.6, 1.0]]]]))
    p = project(far, x, norm="l2", eps=0.5, clamp=False)
    assert _l2(p, x).item() == pytest.approx(0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_where_the_inputs_are(net: nn.Module, device: str) -> None:
    x, y = _toy_data(64, seed=3)
    net = net.to(device)
    x, y = x.to(device), y.to(device)
    for name in ("fgsm", "pgd"):
        x_adv = get_attack(name)(net, x, y, ThreatModel(eps=0.1, alpha=0.02, steps=3, random_start=True))
        assert x_adv.device == x.device


@pytest.mark.slow
def test_bf16_matches_fp32_on_a_trained_cnn8() -> None:
    """The project's own model, briefly trained: PGD robust accuracy in fp32 vs bf16."""
    train, test, info = make_synthetic(num_train=1024, num_test=256, in_channels=1, image_size=(28, 28))
    model = create_model("cnn8", num_classes=info.num_classes, in_channels=1, image_size=(28, 28),
                                mean=info.mean, std=info.std)
    cfg = TrainConfig(epochs=2, lr=2e-3, optimizer="adam", weight_decay=0.0)
    train_(model, BatchLoader(train, 128, shuffle=True), cfg, threat=ThreatModel())
    x, y = test.images.float() / 255, test.labels
    model.eval()
    for early_stop in (False, True):
        kw = dict(eps=0.03, alpha=0.0075, steps=10, random_start=False, early_stop=early_stop)
        acc32 = _acc(model, pgd(model, x, y, **kw), y)
        acc16 = _acc(model, pgd(model, x, y, **kw, precision="bf16"), y)
        assert 0.3 < acc32 < _acc(model, x, y) - 0.1  # something left to attack, and attacked
        assert abs(acc32 - acc16) <= 0.02


def test_conv_layout_converts_ambiguous_weights_and_restores_storage() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 1), nn.Flatten())  # both shapes ambiguous
    before = {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    cl_strides = {n: torch.empty_like(p, memory_format=torch.channels_last).stride()
                  for n, p in model.named_parameters() if p.dim() == 4}
    with conv_layout(model):
        assert {n: p.stride() for n, p in model.named_parameters() if p.dim() == 4} == cl_strides
        with torch.no_grad():
            model[0].weight.add_(1.0)  # e.g. an optimizer step inside train_
    assert {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()} == before
    assert (model[0].weight > 0.5).all()  # the update survived the restore
    x = torch.rand(2, 1, 5, 5)
    assert fast_layout(x).stride() == torch.empty_like(x, memory_format=torch.channels_last).stride()
    assert torch.equal(fast_layout(x), x)
