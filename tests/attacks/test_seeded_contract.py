"""The contract every seeded attack keeps (APGD, Square): the same seed gives the same result,
another seed another one, the global RNG is untouched, the model's modes (a deliberately frozen
BatchNorm included) are restored, and no parameter gradient is left behind."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
from _toys import toy_net

from searchprune.attacks.apgd import apgd
from searchprune.attacks.square import square

# attack -> (call with a budget small enough for seconds, the budget used by the determinism test)
ATTACKS: dict[str, tuple[Callable[..., torch.Tensor], dict, dict]] = {
    "apgd": (apgd, {"steps": 5}, {"steps": 10}),
    "square": (square, {"queries": 5}, {"queries": 30}),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic_by_seed(name, net, test_set) -> None:
    fn, _, budget = ATTACKS[name]
    attack = partial(fn, net, *test_set, eps=0.05, **budget)
    a, b, c = attack(seed=3), attack(seed=3), attack(seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ATTACKS)
def test_global_rng_untouched(name, net, test_set) -> None:
    fn, small, _ = ATTACKS[name]
    state = torch.get_rng_state()
    fn(net, *test_set, eps=0.05, **small)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", ATTACKS)
def test_modes_restored_and_no_parameter_grads(name, test_set) -> None:
    fn, small, _ = ATTACKS[name]
    model = toy_net(0).train()
    model[1].eval()  # a deliberately frozen BatchNorm must stay frozen
    fn(model, *test_set, eps=0.05, **small)
    assert model.training and model[0].training and not model[1].training
    assert all(p.grad is None for p in model.parameters())
