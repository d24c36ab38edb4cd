"""Square Attack: strength without gradients, honesty on robust models, the L-inf ball, no
backward pass ever, querying only examples still classified correctly, determinism."""

from __future__ import annotations

import pytest
import torch
from _toys import Constant, toy_data
from _toys import accuracy as _acc
from torch import nn

from searchprune.attacks._base import get_attack
from searchprune.attacks.square import square, square_p_schedule
from searchprune.config import ThreatModel
from searchprune.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])




class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return t.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise AssertionError("the Square Attack ran a backward pass")


class Guarded(nn.Module):
    """Wraps a model: raises on any backward, records grad mode and how many images each call saw."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.grad_enabled: list[bool] = []
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        self.batch_sizes.append(len(x))
        return _NoBackward.apply(self.inner(x))


def test_p_schedule_follows_the_paper() -> None:
    assert square_p_schedule(0.8, 10, 10_000) == 0.8
    assert square_p_schedule(0.8, 11, 10_000) == 0.4
    assert square_p_schedule(0.8, 500, 10_000) == 0.1
    assert square_p_schedule(0.8, 9_000, 10_000) == 0.8 / 512
    # rescaled: the same fraction of the budget gives the same p
    assert square_p_schedule(0.8, 30, 1_000) == square_p_schedule(0.8, 300, 10_000) == 0.1


def test_beats_a_no_op_without_gradients(net, test_set) -> None:
    x, y = test_set
    clean = _acc(net, x, y)
    assert clean > 0.95
    guarded = Guarded(net)
    x_adv = square(guarded, x, y, eps=0.1, queries=200)
    assert _acc(net, x_adv, y) < clean - 0.3
    assert not any(guarded.grad_enabled)


def test_never_calls_backward(net, test_set) -> None:
    x, y = test_set
    x_adv = square(Guarded(net), x, y, eps=0.1, queries=20)
    # the guard works: a backward through it does raise
    out = Guarded(net)(x_adv.requires_grad_(True)).sum()
    with pytest.raises(AssertionError, match="backward"):
        out.backward()


def test_never_beats_a_constant_model() -> None:
    model = Constant(top=2)
    x, y = toy_data(64, seed=2)
    clean = _acc(model, x, y)
    assert 0 < clean < 1
    assert _acc(model, square(model, x, y, eps=0.3, queries=50), y) == clean


def test_queries_only_examples_still_correct() -> None:
    x, y = toy_data(32, seed=3)
    robust = Guarded(Constant(top=2))
    y_right = torch.full_like(y, 2)
    square(robust, x, y_right, eps=0.1, queries=25)
    # clean check + initialisation + 24 random-search steps, every example every time
    assert robust.batch_sizes == [32] * 26

    wrong = Guarded(Constant(top=2))
    square(wrong, x, (y_right + 1) % 4, eps=0.1, queries=25)
    assert wrong.batch_sizes == [32]  # misclassified already: only the clean check

    half = Guarded(Constant(top=2))
    y_half = torch.where(torch.arange(32) < 8, y_right, (y_right + 1) % 4)
    square(half, x, y_half, eps=0.1, queries=5)
    assert half.batch_sizes == [32] + [8] * 5


def test_fooled_examples_stop_being_queried(net, test_set) -> None:
    x, y = test_set
    guarded = Guarded(net)
    square(guarded, x, y, eps=0.1, queries=100)
    sizes = guarded.batch_sizes[1:]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clamp", [True, False])
def test_perturbation_stays_in_the_ball(net, test_set, device, clamp) -> None:
    model = net.to(device)
    x, y = (t.to(device) for t in test_set)
    eps = 0.07
    x_adv = square(model, x, y, eps=eps, queries=50, clamp=clamp)
    assert x_adv.shape == x.shape and x_adv.device == x.device and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    if clamp:
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    net.to("cpu")


def test_misclassified_inputs_are_returned_unchanged(net, test_set) -> None:
    x, y = test_set
    assert torch.equal(square(net, x, (y + 1) % 4, eps=0.1, queries=10), x)


def test_registered_with_the_threat_signature(net, test_set) -> None:
    x, y = test_set
    fn = get_attack("square")
    threat = ThreatModel(eps=0.1, alpha=0.01, steps=5)
    expected = square(net, x, y, eps=0.1, queries=20, seed=2)
    assert torch.equal(fn(net, x, y, threat, queries=20, seed=2), expected)
    with pytest.raises(ConfigError, match="L-inf"):
        fn(net, x, y, ThreatModel(norm="l2", eps=0.5, alpha=0.1, steps=5))
    with pytest.raises(ConfigError, match="querys"):
        fn(net, x, y, threat, querys=20)
