"""The sampler registry's contract: every registered sampler builds, is seeded, and runs a conditional space."""

from __future__ import annotations

import optuna
import pytest

from searchprune.config import SamplerConfig, StudyConfig, build
from searchprune.errors import ConfigError
from searchprune.search import list_samplers, make_sampler, suggest

SPACE = build(StudyConfig, {"name": "s", "space": {
    "prune.method": ["magnitude", "gap"],
    "prune.options.n_batches": {"low": 1, "high": 4, "when": {"prune.method": ["gap"]}},
    "prune.sparsity": {"low": 0.2, "high": 0.9},
}}).space


def test_the_registry_lists_what_the_config_accepts():
    assert list_samplers() == ["gp", "nsga2", "nsga3", "random", "tpe"]
    for name in list_samplers():
        assert SamplerConfig(name=name).name == name


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_is_seeded_and_walks_a_conditional_space(name):
    def run() -> list[dict]:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed=3))
        out = []
        for _ in range(3):
            trial = study.ask()
            flat = suggest(trial, SPACE)
            assert ("prune.options.n_batches" in flat) == (flat["prune.method"] == "gap")
            study.tell(trial, [flat["prune.sparsity"], -flat["prune.sparsity"]])
            out.append(flat)
        return out

    assert isinstance(make_sampler(name, seed=0), optuna.samplers.BaseSampler)
    assert run() == run()


def test_unknown_sampler_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown sampler 'cmaes'; expected one of: gp, nsga2, nsga3, random, tpe"):
        make_sampler("cmaes", seed=0)
