"""validate_study at `study create`: an impossible space fails there with one ConfigError line."""

from __future__ import annotations

import optuna
import pytest

from searchprune.config import StudyConfig, build
from searchprune.errors import ConfigError
from searchprune.search import combinations, create_study, validate_study


def _cfg(space, **kw):
    return build(StudyConfig, {"name": "v", "space": space, **kw})


def test_combinations_follow_when_and_stand_ranges_at_low():
    space = _cfg({
        "prune.method": ["magnitude", "gap"],
        "prune.options.n_batches": {"low": 2, "high": 4, "when": {"prune.method": ["gap"]}},
        "prune.allocation": ["global", "per_layer"],
        "prune.layer_sparsity": {"low": 0.1, "high": 0.9, "per_layer": True,
                                 "when": {"prune.allocation": ["per_layer"]}},
        "finetune.recipe": ["none", "fast"],
    }).space
    combos = list(combinations(space, keep=lambda name: name.startswith("prune.")))
    assert len(combos) == 4  # method x allocation; finetune.recipe is not a prune parameter
    for c in combos:
        assert ("prune.options.n_batches" in c) == (c["prune.method"] == "gap")
        assert ("prune.layer_sparsity.*" in c) == (c["prune.allocation"] == "per_layer")
        assert c.get("prune.options.n_batches", 2) == 2 and "finetune.recipe" not in c
    assert len(list(combinations(space))) == 8


@pytest.mark.parametrize(("space", "message"), [
    # hydra learns weight scores: a channel granularity is impossible
    ({"prune.method": ["magnitude", "hydra"], "prune.granularity": ["weight", "channel"]},
     r"prune.method='hydra', prune.granularity='channel' is impossible: prune.granularity: method 'hydra'"),
    # in_train learns its masks: only the learned allocation
    ({"prune.method": ["in_train"]}, r"prune.allocation: method 'in_train' does not support 'global'"),
    # an option of gap given to every method
    ({"prune.method": ["gap", "magnitude"], "prune.options.n_batches": {"low": 1, "high": 3}},
     r"prune.method='magnitude'.*prune.options.n_batches"),
])
def test_impossible_space_fails_at_create_with_one_line(tmp_path, space, message):
    cfg = _cfg(space, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=message) as e:
        validate_study(cfg)
    assert "\n" not in str(e.value)
    storage = f"sqlite:///{tmp_path / 'v.db'}"
    with pytest.raises(ConfigError, match=message):
        create_study(cfg, storage=storage)
    assert optuna.get_all_study_names(storage) == []  # nothing stored


def test_conditional_options_and_method_allocations_pass():
    cfg = _cfg({
        "prune.method": ["magnitude", "gap", "in_train"],
        "prune.allocation@learned": {"value": "learned", "when": {"prune.method": ["in_train"]}},
        "prune.allocation": {"choices": ["global", "mrs"], "when": {"prune.method": ["magnitude", "gap"]}},
        "prune.options.n_batches": {"low": 1, "high": 3, "when": {"prune.method": ["gap"]}},
        "prune.options.r_max": {"low": 0.5, "high": 0.9, "when": {"prune.allocation": ["mrs"]}},
    })
    assert validate_study(cfg) == []  # no baselines asked for


def test_unknown_sampler_is_refused():
    with pytest.raises(ConfigError, match="sampler.name: unknown value 'cmaes'; expected one of: gp, nsga2"):
        validate_study(_cfg({}, sampler={"name": "cmaes"}))
