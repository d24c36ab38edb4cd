from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from searchprune.errors import ConfigError
from searchprune.search import Rule, parse_rule, select_trial


def test_parse_rule():
    r = parse_rule("max robust_acc where macs <= 5e6 and clean_acc >= 0.85")
    assert r == Rule("max", "robust_acc", (("macs", "<=", 5e6), ("clean_acc", ">=", 0.85)))
    assert parse_rule("min macs") == Rule("min", "macs", ())
    assert str(parse_rule("min macs where robust_acc > 0.7")) == "min macs where robust_acc > 0.7"


@pytest.mark.parametrize("bad", ["maximize robust_acc", "max", "max robust_acc where macs ~ 3",
                                 "max robust_acc where macs <= lots", "max robust_acc where"])
def test_bad_rules_are_named(bad):
    with pytest.raises(ConfigError, match="rule"):
        parse_rule(bad)


def _study():
    """Hand-made study: (clean, robust, macs) for 5 trials; trial 4 is dominated by trial 1."""
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    study.set_metric_names(["clean_acc", "robust_acc", "macs"])
    points = [(0.90, 0.10, 10e6), (0.85, 0.75, 6e6), (0.80, 0.78, 3e6), (0.70, 0.60, 1e6), (0.84, 0.70, 7e6)]
    for i, (c, r, m) in enumerate(points):
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(i)}, distributions={"x": FloatDistribution(0, 10)}, values=[c, r, m],
            user_attrs={"macs": int(m), "pgd_acc": r, "sparsity": 0.1 * i}))
    return study


def test_select_from_pareto_set():
    study = _study()
    assert select_trial(study, parse_rule("max robust_acc")).number == 2
    assert select_trial(study, parse_rule("max robust_acc where macs <= 2e6")).number == 3
    assert select_trial(study, parse_rule("max robust_acc where clean_acc >= 0.85")).number == 1
    assert select_trial(study, parse_rule("min macs where robust_acc >= 0.7")).number == 2
    assert select_trial(study, parse_rule("max sparsity")).number == 3  # trial 4 is dominated: never picked
    with pytest.raises(ConfigError, match="none of the 4 Pareto trials"):
        select_trial(study, parse_rule("max robust_acc where clean_acc >= 0.95"))
    with pytest.raises(ConfigError, match="unknown metric 'latency'"):
        select_trial(study, parse_rule("min latency"))
