"""APGD-CE: strength (beats a no-op and plain PGD), honesty (never beats a robust model), the
threat-model contract (ball, box, modes, no parameter gradients) and determinism."""

from __future__ import annotations

import importlib
from functools import partial

import pytest
import torch
from _toys import Constant as _Constant
from _toys import Detached as _Detached
from _toys import accuracy as _acc
from _toys import toy_data

from searchprune.attacks import pgd
from searchprune.attacks._base import get_attack
from searchprune.attacks.apgd import apgd, apgd_checkpoints
from searchprune.config import ThreatModel
from searchprune.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])




# perfectly robust models with class 2 on top; Detached has no path to the input at all
Constant = partial(_Constant, top=2)
Detached = partial(_Detached, top=2)


def test_checkpoints_match_the_paper() -> None:
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for steps in (1, 2, 5, 10, 37, 250):
        ws = apgd_checkpoints(steps)
        assert ws == sorted(set(ws)) and 1 <= ws[0] and ws[-1] <= steps


def test_step_size_halves_at_each_checkpoint_without_progress(monkeypatch) -> None:
    """On a flat loss no step increases it (condition 1) and the best loss never improves
    (condition 2), so eta = 2 eps is halved at every checkpoint and nowhere else."""
    # the package re-exports the function under the module's name: fetch the module itself
    apgd_module = importlib.import_module("searchprune.attacks.apgd")
    etas: list[float] = []
    ascent = apgd_module._ascent

    def spy(x_adv, grad, eta, norm):
        etas.append(float(eta[0]))
        return ascent(x_adv, grad, eta, norm)

    monkeypatch.setattr(apgd_module, "_ascent", spy)
    x, _ = toy_data(8, seed=0)
    model = Constant()
    y = torch.full((8,), 2)
    apgd(model, x, y, eps=0.1, steps=30)
    ckpts = apgd_checkpoints(30)
    expected, eta = [], 0.2
    for k in range(30):  # step k uses the step size set after iteration k (checkpoints count 1..)
        expected.append(eta)
        if k + 1 in ckpts:
            eta /= 2
    assert etas == pytest.approx(expected)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_beats_a_no_op(net, test_set, norm, eps) -> None:
    x, y = test_set
    clean = _acc(net, x, y)
    assert clean > 0.95
    assert _acc(net, apgd(net, x, y, eps=eps, norm=norm, steps=20), y) < clean - 0.3


@pytest.mark.parametrize("model_cls", [Constant, Detached], ids=["constant", "detached"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_never_beats_a_constant_model(model_cls, norm) -> None:
    model = model_cls()
    x, y = toy_data(64, seed=2)
    clean = _acc(model, x, y)
    assert 0 < clean < 1
    x_adv = apgd(model, x, y, eps=0.3, norm=norm, steps=10, restarts=2)
    assert _acc(model, x_adv, y) == clean
    assert torch.isfinite(x_adv).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("clamp", [True, False])
def test_perturbation_stays_in_the_ball(net, test_set, device, norm, eps, clamp) -> None:
    model = net.to(device)
    x, y = (t.to(device) for t in test_set)
    x_adv = apgd(model, x, y, eps=eps, norm=norm, steps=10, clamp=clamp)
    assert x_adv.shape == x.shape and x_adv.device == x.device and not x_adv.requires_grad
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    if clamp:
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    net.to("cpu")


def test_misclassified_inputs_are_returned_unchanged(net, test_set) -> None:
    x, y = test_set
    y_wrong = (y + 1) % 4
    x_adv = apgd(net, x, y_wrong, eps=0.1, steps=5)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.05, 0.0125), ("l2", 0.6, 0.15)])
def test_at_least_as_strong_as_pgd_with_the_same_steps(net, test_set, norm, eps, alpha) -> None:
    x, y = test_set
    steps = 20
    acc_pgd = _acc(net, pgd(net, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm), y)
    acc_apgd = _acc(net, apgd(net, x, y, eps=eps, norm=norm, steps=steps), y)
    assert acc_pgd < _acc(net, x, y)  # the comparison is not vacuous
    assert acc_apgd <= acc_pgd + 0.02


def test_restarts_never_weaken(net, test_set) -> None:
    x, y = test_set
    one = _acc(net, apgd(net, x, y, eps=0.05, steps=10, restarts=1), y)
    three = _acc(net, apgd(net, x, y, eps=0.05, steps=10, restarts=3), y)
    assert three <= one


def test_registered_with_the_threat_signature(net, test_set) -> None:
    x, y = test_set
    threat = ThreatModel(eps=0.1, alpha=0.01, steps=5)
    fn = get_attack("apgd")
    x_adv = fn(net, x, y, threat, steps=10, seed=1)
    assert torch.equal(x_adv, apgd(net, x, y, eps=0.1, steps=10, seed=1))
    with pytest.raises(ConfigError, match="stepz"):
        fn(net, x, y, threat, stepz=10)


def test_bad_arguments_raise() -> None:
    x, y = toy_data(4, seed=0)
    with pytest.raises(ConfigError):
        apgd(Constant(), x, y, eps=0.1, norm="l1")
    with pytest.raises(ConfigError):
        apgd(Constant(), x, y, eps=0.1, rho=1.5)
    with pytest.raises(ConfigError):
        apgd(Constant(), x, y, eps=-0.1)
