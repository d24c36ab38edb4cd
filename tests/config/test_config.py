from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from searchprune.config import (
    PruneConfig,
    StudyConfig,
    ThreatModel,
    build,
    load_study_config,
    load_yaml,
    to_dict,
)
from searchprune.errors import ConfigError
from searchprune.search import baseline_trials, validate_names, validate_space


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "s", "data": {"datset": "x"}}, "data.datset: unknown key"),
        ({"name": "s", "threat": {"eps": "big"}}, "threat.eps: expected a number, got 'big'"),
        ({"name": "s", "threat": {"eps": -0.1}}, "threat.eps"),
        ({"name": "s", "threat": {"steps": 0}}, "threat.steps: expected at least 1 step"),
        ({"name": "s", "defaults": {"prune": {"sparsity": 1.2}}}, "defaults.prune.sparsity"),
        ({"name": "s", "defaults": {"finetune": {"optimizer": "lbfgs"}}},
         "defaults.finetune.optimizer: expected one of"),
        ({"name": "s", "space": {"prune.sparsity": {"low": 0.9, "high": 0.1}}}, "space.prune.sparsity"),
        ({"name": "s", "space": {"model.arch": ["cnn8"]}}, "space.model.arch"),
        ({"name": "bad name!"}, "name: expected letters"),
        ({"name": "s", "n_trials": 2.5}, "n_trials: expected an integer"),
    ],
)
def test_bad_values_are_named_with_their_path(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build(StudyConfig, raw)


def test_configs_are_frozen_and_round_trip():
    cfg = build(StudyConfig, {"name": "s", "threat": {"eps": 0.1, "alpha": 0.01}})
    with pytest.raises(AttributeError):
        cfg.threat.eps = 0.2  # type: ignore[misc]
    assert build(StudyConfig, to_dict(cfg)) == cfg


def test_prune_config_needs_exactly_one_target():
    with pytest.raises(ConfigError, match="exactly one of sparsity and compression"):
        PruneConfig(sparsity=0.5, compression=4.0)
    assert PruneConfig(sparsity=None, compression=4.0).compression == 4.0
    with pytest.raises(ConfigError, match="per_layer"):
        PruneConfig(allocation="per_layer")


def test_space_shorthand_and_int_inference():
    cfg = build(StudyConfig, {"name": "s", "space": {
        "prune.method": ["magnitude", "lamp"],
        "prune.sparsity": {"low": 0.1, "high": 0.9},
        "finetune.epochs": {"low": 1, "high": 3, "when": {"finetune.recipe": "fast"}},
        "quant.weight_bits": 8,
    }})
    s = cfg.space
    assert s["prune.method"].type == "categorical"
    assert s["prune.sparsity"].type == "float"
    assert s["finetune.epochs"].type == "int"
    assert s["finetune.epochs"].when == {"finetune.recipe": ("fast",)}
    assert s["quant.weight_bits"].type == "fixed" and s["quant.weight_bits"].value == 8


def test_threat_model_defaults_are_adver_fine():
    t = ThreatModel()
    assert (t.eps, t.alpha, t.steps, t.random_start) == (0.05, 0.005, 20, False)


def test_shipped_studies_load():
    """Every shipped study validates: keys, registered names, conditions, baselines."""
    paths = sorted(Path(__file__).parents[2].joinpath("studies").glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        cfg = load_study_config(path)
        validate_names(cfg)
        validate_space(cfg.space)
        baseline_trials(cfg)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study_config(bad)


def test_duplicate_yaml_key_is_one_line_error_naming_key_and_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: s\nthreat:\n  eps: 0.1\n  steps: 5\n  eps: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key 'eps'") as info:
        load_yaml(dup)
    assert "\n" not in str(info.value)
    top = tmp_path / "top.yaml"
    top.write_text("name: a\nn_trials: 3\nname: b\n")
    with pytest.raises(ConfigError, match=r"top\.yaml:3: duplicate key 'name'"):
        load_study_config(top)
    ok = tmp_path / "ok.yaml"  # the same key in two different mappings is fine
    ok.write_text("a: {eps: 1}\nb: {eps: 2}\n")
    assert load_yaml(ok) == {"a": {"eps": 1}, "b": {"eps": 2}}


def _parse_csv(raw, path):
    if not isinstance(raw, str):
        raise ConfigError(f"{path}: expected a comma-separated string, got {raw!r}")
    return tuple(raw.split(","))


@dataclass(frozen=True)
class _WithParser:
    names: tuple[str, ...] = field(default=(), metadata={"parse": _parse_csv})
    n: int = 0


def test_build_uses_a_fields_own_parser_with_its_path():
    assert build(_WithParser, {"names": "a,b", "n": 2}) == _WithParser(names=("a", "b"), n=2)
    with pytest.raises(ConfigError, match=r"outer\.names: expected a comma-separated string, got 3"):
        build(_WithParser, {"names": 3}, "outer")
    with pytest.raises(ConfigError, match=r"space\.prune\.x@: a tag after '@'"):
        build(StudyConfig, {"name": "s", "space": {"prune.x@": [1]}})
    with pytest.raises(ConfigError, match="space: expected a mapping of parameter -> spec"):
        build(StudyConfig, {"name": "s", "space": [1]})
