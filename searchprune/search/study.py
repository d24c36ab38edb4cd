"""Study validation, creation and loading.

A study stores its resolved config as the study user attribute ``searchprune_config``, so any
worker on any machine needs only the study name and the storage URL. ``validate_study`` runs once,
at ``study create``: an impossible space (a method paired with a granularity, allocation or option
it does not take) fails there with one ConfigError instead of as failed trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna

from ..attacks import list_attacks
from ..attacks.spec import parse_attack
from ..config import COST_KINDS, ParamSpec, StudyConfig, build, to_dict
from ..data import list_datasets, make_splits
from ..errors import ConfigError
from ..models import list_models
from ..prune import check_config, list_methods
from ..train import list_recipes
from .baselines import baseline_trials
from .objective import base_checkpoint_path
from .samplers import SAMPLERS, make_sampler, run_seed
from .space import combinations, strip_tag, trial_params_from_flat, validate_space
from .storage import default_storage_url, make_storage, mask_url

__all__ = [
    "OBJECTIVE_NAMES", "DIRECTIONS", "CONFIG_ATTR", "validate_names", "validate_study", "create_study",
    "load_study", "stored_config",
]

# the third objective is the study's ``cost`` (any of COST_KINDS); every trial stores all of them
OBJECTIVE_NAMES = {kind: ["clean_acc", "robust_acc", kind] for kind in COST_KINDS}
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
    if cfg.eval.checks and cfg.eval.on_flag == "worst":
        for a in cfg.eval.strong_attacks:
            try:
                parse_attack(a)
            except ConfigError as e:
                raise ConfigError(f"eval.strong_attacks: {e}") from None
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


def _range_end(spec: ParamSpec, value: Any, end: str) -> Any:
    """``value`` (a range's low end, as :func:`combinations` gives it) moved to the range's ``end``."""
    if end == "low" or spec.type not in ("int", "float"):
        return value
    assert spec.low is not None and spec.high is not None
    if spec.step:  # the highest value the step reaches
        top = spec.low + math.floor((spec.high - spec.low) / spec.step + 1e-9) * spec.step
    else:
        top = spec.high
    return int(top) if spec.type == "int" else top


def _at(space: Mapping[str, ParamSpec], combo: Mapping[str, Any], end: str) -> dict[str, Any]:
    return {k: _range_end(space[k.removesuffix(".*")], v, end) for k, v in combo.items()}


def _check_space_configs(cfg: StudyConfig) -> None:
    """Every config the space can produce is valid: each field exists and each range, at both ends,
    lies in the field's allowed range; every pruning config passes the model-free check ``prune_``
    runs first."""
    seen: set[str] = set()
    for low_combo in combinations(cfg.space):
        for end in ("low", "high"):
            combo = _at(cfg.space, low_combo, end)
            where = ", ".join(f"{k}={v!r}" for k, v in combo.items() if not k.endswith(".*")) or "the defaults"
            try:
                params = trial_params_from_flat(cfg.defaults, combo)
                if repr(params) in seen:
                    continue
                seen.add(repr(params))
                check_config(params.prune)
            except ConfigError as e:
                raise ConfigError(f"space: the trial with {where} is impossible: {e}") from None


def _check_sampler(cfg: StudyConfig) -> None:
    """The sampler accepts its options (a wrong keyword is a TypeError deep inside Optuna otherwise)."""
    try:
        make_sampler(cfg.sampler.name, seed=cfg.sampler.seed, options=cfg.sampler.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler.options: the {cfg.sampler.name!r} sampler refuses "
                          f"{dict(cfg.sampler.options)}: {e}") from None


def _check_runnable(cfg: StudyConfig) -> None:
    """What ``study create`` can decide about the machine: the base model and the data sizes."""
    base = base_checkpoint_path(cfg)
    if cfg.model.train is None and not base.is_file():
        raise ConfigError(f"model.checkpoint: the base checkpoint {str(base)!r} does not exist and model.train "
                          "is not set; train one with `searchprune train` or add a model.train recipe")
    make_splits(cfg.data)  # data.val_size / train_size / test_size against the dataset's images


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
    _check_sampler(cfg)
    return baseline_trials(cfg)


def create_study(cfg: StudyConfig, *, storage: str | None = None, name: str | None = None,
                 artifact_dir: str | None = None) -> optuna.Study:
    """Creates the study (3 objectives, named metrics), stores its config, enqueues baselines.

    Everything decidable now is checked before anything is stored (:func:`validate_study`, the
    base checkpoint or its recipe, the data sizes against the dataset), and a study whose set-up
    fails halfway is deleted again: a study that cannot run is never left half-created.

    Raises:
        ConfigError: the name exists already in that storage, or the config is invalid.
    """
    if name is not None:
        cfg = build(StudyConfig, {**to_dict(cfg), "name": name})
    baselines = validate_study(cfg)  # refuse an impossible space or baseline before storing anything
    _check_runnable(cfg)
    url = storage or cfg.storage or default_storage_url(cfg)
    store = make_storage(url)
    if cfg.name in optuna.get_all_study_names(store):
        raise ConfigError(f"a study named {cfg.name!r} already exists in {mask_url(url)}; "
                          "use `searchprune study optimize` to continue it, or pick another --name")
    study = optuna.create_study(study_name=cfg.name, storage=store, directions=DIRECTIONS,
                                sampler=make_sampler(cfg.sampler.name, seed=cfg.sampler.seed,
                                                     options=cfg.sampler.options))
    try:
        study.set_metric_names(OBJECTIVE_NAMES[cfg.cost])
        resolved = to_dict(cfg)
        resolved["output_dir"] = str(cfg.out_path.resolve())
        if cfg.model.checkpoint is not None:
            resolved["model"]["checkpoint"] = str(Path(cfg.model.checkpoint).resolve())
        study.set_user_attr(CONFIG_ATTR, resolved)
        # the dashboard serves user attributes: a password never reaches them
        study.set_user_attr("storage_url", mask_url(url))
        study.set_user_attr("artifact_dir", str(Path(artifact_dir or cfg.out_path / "artifacts").resolve()))
        for params in baselines:
            study.enqueue_trial(params, user_attrs={"baseline": True})
    except BaseException:  # a study that cannot run is never left half-created
        optuna.delete_study(study_name=cfg.name, storage=store)
        raise
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
    """Opens an existing study and its stored config.

    The sampler is seeded by :func:`~searchprune.search.samplers.run_seed` from the study seed,
    ``worker`` and the number of trials already stored: parallel workers and resumed runs propose
    new points, and the same history gives the same proposals.
    """
    store = make_storage(storage, create=False)
    names = optuna.get_all_study_names(store)
    if name not in names:
        raise ConfigError(f"no study named {name!r} in {mask_url(storage)}; "
                          f"studies there: {', '.join(names) or '(none)'}")
    plain = optuna.load_study(study_name=name, storage=store)
    cfg = stored_config(plain)
    seed = run_seed(cfg.sampler.seed, worker=worker, n_trials=len(plain.get_trials(deepcopy=False)))
    sampler = make_sampler(cfg.sampler.name, seed=seed, options=cfg.sampler.options)
    return optuna.load_study(study_name=name, storage=store, sampler=sampler), cfg
