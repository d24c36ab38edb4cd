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
from .pruner import from_config
from .samplers import SAMPLERS, make_run_sampler, make_sampler
from .space import combinations, strip_tag, trial_params_from_flat, validate_space
from .storage import default_storage_url, make_storage, mask_url
from .warm_start import WARM_START_ATTR, warm_start_trials

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
    from_config(cfg.pruner)  # the pruner the workers will build (rungs, eta, floors)
    if cfg.pruner.enabled and cfg.defaults.finetune is None and not any(
            strip_tag(k).startswith("finetune.") for k in cfg.space):
        raise ConfigError(f"pruner.name: {cfg.pruner.name!r} stops trials between fine-tuning rungs, but no trial "
                          "of this study fine-tunes (defaults.finetune is null and the space has no finetune.*)")
    return baseline_trials(cfg)


def create_study(cfg: StudyConfig, *, storage: str | None = None, name: str | None = None,
                 artifact_dir: str | None = None, warm_start: str | None = None,
                 warm_start_storage: str | None = None) -> optuna.Study:
    """Creates the study (3 objectives, named metrics), stores its config, enqueues baselines.

    Everything decidable now is checked before anything is stored (:func:`validate_study`, the
    base checkpoint or its recipe, the data sizes against the dataset), and a study whose set-up
    fails halfway is deleted again: a study that cannot run is never left half-created.

    Args:
        warm_start: an earlier study whose feasible Pareto set is enqueued after the baselines (the
            trials the new space can express; the rest are skipped, with reasons in the study's
            ``warm_start`` user attribute, see :mod:`.warm_start`).
        warm_start_storage: where that study lives (default: the new study's storage).

    Raises:
        ConfigError: the name exists already in that storage, the config is invalid, or the warm-start
            study is missing or has no completed trial.
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
    warm = None
    if warm_start is not None:
        src_url = warm_start_storage or url
        src_store = make_storage(src_url) if warm_start_storage else store
        names = optuna.get_all_study_names(src_store)
        if warm_start not in names:
            raise ConfigError(f"--warm-start: no study named {warm_start!r} in {mask_url(src_url)}; studies there: "
                              f"{', '.join(names) or '(none)'}")
        warm = warm_start_trials(optuna.load_study(study_name=warm_start, storage=src_store), cfg.space)
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
        if warm is not None:
            for number, params in warm.enqueued:
                study.enqueue_trial(params, user_attrs={"warm_start": f"{warm.source}#{number}"})
            study.set_user_attr(WARM_START_ATTR, warm.summary())
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
    ``worker`` and the number of trials already stored (:func:`~searchprune.search.samplers.make_run_sampler`
    also separates processes that open the study at the same moment): parallel workers, resumed runs
    and independent workers on one storage propose new points, and the same history gives the same
    proposals.
    """
    store = make_storage(storage, create=False)
    names = optuna.get_all_study_names(store)
    if name not in names:
        raise ConfigError(f"no study named {name!r} in {mask_url(storage)}; "
                          f"studies there: {', '.join(names) or '(none)'}")
    plain = optuna.load_study(study_name=name, storage=store)
    cfg = stored_config(plain)
    trials = plain.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == optuna.trial.TrialState.WAITING]
    sampler = make_run_sampler(cfg.sampler.name, seed=cfg.sampler.seed, options=cfg.sampler.options, worker=worker,
                               n_trials=len(trials), first_free=min(waiting) if waiting else len(trials))
    return optuna.load_study(study_name=name, storage=store, sampler=sampler), cfg
