"""model.factory alone is enough; arch and factory together are the error (issue 14)."""

from __future__ import annotations

import pytest

from searchprune.config import ModelConfig, StudyConfig, build, to_dict
from searchprune.errors import ConfigError


def test_factory_without_arch_is_accepted_and_round_trips():
    cfg = build(StudyConfig, {"name": "s", "model": {"factory": "tests._toys:tiny_cnn"}})
    assert cfg.model.factory == "tests._toys:tiny_cnn"
    assert cfg.model.arch is None
    assert build(StudyConfig, to_dict(cfg)).model == cfg.model


def test_neither_gives_the_default_arch():
    assert ModelConfig().arch == "cnn8"
    assert build(StudyConfig, {"name": "s"}).model.arch == "cnn8"
    assert build(StudyConfig, {"name": "s", "model": {"arch": "resnet20"}}).model.arch == "resnet20"


def test_arch_and_factory_together_is_one_line_error_naming_both():
    with pytest.raises(ConfigError, match=r"not both.*arch='cnn8'.*factory='pkg.mod:fn'") as e:
        build(StudyConfig, {"name": "s", "model": {"arch": "cnn8", "factory": "pkg.mod:fn"}})
    assert "\n" not in str(e.value)
