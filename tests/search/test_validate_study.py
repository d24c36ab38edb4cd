"""validate_study at `study create`: an impossible space fails there with one ConfigError line."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from searchprune.config import StudyConfig, build, load_study_config
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


# ---- everything decidable at `study create` is refused there, and nothing is stored -------------------


def _tiny(tmp_path, **kw):
    """A synthetic-data study whose base model a recipe would train (so only ``kw`` can be wrong)."""
    return {"name": "v", "output_dir": str(tmp_path / "runs"),
            "data": {"dataset": "synthetic", "train_size": 64, "val_size": 64, "test_size": 32},
            "model": {"arch": "mnist_small", "checkpoint": str(tmp_path / "base.pt"),
                      "train": {"recipe": "standard", "epochs": 1}}, **kw}


def _refused_and_nothing_stored(tmp_path, raw, message):
    storage = f"sqlite:///{tmp_path / 'v.db'}"
    with pytest.raises(ConfigError, match=message) as e:
        create_study(build(StudyConfig, raw), storage=storage)
    assert "\n" not in str(e.value)
    assert optuna.get_all_study_names(storage) == []
    return str(e.value)


@pytest.mark.parametrize(("space", "message"), [
    ({"prune.sparsity": {"low": 0.5, "high": 1.5}}, r"prune.sparsity=1.5 is impossible: prune.sparsity: expected"),
    ({"quant.mode": ["ptq"], "quant.weight_bits": [1, 8]}, r"quant.weight_bits=1 is impossible: quant.weight_bits"),
    ({"quant.mode": ["ptq"], "quant.weight_bits": {"low": 4, "high": 64}}, r"quant.weight_bits=64 .*2..16 bits"),
    ({"prune.no_such_field": [1, 2]}, r"prune.no_such_field: unknown key"),
    ({"finetune.lr": {"low": -1.0, "high": 0.1}},
     r"finetune.lr=-1.0 is impossible: finetune.lr: expected a learning rate > 0"),
    ({"prune.layer_sparsity": {"low": 0.1, "high": 1.0, "per_layer": True},
      "prune.allocation": ["per_layer"]}, r"prune.layer_sparsity.\*: expected a sparsity in \[0, 1\), got 1.0"),
    ({"prune.sparsity": {"low": 0.1, "high": 1.2, "step": 0.6}}, None),  # the step never reaches 1.2: allowed
])
def test_space_ranges_are_checked_at_both_ends(tmp_path, space, message):
    raw = _tiny(tmp_path, space=space)
    if message is None:
        assert validate_study(build(StudyConfig, raw)) == []
        return
    with pytest.raises(ConfigError, match=message):
        validate_study(build(StudyConfig, raw))
    _refused_and_nothing_stored(tmp_path, raw, message)


@pytest.mark.parametrize(("constraints", "message"), [
    ({"max_macs": 0}, r"constraints.max_macs: expected a budget > 0 or null, got 0"),
    ({"max_macs": -5}, r"constraints.max_macs: expected a budget > 0"),
    ({"max_bitops": 0.0}, r"constraints.max_bitops: expected a budget > 0"),
    ({"min_clean_acc": 5}, r"constraints.min_clean_acc: expected an accuracy in \[0, 1\], got 5"),
    ({"min_clean_acc": -0.1}, r"constraints.min_clean_acc: expected an accuracy in \[0, 1\]"),
])
def test_impossible_constraints_are_refused(tmp_path, constraints, message):
    with pytest.raises(ConfigError, match=message) as e:
        build(StudyConfig, _tiny(tmp_path, constraints=constraints))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("sampler", "message"), [
    ({"name": "tpe", "options": {"n_startup": 3}}, r"sampler.options: the 'tpe' sampler refuses .*n_startup"),
    ({"name": "random", "options": {"population_size": 4}}, r"sampler.options: the 'random' sampler refuses"),
    ({"name": "nsga2", "options": {"population_size": "many"}}, r"sampler.options: the 'nsga2' sampler refuses"),
])
def test_sampler_options_are_checked_at_create(tmp_path, sampler, message):
    _refused_and_nothing_stored(tmp_path, _tiny(tmp_path, sampler=sampler), message)


def test_a_missing_base_checkpoint_without_a_recipe_is_refused(tmp_path):
    raw = _tiny(tmp_path)
    raw["model"] = {"arch": "mnist_small", "checkpoint": str(tmp_path / "nowhere.pt")}
    _refused_and_nothing_stored(tmp_path, raw, r"model.checkpoint: the base checkpoint .*nowhere.pt' does not exist "
                                               r"and model.train is not set")


def test_val_size_is_checked_against_the_dataset(tmp_path):
    raw = _tiny(tmp_path)
    raw["data"] = {**raw["data"], "val_size": 10**7}
    _refused_and_nothing_stored(tmp_path, raw, r"data.val_size: expected fewer than the \d+ training images")


def test_a_create_that_fails_halfway_leaves_no_study(tmp_path, monkeypatch):
    """A storage write failing after the study row exists (a full disk, say): the study is deleted again."""
    raw = _tiny(tmp_path, baselines=["dense"], space={"prune.sparsity": {"low": 0.3, "high": 0.9},
                                                      "finetune.recipe": ["none", "fast"]})

    def failing_enqueue(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(optuna.Study, "enqueue_trial", failing_enqueue)
    storage = f"sqlite:///{tmp_path / 'v.db'}"
    with pytest.raises(OSError, match="No space left"):
        create_study(build(StudyConfig, raw), storage=storage)
    assert optuna.get_all_study_names(storage) == []


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].glob("studies/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_study_passes_validation(path: Path) -> None:
    validate_study(load_study_config(path))
