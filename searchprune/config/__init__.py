"""Frozen, validated config objects: the boundary between YAML / CLI input and the library.

Every section of a study YAML maps to one dataclass here. ``build(cls, mapping, path)`` turns a
plain mapping into the dataclass, rejecting unknown keys and wrong types with the key's path in
the message (``space.prune.sparsity.low: expected a number, got 'high'``). Range checks live in each
class's ``__post_init__``. Names of registered things (methods, recipes, attacks, models) are
checked against their registries by ``validate_names`` once torch is importable.

Layout: :mod:`.core` (library configs and ``TrialParams``), :mod:`.study` (study configs),
:mod:`._build` (the generic builder and YAML reading). No torch here: this package is imported by
the CLI before anything heavy.

Units: ``eps``/``alpha`` are on the [0, 1] pixel scale; ``macs`` are multiply-adds.
"""

from __future__ import annotations

from ._build import build, load_yaml, to_dict
from .core import (
    COST_KINDS,
    ON_FLAG,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PruneConfig,
    QuantConfig,
    ThreatModel,
    TrainConfig,
    TrialParams,
)
from .study import (
    ConstraintConfig,
    ParamSpec,
    PrunerConfig,
    SamplerConfig,
    StudyConfig,
    TrainRunConfig,
    TrialDefaults,
    load_study_config,
)

__all__ = [
    "ThreatModel", "TrainConfig", "PruneConfig", "QuantConfig", "DataConfig", "ModelConfig",
    "EvalConfig", "ParamSpec", "SamplerConfig", "PrunerConfig", "ConstraintConfig", "TrialDefaults",
    "StudyConfig", "TrainRunConfig", "TrialParams", "load_yaml",
    "build", "to_dict", "load_study_config", "COST_KINDS", "ON_FLAG",
]
