"""Study validation, creation and loading.

A study stores its resolved config as the study user attribute ``searchprune_config``, so any
worker on any machine needs only the study name and the storage URL. ``validate_study`` runs once,
at ``study create``: an impossible space (a method paired with a granularity, allocation or option
it does not take) fails there with one ConfigError instead of as failed trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import optuna

from ..attacks import list_attacks
from ..config import StudyConfig, build, to_dict
from ..data import list_datasets
from ..errors import ConfigError
from ..models import list_models
from ..prune import check_config, list_methods
from ..train import list_recipes
from .baselines import baseline_trials
from .samplers import SAMPLERS, make_sampler
from .space import combinations, strip_tag, trial_params_from_flat, validate_space
from .storage import default_storage_url, make_storage

__all__ = [
    "OBJECTIVE_NAMES", "DIRECTIONS", "CONFIG_ATTR", "validate_names", "validate_study", "create_study",
    "load_study", "stored_config",
]

OBJECTIVE_NAMES = {"macs": ["clean_acc", "robust_acc", "macs"], "bitops": ["clean_acc", "robust_acc", "bitops"]}
DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "maximize", "minimize"]
CONFIG_ATTR = "searchprune_config"


def validate_names(cfg: StudyConfig) -> None:
    """Checks every registered name the config uses (dataset, model, methods, recipes, attacks, sampler)."""

    def check(value: Any, choices: Sequence[str], path: str) -> None:
        if value not in choices:
            raise ConfigError(f"{path}: unknown value {value!r}; expected one of: {', '.join(sorted(choices))}")

    check(cfg.data.dataset, list_datasets(), "data.dataset")
    if cfg.model.arch is not None:
        check(cfg.model.arch, list_models(), "model.arch")
    for a in (*cfg.eval.attacks, *cfg.eval.export_attacks):
        check(a, list_attacks(), "eval.attacks")
    if cfg.eval.objective == "pgd" and "pgd" not in cfg.eval.attacks:
        raise ConfigError("eval.objective: 'pgd' needs 'pgd' in eval.attacks")
    if cfg.model.train is not None:
        check(cfg.model.train.recipe, list_recipes(), "model.train.recipe")
    check(cfg.sampler.name, SAMPLERS.names(), "sampler.name")
    check(cfg.defaults.prune.method, list_methods(), "defaults.prune.method")
    if cfg.defaults.finetune is not None:
        check(cfg.defaults.finetune.recipe, list_recipes(), "defaults.finetune.recipe")
    named = {"prune.method": list_methods(), "finetune.recipe": [*list_recipes(), "none"]}
    for key, spec in cfg.space.items():
        choices = named.get(strip_tag(key))
        if choices is None:
            continue
        for v in spec.choices or ((spec.value,) if spec.type == "fixed" else ()):
            check(v, choices, f"space.{key}")


def _check_space_configs(cfg: StudyConfig) -> None:
    """Every pruning config the space can produce passes the model-free check ``prune_`` runs first."""
    seen: set[str] = set()
    for combo in combinations(cfg.space, keep=lambda name: strip_tag(name).startswith("prune.")):
        where = ", ".join(f"{k}={v!r}" for k, v in combo.items() if not k.endswith(".*")) or "the defaults"
        try:
            prune = trial_params_from_flat(cfg.defaults, combo).prune
            if repr(prune) in seen:
                continue
            seen.add(repr(prune))
            check_config(prune)
        except ConfigError as e:
            raise ConfigError(f"space: the trial with {where} is impossible: {e}") from None


def validate_study(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Checks a study config before anything is stored: names, the space, its pruning configs, baselines.

    Returns:
        The baseline parameter sets to enqueue.

    Raises:
        ConfigError: one line naming the bad value and what was expected.
    """
    validate_names(cfg)
    validate_space(cfg.space)
    _check_space_configs(cfg)
    return baseline_trials(cfg)


def create_study(cfg: StudyConfig, *, storage: str | None = None, name: str | None = None,
                 artifact_dir: str | None = None) -> optuna.Study:
    """Creates the study (3 objectives, named metrics), stores its config, enqueues baselines.

    Raises:
        ConfigError: the name exists already in that storage, or the config is invalid.
    """
    if name is not None:
        cfg = build(StudyConfig, {**to_dict(cfg), "name": name})
    baselines = validate_study(cfg)  # refuse an impossible space or baseline before storing anything
    url = storage or cfg.storage or default_storage_url(cfg)
    store = make_storage(url)
    if cfg.name in optuna.get_all_study_names(store):
        raise ConfigError(f"a study named {cfg.name!r} already exists in {url}; "
                          "use `searchprune study optimize` to continue it, or pick another --name")
    study = optuna.create_study(study_name=cfg.name, storage=store, directions=DIRECTIONS,
                                sampler=make_sampler(cfg.sampler.name, seed=cfg.sampler.seed,
                                                     options=cfg.sampler.options))
    study.set_metric_names(OBJECTIVE_NAMES[cfg.cost])
    resolved = to_dict(cfg)
    resolved["output_dir"] = str(cfg.out_path.resolve())
    if cfg.model.checkpoint is not None:
        resolved["model"]["checkpoint"] = str(Path(cfg.model.checkpoint).resolve())
    study.set_user_attr(CONFIG_ATTR, resolved)
    study.set_user_attr("storage_url", url)
    study.set_user_attr("artifact_dir", str(Path(artifact_dir or cfg.out_path / "artifacts").resolve()))
    for params in baselines:
        study.enqueue_trial(params, user_attrs={"baseline": True})
    return study


def stored_config(study: optuna.Study) -> StudyConfig:
    """The config a study was created with (its ``searchprune_config`` user attribute).

    Raises:
        ConfigError: the study was not created by searchprune.
    """
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study {study.study_name!r} was not created by searchprune (no {CONFIG_ATTR} attribute)")
    return build(StudyConfig, raw)


def load_study(name: str, storage: str, *, worker: int = 0) -> tuple[optuna.Study, StudyConfig]:
    """Opens an existing study and its stored config (``worker`` offsets the sampler seed)."""
    store = make_storage(storage)
    names = optuna.get_all_study_names(store)
    if name not in names:
        raise ConfigError(f"no study named {name!r} in {storage}; studies there: {', '.join(names) or '(none)'}")
    cfg = stored_config(optuna.load_study(study_name=name, storage=store))
    # Parallel workers must not share a seed, or they would propose the same points.
    seed = None if cfg.sampler.seed is None else cfg.sampler.seed + worker
    sampler = make_sampler(cfg.sampler.name, seed=seed, options=cfg.sampler.options)
    return optuna.load_study(study_name=name, storage=store, sampler=sampler), cfg
