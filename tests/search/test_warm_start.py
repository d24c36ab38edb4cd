"""study create --warm-start: the feasible Pareto set of an earlier study, what the new space can express.

The source study is written by hand (``add_trial``), so no model is trained.
"""

from __future__ import annotations

import optuna
import pytest
from _tiny import tiny_config, tiny_study_config, write_yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from searchprune.cli import main
from searchprune.config import ParamSpec
from searchprune.errors import ConfigError
from searchprune.search import create_study
from searchprune.search.warm_start import expressible

SPACE = {"prune.method": ParamSpec(choices=("magnitude", "gradient")),
         "prune.sparsity": ParamSpec(low=0.3, high=0.9),
         "prune.options.adversarial": ParamSpec(choices=(False, True), when={"prune.method": ("gradient",)}),
         "finetune.recipe": ParamSpec(choices=("none", "fast"))}


def test_expressible_names_the_first_misfit():
    ok = {"prune.method": "gradient", "prune.sparsity": 0.5, "prune.options.adversarial": True,
          "finetune.recipe": "fast"}
    assert expressible(ok, SPACE) == (True, "expressible")
    assert expressible({**ok, "prune.method": "magnitude", "prune.options.adversarial": True}, SPACE) == (
        False, "prune.options.adversarial = True is not a parameter of the new space")  # inactive there
    cases = [
        ({**ok, "prune.sparsity": 0.95}, "prune.sparsity = 0.95 is outside the new space's range [0.3, 0.9]"),
        ({**ok, "finetune.recipe": "pgd"}, "finetune.recipe = 'pgd' is outside the new space's choices"),
        ({k: v for k, v in ok.items() if k != "finetune.recipe"}, "asks for finetune.recipe"),
        ({**ok, "quant.mode": "ptq"}, "quant.mode = 'ptq' is not a parameter of the new space"),
        ({**ok, "prune.options.adversarial": 1}, "adversarial = 1 is outside"),  # a bool choice is not an int
    ]
    for params, reason in cases:
        good, why = expressible(params, SPACE)
        assert not good and reason in why, why
    per_layer = {"prune.layer_sparsity": ParamSpec(low=0.0, high=0.5, per_layer=True)}
    assert expressible({"prune.layer_sparsity.conv1": 0.2, "prune.layer_sparsity.fc": 0.4}, per_layer)[0]
    assert "layer_sparsity.fc = 0.7" in expressible({"prune.layer_sparsity.fc": 0.7}, per_layer)[1]


def _source(url: str) -> None:
    study = optuna.create_study(study_name="old", storage=url, directions=["maximize", "maximize", "minimize"])
    dist = {"prune.sparsity": FloatDistribution(0.1, 0.99), "finetune.recipe": CategoricalDistribution(
        ["none", "fast", "pgd"])}
    rows = [  # (sparsity, recipe, values, feasible)
        (0.5, "fast", [0.9, 0.4, 50.0], True),     # 0 Pareto, expressible
        (0.95, "fast", [0.6, 0.3, 10.0], True),    # 1 Pareto, sparsity outside the new range
        (0.7, "pgd", [0.8, 0.5, 30.0], True),      # 2 Pareto, recipe not offered any more
        (0.6, "none", [0.7, 0.2, 60.0], True),     # 3 dominated by 0
        (0.8, "none", [0.85, 0.45, 20.0], True),   # 4 Pareto, expressible
        (0.4, "fast", [0.99, 0.9, 1.0], False),    # 5 would dominate everything, but infeasible
    ]
    for sparsity, recipe, values, feasible in rows:
        study.add_trial(optuna.trial.create_trial(
            params={"prune.sparsity": sparsity, "finetune.recipe": recipe}, distributions=dist, values=values,
            user_attrs={"feasible": feasible}, system_attrs={"constraints": [0.0 if feasible else 1.0]}))


def test_create_enqueues_the_expressible_pareto_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _source(url)
    cfg = tiny_study_config(tmp_path, tmp_path / "base.pt", name="new", baselines=["dense"],
                            space={"prune.sparsity": {"low": 0.0, "high": 0.9}, "finetune.recipe": ["none", "fast"]})
    study = create_study(cfg, storage=url, warm_start="old")
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{"baseline": True}, {"warm_start": "old#0"}, {"warm_start": "old#4"}]
    assert [waiting[1].system_attrs["fixed_params"], waiting[2].system_attrs["fixed_params"]] == [
        {"prune.sparsity": 0.5, "finetune.recipe": "fast"}, {"prune.sparsity": 0.8, "finetune.recipe": "none"}]
    warm = study.user_attrs["warm_start"]
    assert warm["enqueued"] == [0, 4] and set(warm["skipped"]) == {"1", "2"}
    assert "prune.sparsity = 0.95" in warm["skipped"]["1"] and "'pgd'" in warm["skipped"]["2"]
    with pytest.raises(ConfigError, match="no study named 'nope'"):
        create_study(cfg, storage=url, name="other", warm_start="nope")


def test_cli_reports_what_was_skipped(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _source(url)
    cfg = tiny_config(tmp_path, tmp_path / "base.pt", name="new2",
                      space={"prune.sparsity": {"low": 0.0, "high": 0.9}, "finetune.recipe": ["none", "fast"]})
    path = write_yaml(tmp_path / "new.yaml", cfg)
    assert main(["study", "create", "--config", str(path), "--storage", url, "--warm-start", "old"]) == 0
    out = capsys.readouterr().out
    assert "warm start from 'old': 2 Pareto trial(s) enqueued (#0, #4), 2 skipped" in out
    assert "skipped #1: prune.sparsity = 0.95 is outside the new space's range [0.0, 0.9]" in out
