"""The contract every registered attack keeps, parametrized over the registry itself: a new attack
is checked the day it is registered. Adversarial inputs keep shape and dtype, stay in the threat
model's eps-ball and in [0, 1], the model's modes (a deliberately frozen BatchNorm included) are
restored, no parameter gradient is left behind, and a misspelt option names the attack."""

from __future__ import annotations

import copy

import pytest

from searchprune.attacks import get_attack, list_attacks
from searchprune.config import ThreatModel
from searchprune.errors import ConfigError

THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=3)
# budgets that keep an attack with an expensive default to a fraction of a second on the 8x8 toys;
# an attack without an entry runs with its own defaults
CHEAP: dict[str, dict[str, int]] = {"apgd": {"steps": 5}, "square": {"queries": 10}}


def test_cheap_budgets_name_registered_attacks() -> None:
    assert set(CHEAP) <= set(list_attacks())
    assert {"fgsm", "pgd", "apgd", "square"} <= set(list_attacks())


@pytest.mark.parametrize("name", list_attacks())
def test_stays_in_the_ball_and_the_image_range(name: str, net, test_set) -> None:
    x, y = test_set[0][:32], test_set[1][:32]
    x_adv = get_attack(name)(net, x, y, THREAT, **CHEAP.get(name, {}))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert float((x_adv - x).abs().max()) <= THREAT.eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert not x_adv.requires_grad


@pytest.mark.parametrize("name", list_attacks())
def test_restores_modes_and_leaves_no_parameter_grads(name: str, net, test_set) -> None:
    model = copy.deepcopy(net).train()
    model[1].eval()  # a deliberately frozen BatchNorm must stay frozen
    x, y = test_set[0][:16], test_set[1][:16]
    get_attack(name)(model, x, y, THREAT, **CHEAP.get(name, {}))
    assert model.training and model[0].training and not model[1].training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", list_attacks())
def test_unknown_option_names_the_attack(name: str, net, test_set) -> None:
    x, y = test_set[0][:4], test_set[1][:4]
    with pytest.raises(ConfigError, match=f"attack {name!r}: unknown option 'stepz'"):
        get_attack(name)(net, x, y, THREAT, stepz=3)
