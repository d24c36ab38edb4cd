"""The baseline table's contract: each row is a valid pruning config and maps onto a space that searches it."""

from __future__ import annotations

import pytest

from searchprune.config import StudyConfig, build
from searchprune.errors import ConfigError
from searchprune.prune import check_config
from searchprune.search import BASELINES, baseline_trials, list_baselines, trial_params_from_flat


@pytest.mark.parametrize("name", list_baselines())
def test_every_baseline_is_a_config_prune_accepts(name):
    b = BASELINES.get(name)
    params = trial_params_from_flat(build(StudyConfig, {"name": "s"}).defaults, b.values(0.5))
    check_config(params.prune)
    assert params.quant.mode == "none"
    assert (params.finetune is None) == (b.recipe == "none")


def _space_for_all() -> dict:
    rows = [BASELINES.get(n) for n in list_baselines()]
    return {
        "prune.method": sorted({r.method for r in rows if r.method} | {"magnitude"}),
        "prune.granularity": ["weight", "channel"],
        "prune.allocation": sorted({r.allocation for r in rows if r.allocation} | {"global"}),
        "prune.sparsity": {"low": 0.2, "high": 0.8},
        "finetune.recipe": sorted({r.recipe for r in rows if r.recipe} | {"fast"}),
        "quant.mode": ["none", "ptq"],
    }


@pytest.mark.parametrize("name", list_baselines())
def test_every_baseline_enqueues_its_values(name):
    cfg = build(StudyConfig, {"name": "s", "space": _space_for_all(), "baselines": [name],
                              "defaults": {"finetune": {"recipe": "fast"}}})
    trials = baseline_trials(cfg)
    b = BASELINES.get(name)
    assert len(trials) == (1 if b.sparsity is not None else 2)  # a fixed sparsity, or the range's quartiles
    for t in trials:
        assert t["finetune.recipe"] == ("fast" if b.study_finetune else b.recipe) and t["quant.mode"] == "none"
        assert t["prune.method"] == (b.method or b.pins["prune.method"])
    if b.sparsity is None:
        assert [t["prune.sparsity"] for t in trials] == [0.35, 0.65]


def test_a_value_the_space_does_not_allow_is_refused():
    space = {**_space_for_all(), "finetune.recipe": ["none", "standard"]}
    with pytest.raises(ConfigError, match="'hydra' sets finetune.recipe='trades'"):
        baseline_trials(build(StudyConfig, {"name": "s", "space": space, "baselines": ["hydra"]}))


def test_dense_aft_is_the_dense_model_with_the_default_adversarial_recipe():
    space = {**_space_for_all(), "finetune.epochs": {"low": 1, "high": 3}, "finetune.lr": {"low": 0.001, "high": 0.1}}
    defaults = {"finetune": {"recipe": "fast", "epochs": 2, "lr": 0.02}}
    (t,) = baseline_trials(build(StudyConfig, {"name": "s", "space": space, "baselines": ["dense_aft"],
                                               "defaults": defaults}))
    assert t["prune.sparsity"] == 0.0 and t["prune.method"] == "magnitude"
    assert (t["finetune.recipe"], t["finetune.epochs"], t["finetune.lr"]) == ("fast", 2, 0.02)
    params = trial_params_from_flat(build(StudyConfig, {"name": "s", "defaults": defaults}).defaults, t)
    assert params.finetune is not None and params.finetune.recipe == "fast" and params.prune.sparsity == 0.0
    with pytest.raises(ConfigError, match="dense_aft.*adversarial.*'standard'"):
        baseline_trials(build(StudyConfig, {"name": "s", "space": space, "baselines": ["dense_aft"],
                                             "defaults": {"finetune": {"recipe": "standard"}}}))
