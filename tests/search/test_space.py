from __future__ import annotations

import optuna
import pytest

from searchprune.config import StudyConfig, TrainConfig, TrialDefaults, build
from searchprune.errors import ConfigError
from searchprune.search import replay_params, suggest, suggest_params, trial_params_from_flat, validate_space

SPACE = {
    "prune.method": ["magnitude", "gap"],
    "prune.options.n_batches": {"low": 1, "high": 4, "when": {"prune.method": ["gap"]}},
    "prune.sparsity": {"low": 0.2, "high": 0.9},
    "prune.allocation": ["global", "per_layer"],
    "prune.layer_sparsity": {"low": 0.0, "high": 0.9, "per_layer": True, "when": {"prune.allocation": ["per_layer"]}},
    "finetune.recipe": ["none", "fast", "trades"],
    "finetune.trades_beta": {"low": 1.0, "high": 6.0, "when": {"finetune.recipe": ["trades"]}},
    "finetune.epochs": {"low": 1, "high": 3, "when": {"finetune.recipe": ["fast", "trades"]}},
    "quant.mode": "none",
}
LAYERS = ["features.0", "features.2", "fc.0"]


def _cfg():
    return build(StudyConfig, {"name": "s", "space": SPACE})


def test_conditional_parameters_exist_only_when_active():
    cfg = _cfg()
    study = optuna.create_study(directions=["maximize"] * 3, sampler=optuna.samplers.RandomSampler(seed=0))
    seen_gap = seen_mag = seen_pl = False
    for _ in range(40):
        trial = study.ask()
        flat = suggest(trial, cfg.space, layer_names=LAYERS)
        assert ("prune.options.n_batches" in flat) == (flat["prune.method"] == "gap")
        assert ("finetune.trades_beta" in flat) == (flat["finetune.recipe"] == "trades")
        assert ("finetune.epochs" in flat) == (flat["finetune.recipe"] != "none")
        per_layer = [k for k in flat if k.startswith("prune.layer_sparsity.")]
        assert bool(per_layer) == (flat["prune.allocation"] == "per_layer")
        if per_layer:
            assert sorted(k.removeprefix("prune.layer_sparsity.") for k in per_layer) == sorted(LAYERS)
            seen_pl = True
        assert flat["quant.mode"] == "none" and "quant.mode" not in trial.params  # pinned: not searched
        seen_gap |= flat["prune.method"] == "gap"
        seen_mag |= flat["prune.method"] == "magnitude"
        # every sampled set is a valid TrialParams, and replays to the same thing
        params = suggest_params(trial, cfg.space, cfg.defaults, seed=3, layer_names=LAYERS)
        assert replay_params(trial.params, cfg.space, cfg.defaults, seed=3, layer_names=LAYERS) == params
        if flat["finetune.recipe"] == "none":
            assert params.finetune is None
        study.tell(trial, [0.0, 0.0, 0.0])
    assert seen_gap and seen_mag and seen_pl


def test_when_must_reference_an_earlier_parameter():
    cfg = build(StudyConfig, {"name": "s", "space": {
        "finetune.epochs": {"low": 1, "high": 2, "when": {"finetune.recipe": ["fast"]}},
        "finetune.recipe": ["fast"],
    }})
    with pytest.raises(ConfigError, match="space.finetune.epochs.when"):
        validate_space(cfg.space)


def test_per_layer_without_layers_is_an_error():
    cfg = build(StudyConfig, {"name": "s", "space": {
        "prune.allocation": "per_layer", "prune.layer_sparsity": {"low": 0.0, "high": 0.5, "per_layer": True}}})
    with pytest.raises(ConfigError, match="per_layer needs the model's prunable layers"):
        suggest(optuna.trial.FixedTrial({}), cfg.space)


def test_tagged_parameters_give_each_method_its_own_choices():
    cfg = build(StudyConfig, {"name": "s", "space": {
        "prune.method": ["magnitude", "l1_filter"],
        "prune.granularity@scored": {"choices": ["weight", "kernel"], "when": {"prune.method": ["magnitude"]}},
        "prune.granularity@filter": {"value": "channel", "when": {"prune.method": ["l1_filter"]}},
        "prune.allocation@filter": {"choices": ["uniform", "global"], "when": {"prune.method": ["l1_filter"]}},
    }})
    p = suggest_params(optuna.trial.FixedTrial({"prune.method": "l1_filter", "prune.allocation@filter": "uniform"}),
                       cfg.space, cfg.defaults, seed=0)
    assert (p.prune.method, p.prune.granularity, p.prune.allocation) == ("l1_filter", "channel", "uniform")
    p = suggest_params(optuna.trial.FixedTrial({"prune.method": "magnitude", "prune.granularity@scored": "kernel"}),
                       cfg.space, cfg.defaults, seed=0)
    assert (p.prune.granularity, p.prune.allocation) == ("kernel", "global")
    with pytest.raises(ConfigError, match="tag after '@'"):
        build(StudyConfig, {"name": "s", "space": {"prune.granularity@": ["weight"]}})


def test_mixed_precision_bits_per_layer():
    cfg = build(StudyConfig, {"name": "s", "space": {
        "quant.mode": ["ptq"],
        "quant.layer_bits": {"choices": [4, 8], "per_layer": True, "when": {"quant.mode": ["ptq"]}},
    }})
    fixed = {"quant.mode": "ptq", "quant.layer_bits.features.0": 4, "quant.layer_bits.fc.0": 8}
    p = suggest_params(optuna.trial.FixedTrial(fixed), cfg.space, cfg.defaults, seed=0,
                       layer_names=["features.0", "fc.0"])
    assert p.quant.layer_bits == {"features.0": 4, "fc.0": 8}


def test_flat_params_merge_into_defaults():
    d = TrialDefaults()
    p = trial_params_from_flat(d, {"prune.sparsity": 0.8, "prune.options.n_batches": 3,
                                   "finetune.recipe": "fast", "quant.mode": "ptq"}, seed=7)
    assert p.prune.sparsity == 0.8 and p.prune.options == {"n_batches": 3}
    assert p.finetune == TrainConfig(recipe="fast") and p.quant.mode == "ptq" and p.seed == 7
    assert trial_params_from_flat(d, {"finetune.recipe": "none"}).finetune is None
    # layer names contain dots: only the prefix is split
    p = trial_params_from_flat(d, {"prune.allocation": "per_layer", "prune.layer_sparsity.features.0": 0.3,
                                   "prune.layer_sparsity.fc.1": 0.6})
    assert p.prune.layer_sparsity == {"features.0": 0.3, "fc.1": 0.6} and p.prune.sparsity is None
    with pytest.raises(ConfigError, match="prune.sparsity"):
        trial_params_from_flat(d, {"prune.sparsity": 1.5})
