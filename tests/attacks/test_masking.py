"""Gradient-masking checks: every flag fires on a deliberately masked model (hard input rounding
in front of a trained net: zero input gradients everywhere) and none fires on an honest one."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _toys import toy_data, toy_net
from torch import nn

from searchprune.attacks import get_attack
from searchprune.attacks._base import predict
from searchprune.attacks.masking import (
    FLAG_NAMES,
    CheckBudget,
    MaskingReport,
    MaskingThresholds,
    masking_checks,
    masking_flags,
    zero_grad_fraction,
)
from searchprune.config import ThreatModel
from searchprune.errors import ConfigError

THREAT = ThreatModel(eps=0.1, alpha=0.025, steps=10)
FAST = CheckBudget(apgd_steps=20, square_queries=100)  # enough on 8x8 toys; the defaults are for real models
FAST64 = CheckBudget(n_images=64, apgd_steps=20, square_queries=100)


_toy_data = toy_data


def _toy_net(seed: int, classes: int = 4) -> nn.Module:
    return toy_net(seed, classes, dropout=None)


class HardRound(nn.Module):
    """Rounds inputs to ``levels`` grey levels: piecewise constant, so every input gradient is 0
    (what a quantized input layer without a straight-through estimator does)."""

    def __init__(self, levels: int = 16) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Module, nn.Module]:
    """The trained net and an independently trained one (a transfer source for the honest model)."""
    return _toy_net(0), _toy_net(7)


@pytest.fixture(scope="module")
def loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _toy_data(128, seed=1)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 128, 64)]


def test_silent_on_an_honest_model(nets, loader) -> None:
    net, other = nets
    report = masking_checks(net, loader, THREAT, source=other, budget=FAST)
    assert report.fired == [], report
    assert not report.suspicious
    assert report.n_images == 128 and report.clean_acc > 0.95
    assert report.pgd_subset_acc < report.clean_acc - 0.3  # PGD works on it: nothing to hide
    assert report.zero_grad_frac == 0.0
    assert report.transfer_acc is not None and report.transfer_acc >= report.pgd_acc
    assert report.worst_acc <= min(report.pgd_subset_acc, report.strong_acc, report.transfer_acc)


def test_fires_on_a_gradient_masked_model(nets, loader) -> None:
    net, _ = nets
    masked = nn.Sequential(HardRound(), net)
    report = masking_checks(masked, loader, THREAT, source=net, budget=FAST)
    assert report.clean_acc > 0.95
    assert report.pgd_subset_acc == report.clean_acc  # PGD cannot move: the lie the checks catch
    assert report.zero_grad_frac == 1.0 and report.zero_grad_frac_margin == 1.0
    assert report.flags["zero_grad"]
    assert report.flags["strong_gap"]  # Square needs no gradient
    assert report.square_acc is not None and report.square_acc < report.pgd_acc - 0.2
    assert report.flags["transfer_above_whitebox"]  # the dense net's PGD examples still fool it
    assert report.transfer_acc is not None and report.transfer_acc < report.pgd_acc - 0.2
    assert report.worst_acc < 0.5 * report.pgd_acc  # the honest number is far below PGD's
    assert report.suspicious


def test_steps_not_converged_fires_when_pgd_is_too_short(nets, loader) -> None:
    net, _ = nets
    short = ThreatModel(eps=0.1, alpha=0.01, steps=2)  # can travel only 0.02 of the 0.1 budget
    report = masking_checks(net, loader, short, budget=FAST)
    assert report.flags["steps_not_converged"]
    assert report.pgd_subset_acc - report.pgd_more_acc > 0.03
    assert report.flags["strong_gap"]  # APGD sets its own step size: the short PGD is exposed twice
    assert not report.flags["steps_non_monotone"]


def test_flag_logic_and_directions() -> None:
    base = dict(zero_grad_frac=0.0, pgd_acc=0.50, pgd_more_acc=0.50)
    assert not any(masking_flags(**base).values())
    assert masking_flags(**{**base, "zero_grad_frac": 0.2})["zero_grad"]
    assert masking_flags(**base, strong_acc=0.40)["strong_gap"]
    assert not masking_flags(**base, strong_acc=0.47)["strong_gap"]
    # transfer accuracy BELOW white-box accuracy is the masking signature; above it is normal
    assert masking_flags(**base, transfer_acc=0.30)["transfer_above_whitebox"]
    assert not masking_flags(**base, transfer_acc=0.90)["transfer_above_whitebox"]
    # more steps must not raise accuracy (non-monotone) nor lower it a lot (not converged)
    up = masking_flags(zero_grad_frac=0.0, pgd_acc=0.50, pgd_more_acc=0.53)
    down = masking_flags(zero_grad_frac=0.0, pgd_acc=0.50, pgd_more_acc=0.40)
    assert up["steps_non_monotone"] and not up["steps_not_converged"]
    assert down["steps_not_converged"] and not down["steps_non_monotone"]
    assert not masking_flags(zero_grad_frac=0.0, pgd_acc=0.50, pgd_more_acc=0.495)["steps_non_monotone"]
    # each comparison can have its own white-box reference
    flags = masking_flags(**base, strong_acc=0.40, strong_ref_acc=0.42)
    assert not flags["strong_gap"]
    assert set(masking_flags(**base)) == set(FLAG_NAMES)


def test_passed_values_are_used_and_compared_as_given(nets, loader) -> None:
    net, _ = nets
    report = masking_checks(net, loader, THREAT, pgd_acc=0.9, strong_acc=0.2, transfer_acc=0.95)
    assert report.apgd_acc is None and report.square_acc is None  # nothing strong ran here
    assert report.strong_acc == 0.2 and report.transfer_acc == 0.95 and report.pgd_acc == 0.9
    assert report.flags["strong_gap"]  # 0.9 - 0.2, both passed in
    assert not report.flags["transfer_above_whitebox"]


def test_measured_values_are_paired_with_pgd_measured_here(nets, loader) -> None:
    net, _ = nets
    # a passed-in PGD number from elsewhere (say, more images) is not compared with the APGD
    # measured here: the strong check uses PGD on the same images
    report = masking_checks(net, loader, THREAT, pgd_acc=0.99, budget=FAST)
    assert report.pgd_acc == 0.99
    assert not report.flags["strong_gap"]


def test_l2_threat_runs_without_square(nets, loader) -> None:
    net, _ = nets
    report = masking_checks(net, loader, ThreatModel(norm="l2", eps=0.8, alpha=0.2, steps=10), budget=FAST)
    assert report.square_acc is None and report.apgd_acc is not None
    assert report.strong_acc == report.apgd_acc


def test_user_attrs_are_flat_and_json_safe(nets, loader) -> None:
    net, _ = nets
    report = masking_checks(net, loader, THREAT, budget=FAST64)
    attrs = report.as_user_attrs()
    json.dumps(attrs)
    assert all(type(v) in (bool, int, float) or v is None for v in attrs.values())
    assert attrs["mask.n_images"] == 64 and attrs["mask.transfer_acc"] is None
    assert {f"mask.flag.{n}" for n in FLAG_NAMES} <= set(attrs)
    assert attrs["mask.suspicious"] is report.suspicious
    assert isinstance(report, MaskingReport)
    with pytest.raises(AttributeError):
        report.clean_acc = 0.0  # type: ignore[misc]


def test_reproducible_and_leaves_the_model_alone(nets, loader) -> None:
    net, _ = nets
    model = copy.deepcopy(net).train()
    a = masking_checks(model, loader, THREAT, budget=FAST64)
    b = masking_checks(model, loader, THREAT, budget=FAST64)
    assert a == b
    assert model.training and all(p.grad is None for p in model.parameters())


def test_zero_grad_fraction_tells_flat_nets_from_saturated_softmax(nets) -> None:
    net, _ = nets
    x, y = _toy_data(16, seed=4)
    assert not zero_grad_fraction(net, x, y).any()
    assert zero_grad_fraction(nn.Sequential(HardRound(), net), x, y, loss="margin").all()
    saturated = nn.Sequential(net, nn.Linear(4, 4))
    with torch.no_grad():
        saturated[1].weight.copy_(torch.eye(4) * 1e4)  # logits far apart: softmax is exactly one-hot
        saturated[1].bias.zero_()
    ok = net(x).argmax(1) == y
    assert zero_grad_fraction(saturated, x, y, loss="ce")[ok].all()
    assert not zero_grad_fraction(saturated, x, y, loss="margin").any()


def test_bad_arguments_raise(nets, loader) -> None:
    net, _ = nets
    with pytest.raises(ConfigError, match="n_images"):
        masking_checks(net, loader, THREAT, budget=CheckBudget(n_images=0))
    with pytest.raises(ConfigError, match="more_steps_factor"):
        masking_checks(net, loader, THREAT, budget=CheckBudget(more_steps_factor=1))
    with pytest.raises(ConfigError):
        masking_checks(net, [], THREAT)


def test_thresholds_live_in_one_dataclass_and_reach_the_flags_and_report(nets, loader) -> None:
    base = dict(zero_grad_frac=0.0, pgd_acc=0.50, pgd_more_acc=0.50, strong_acc=0.40)
    assert masking_flags(**base)["strong_gap"]  # default margin 0.05 < 0.10
    assert not masking_flags(**base, thresholds=MaskingThresholds(strong_gap_margin=0.2))["strong_gap"]
    net, _ = nets
    thr = MaskingThresholds(monotone_tol=0.5, converge_margin=0.5)
    report = masking_checks(net, loader, THREAT, pgd_acc=0.9, strong_acc=0.2, transfer_acc=0.95, thresholds=thr)
    assert report.thresholds == MaskingThresholds(monotone_tol=0.5, converge_margin=0.5).as_dict()
    assert report.thresholds["monotone_tol"] == 0.5 and set(report.thresholds) == {
        "grad_tol", "zero_grad_max_frac", "strong_gap_margin", "scaled_gap_margin", "transfer_margin", "monotone_tol",
        "converge_margin"}
    with pytest.raises(AttributeError):
        thr.monotone_tol = 0.0  # type: ignore[misc]


class Saturating(nn.Module):
    """Logits multiplied by ``temperature``: the same predictions, but the softmax saturates, so the
    cross-entropy input gradient of confidently classified inputs underflows to exactly zero in fp32
    and PGD stands still on those (a partial hiding: inputs near the boundary keep their gradient)."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net, self.temperature = net, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.temperature


def test_partially_hidden_gradients_that_overstate_pgd_are_flagged(nets, loader) -> None:
    net, _ = nets
    threat = ThreatModel(eps=0.1, alpha=0.025, steps=20)  # the PGD-20 a study would run
    hiding = Saturating(net, 5.0).eval()
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    zero = zero_grad_fraction(hiding, x, y)
    assert 0 < float(zero.float().mean()) < 1  # partial: some inputs keep their gradient
    pgd = get_attack("pgd")
    torch.manual_seed(0)
    honest = float((predict(net, pgd(net, x, y, threat)) == y).float().mean())
    torch.manual_seed(0)
    shown = float((predict(hiding, pgd(hiding, x, y, threat)) == y).float().mean())
    assert shown - honest > 0.05  # PGD-20 overstates robustness by more than 5 points
    report = masking_checks(hiding, loader, threat, budget=CheckBudget(apgd_steps=10, square_queries=20),
                            thresholds=MaskingThresholds(scaled_gap_margin=0.03))
    assert report.suspicious
    assert "scaled_gap" in report.fired  # the logit-scaled PGD sees through the saturation
    assert report.scaled_acc is not None and report.scaled_acc <= honest + 0.05
