"""searchprune: multi-objective search for compressed networks that stay robust to adversarial attacks.

The public surface is small; everything else lives in the submodules::

    from searchprune import load, run_trial, TrialParams, load_study_config
"""

from __future__ import annotations

from .config import (
    PruneConfig,
    QuantConfig,
    StudyConfig,
    ThreatModel,
    TrainConfig,
    TrialParams,
    load_study_config,
)
from .errors import ConfigError

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "PruneConfig", "QuantConfig", "StudyConfig", "ThreatModel", "TrainConfig", "TrialParams",
    "__version__", "load", "load_study_config", "run_trial",
]


def load(path, *, trust_factory=None):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """Rebuilds a model from an export directory or a searchprune checkpoint file.

    Nothing the file names is imported or called: a model built by the user's own factory loads
    only with ``trust_factory="module:function"`` naming exactly that factory.
    """
    from .search.export import load as _load

    return _load(path, trust_factory=trust_factory)


def run_trial(params, ctx, **kwargs):  # noqa: ANN001, ANN003, ANN201
    """The trial core (lazy import keeps ``import searchprune`` light): see :mod:`searchprune.trial`."""
    from .trial import run_trial as _run

    return _run(params, ctx, **kwargs)
