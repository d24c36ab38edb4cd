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
        "finetune.recipe": sorted({r.recipe for r in rows}),
        "quant.mode": ["none", "ptq"],
    }


@pytest.mark.parametrize("name", list_baselines())
def test_every_baseline_enqueues_its_values(name):
    cfg = build(StudyConfig, {"name": "s", "space": _space_for_all(), "baselines": [name]})
    trials = baseline_trials(cfg)
    b = BASELINES.get(name)
    assert len(trials) == (1 if b.sparsity is not None else 2)  # a fixed sparsity, or the range's quartiles
    for t in trials:
        assert t["finetune.recipe"] == b.recipe and t["quant.mode"] == "none"
        assert t["prune.method"] == (b.method or b.pins["prune.method"])
    if b.sparsity is None:
        assert [t["prune.sparsity"] for t in trials] == [0.35, 0.65]


def test_a_value_the_space_does_not_allow_is_refused():
    space = {**_space_for_all(), "finetune.recipe": ["none", "standard"]}
    with pytest.raises(ConfigError, match="'hydra' sets finetune.recipe='trades'"):
        baseline_trials(build(StudyConfig, {"name": "s", "space": space, "baselines": ["hydra"]}))
