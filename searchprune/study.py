"""Optuna studies: storages, samplers, the objective, workers, baselines, Pareto reports.

Everything Optuna already does (Pareto sorting, storage, heartbeats and retries, artifacts)
is Optuna's; this module only wires it to :func:`searchprune.trial.run_trial`.

A study stores its resolved config as the study user attribute ``searchprune_config``, so any
worker on any machine needs only the study name and the storage URL.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from ._registry import Registry
from ._torch import get_device, set_cpu_threads
from .config import StudyConfig, TrialDefaults, build, strip_tag, to_dict
from .errors import ConfigError
from .space import suggest_params, validate_space

__all__ = [
    "OBJECTIVE_NAMES", "make_storage", "make_sampler", "create_study", "load_study", "optimize",
    "pareto_rows", "format_table", "study_summary", "list_baselines", "register_baseline",
]

OBJECTIVE_NAMES = {"macs": ["clean_acc", "robust_acc", "macs"], "bitops": ["clean_acc", "robust_acc", "bitops"]}
DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "maximize", "minimize"]
CONFIG_ATTR = "searchprune_config"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")

# --------------------------------------------------------------------------------------------
# Storage and samplers
# --------------------------------------------------------------------------------------------


def default_storage_url(cfg: StudyConfig) -> str:
    """SQLite file next to the study outputs."""
    path = cfg.out_path.resolve() / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 2) -> optuna.storages.BaseStorage:
    """Storage from a URL: ``sqlite:///``, ``postgresql://``, ``mysql://`` (RDB, with heartbeats
    so a killed worker's trial is retried elsewhere) or a journal file path (``*.log``, or
    ``journal:PATH``) for many processes on one machine or a shared filesystem.

    Heartbeat interval and grace period (seconds) default to ``$SEARCHPRUNE_HEARTBEAT_INTERVAL``
    (60) and ``$SEARCHPRUNE_HEARTBEAT_GRACE`` (180); the variables reach worker processes too.
    """
    if heartbeat_interval is None:
        heartbeat_interval = int(os.environ.get("SEARCHPRUNE_HEARTBEAT_INTERVAL", 60))
    if grace_period is None:
        grace_period = int(os.environ.get("SEARCHPRUNE_HEARTBEAT_GRACE", 180))
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if "://" not in url:
        raise ConfigError(
            f"storage {url!r} is not a URL; expected sqlite:///PATH, postgresql://..., mysql://... "
            f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}"
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
    except (ImportError, ModuleNotFoundError) as e:
        raise ConfigError(f"storage {url!r} needs a database driver: {e}; "
                          "for PostgreSQL: pip install 'searchprune[postgres]'") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL
        raise ConfigError(f"could not open storage {url!r}: {type(e).__name__}: {e}") from None


def make_sampler(name: str, *, seed: int | None, options: Mapping[str, Any] | None = None,
                 n_objectives: int = 3) -> optuna.samplers.BaseSampler:
    """Sampler by name. TPE uses ``group=True`` so conditional spaces are modelled jointly."""
    opts = dict(options or {})
    if name == "tpe":
        opts.setdefault("group", True)
        opts.setdefault("multivariate", True)
        return optuna.samplers.TPESampler(seed=seed, **opts)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **opts)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, **opts)
    if name == "gp":
        try:
            import scipy  # noqa: F401  (optuna's GPSampler optimizes its acquisition with scipy)
        except ImportError:
            raise ConfigError("sampler 'gp' needs scipy: pip install scipy") from None
        return optuna.samplers.GPSampler(seed=seed, **opts)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; expected one of: gp, nsga2, nsga3, random, tpe")


# --------------------------------------------------------------------------------------------
# Baselines: fixed recipes enqueued at creation, so the Pareto plot shows them
# --------------------------------------------------------------------------------------------

BaselineFn = Callable[[float], dict[str, Any]]
BASELINES: Registry[BaselineFn] = Registry("baseline")


def register_baseline(name: str) -> Callable[[BaselineFn], BaselineFn]:
    return BASELINES.register(name)


def list_baselines() -> list[str]:
    return BASELINES.names()


@register_baseline("dense")
def _dense(sparsity: float) -> dict[str, Any]:
    return {"prune.sparsity": 0.0, "finetune.recipe": "none", "quant.mode": "none"}


# Fields that make no difference at sparsity 0. Where the space searches them (and allows these
# values), the dense baseline pins them instead of letting the sampler pick, say, a learned method
# that would train scores for a model it then leaves dense.
_DENSE_PINS = {"prune.method": "magnitude", "prune.granularity": "weight", "prune.allocation": "global"}


@register_baseline("shrinkbench")
def _shrinkbench(sparsity: float) -> dict[str, Any]:
    """Global weight-magnitude pruning + standard fine-tuning (ShrinkBench GlobalMagWeight)."""
    return {"prune.method": "magnitude", "prune.granularity": "weight", "prune.allocation": "global",
            "prune.sparsity": sparsity, "finetune.recipe": "standard", "quant.mode": "none"}


@register_baseline("gap")
def _gap(sparsity: float) -> dict[str, Any]:
    """Greedy adversarial pruning (seed 000) + standard fine-tuning."""
    return {"prune.method": "gap", "prune.granularity": "weight", "prune.allocation": "global",
            "prune.sparsity": sparsity, "finetune.recipe": "standard", "quant.mode": "none"}


@register_baseline("adver_fine")
def _adver_fine(sparsity: float) -> dict[str, Any]:
    """L1-filter pruning of every conv at one ratio + PGD adversarial fine-tuning (seed 001)."""
    return {"prune.method": "l1_filter", "prune.granularity": "channel", "prune.allocation": "uniform",
            "prune.sparsity": sparsity, "finetune.recipe": "pgd", "quant.mode": "none"}


@register_baseline("hydra")
def _hydra(sparsity: float) -> dict[str, Any]:
    """HYDRA learned scores + TRADES fine-tuning (seed 003)."""
    return {"prune.method": "hydra", "prune.granularity": "weight", "prune.allocation": "learned",
            "prune.sparsity": sparsity, "finetune.recipe": "trades", "quant.mode": "none"}


@register_baseline("mrpf")
def _mrpf(sparsity: float) -> dict[str, Any]:
    """MRS-allocated ratios + TRADES fine-tuning (seed 004)."""
    return {"prune.method": "magnitude", "prune.granularity": "weight", "prune.allocation": "mrs",
            "prune.sparsity": sparsity, "finetune.recipe": "trades", "quant.mode": "none"}


@register_baseline("in_train")
def _in_train(sparsity: float) -> dict[str, Any]:
    """In-train channel masks with a MAC loss under fast adversarial training (seed 002)."""
    return {"prune.method": "in_train", "prune.granularity": "channel", "prune.allocation": "learned",
            "prune.sparsity": sparsity, "finetune.recipe": "fast", "quant.mode": "none"}


def baseline_trials(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The Optuna parameter sets enqueued for ``cfg.baselines`` ("name" or "name@sparsity").

    Each baseline's config values are mapped onto the space the way ``space.suggest`` walks it:
    the active parameter (tagged or not) for a field gets the baseline's value; a field the space
    does not search must already have that value in the defaults, else the baseline is refused.
    """
    out = []
    for entry in cfg.baselines:
        name, _, level = entry.partition("@")
        fn = BASELINES.get(name)
        levels = [float(level)] if level else [0.0] if name == "dense" else list(_study_sparsities(cfg))
        for sparsity in levels:
            want = fn(sparsity)
            chosen: dict[str, Any] = {}
            covered: set[str] = set()
            for key, spec in cfg.space.items():
                if any(chosen.get(c, _UNSET) not in allowed for c, allowed in spec.when.items()):
                    continue
                field_name = strip_tag(key)
                if spec.type == "fixed":
                    chosen[key] = spec.value
                    if field_name in want and want[field_name] != spec.value:
                        raise ConfigError(f"baselines: {entry!r} needs {field_name}={want[field_name]!r}, but the "
                                          f"space pins {key} to {spec.value!r}")
                elif field_name in want and not spec.per_layer:
                    # a choice outside the space would fail the trial when Optuna replays it (ranges
                    # are fine: the dense model's sparsity 0 sits below a searched range on purpose)
                    choices = spec.choices or ()
                    if spec.type == "categorical" and want[field_name] not in choices:
                        raise ConfigError(f"baselines: {entry!r} sets {field_name}={want[field_name]!r} "
                                          f"(space allows: {', '.join(map(str, choices))}); add the value "
                                          f"to space.{key} to enqueue this baseline")
                    chosen[key] = want[field_name]
                elif name == "dense" and spec.type == "categorical" and \
                        _DENSE_PINS.get(field_name, _UNSET) in (spec.choices or ()):
                    chosen[key] = _DENSE_PINS[field_name]
                covered.add(field_name)
            missing = [k for k, v in want.items() if k not in covered and _default_of(cfg.defaults, k) != v]
            if missing:
                raise ConfigError(
                    f"baselines: {entry!r} sets {', '.join(missing)}, which the space does not search and the "
                    "defaults do not match; add them to the space (or pin them there) to enqueue this baseline"
                )
            out.append({k: v for k, v in chosen.items() if cfg.space[k].type != "fixed"})
    return out


_UNSET = object()


def _study_sparsities(cfg: StudyConfig) -> Sequence[float]:
    spec = cfg.space.get("prune.sparsity")
    if spec is None:
        return [cfg.defaults.prune.sparsity or 0.5]
    if spec.type == "categorical":
        return [float(c) for c in spec.choices or ()]
    if spec.type == "fixed":
        return [float(spec.value)]
    assert spec.low is not None and spec.high is not None
    return [round(spec.low + (spec.high - spec.low) * q, 3) for q in (0.25, 0.75)]


def _default_of(defaults: TrialDefaults, dotted: str) -> Any:
    node: Any = to_dict(defaults)
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    if dotted == "finetune.recipe" and defaults.finetune is None:
        return "none"
    return node


# --------------------------------------------------------------------------------------------
# Study creation and loading
# --------------------------------------------------------------------------------------------


def validate_names(cfg: StudyConfig) -> None:
    """Checks every registered name the config uses (dataset, model, methods, recipes, attacks)."""
    from .attacks import list_attacks
    from .data import list_datasets
    from .models import list_models
    from .prune import list_methods
    from .train import list_recipes

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


def create_study(cfg: StudyConfig, *, storage: str | None = None, name: str | None = None,
                 artifact_dir: str | None = None) -> optuna.Study:
    """Creates the study (3 objectives, named metrics), stores its config, enqueues baselines.

    Raises:
        ConfigError: the name exists already in that storage, or the config is invalid.
    """
    if name is not None:
        cfg = build(StudyConfig, {**to_dict(cfg), "name": name})
    validate_names(cfg)
    validate_space(cfg.space)
    baselines = baseline_trials(cfg)  # refuse a baseline the space cannot express before storing anything
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


def load_study(name: str, storage: str, *, worker: int = 0) -> tuple[optuna.Study, StudyConfig]:
    """Opens an existing study and its stored config (``worker`` offsets the sampler seed)."""
    store = make_storage(storage)
    names = optuna.get_all_study_names(store)
    if name not in names:
        raise ConfigError(f"no study named {name!r} in {storage}; studies there: {', '.join(names) or '(none)'}")
    probe = optuna.load_study(study_name=name, storage=store)
    raw = probe.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study {name!r} was not created by searchprune (no {CONFIG_ATTR} attribute)")
    cfg = build(StudyConfig, raw)
    # Parallel workers must not share a seed, or they would propose the same points.
    seed = None if cfg.sampler.seed is None else cfg.sampler.seed + worker
    sampler = make_sampler(cfg.sampler.name, seed=seed, options=cfg.sampler.options)
    return optuna.load_study(study_name=name, storage=store, sampler=sampler), cfg


def resolve_storage(name: str | None, storage: str | None, config: str | None) -> tuple[str, str]:
    """(study name, storage URL) from CLI flags: an explicit storage, or the config's default."""
    from .config import load_study_config

    if config is not None:
        cfg = load_study_config(config)
        return name or cfg.name, storage or cfg.storage or default_storage_url(cfg)
    if name is None:
        raise ConfigError("give --name (with --storage) or --config to say which study")
    if storage is None:
        path = Path("runs") / name / "study.db"
        if not path.exists():
            raise ConfigError(f"no --storage given and the default {str(path)!r} does not exist; "
                              "pass --storage URL or --config FILE")
        storage = f"sqlite:///{path.resolve()}"
    return name, storage


# --------------------------------------------------------------------------------------------
# The base model and the trial context
# --------------------------------------------------------------------------------------------


def base_checkpoint_path(cfg: StudyConfig) -> Path:
    if cfg.model.checkpoint is not None:
        return Path(cfg.model.checkpoint)
    return cfg.out_path / f"base_{cfg.model.arch or 'custom'}_{cfg.data.dataset}.pt"


def model_record(cfg: StudyConfig, info: Any) -> dict[str, Any]:
    """The ``model`` and ``dataset`` records of a checkpoint's metadata."""
    return {
        "model": {"arch": cfg.model.arch, "factory": cfg.model.factory, "kwargs": dict(cfg.model.kwargs)},
        "dataset": {"name": info.name, "num_classes": info.num_classes, "in_channels": info.in_channels,
                    "image_size": list(info.image_size), "mean": list(info.mean), "std": list(info.std)},
    }


def ensure_base_model(cfg: StudyConfig, splits: Any, device: Any, *, progress: bool = True) -> tuple[Any, dict]:
    """Loads the base checkpoint, or trains and saves it when missing and ``model.train`` is set."""
    from ._torch import seed_everything
    from .attacks import evaluate
    from .checkpoint import load_checkpoint, save_checkpoint
    from .data import BatchLoader, make_splits
    from .models import build_model
    from .train import train_

    path = base_checkpoint_path(cfg)
    record = model_record(cfg, splits.info)
    if path.exists():
        model, meta = load_checkpoint(path, expect_model=record["model"], expect_dataset=record["dataset"])
        return model, meta
    if cfg.model.train is None:
        raise ConfigError(f"base checkpoint {str(path)!r} does not exist and model.train is not set; "
                          "train one with `searchprune train` or add a model.train recipe")
    tcfg = cfg.model.train
    seed_everything(tcfg.seed)
    model = build_model(cfg.model, splits.info).to(device)
    print(f"training base model {cfg.model.arch or cfg.model.factory} on {cfg.data.dataset} "
          f"({tcfg.recipe}, {tcfg.epochs} epochs) -> {path}", flush=True)
    # The base model trains on every training image (data.train_size only caps what each trial
    # fine-tunes on); validation is carved first, so it stays disjoint and unchanged.
    full = make_splits(dataclasses.replace(cfg.data, train_size=None)) if cfg.data.train_size else splits
    loader = BatchLoader(full.train, tcfg.batch_size, shuffle=True, seed=tcfg.seed, device=device)
    history = train_(model, loader, tcfg, threat=cfg.threat, progress=progress)
    res = evaluate(model, BatchLoader(splits.val, cfg.data.eval_batch_size, device=device,
                                      max_images=cfg.eval.n_eval), cfg.threat, attacks=("pgd",))
    meta = {**record, "recipe": to_dict(tcfg), "threat": to_dict(cfg.threat),
            "metrics": {"val_clean_acc": res.clean, "val_pgd_acc": res.robust["pgd"], "n": res.n,
                        "train_history": history}}
    save_checkpoint(path, model, meta)
    print(f"base model: val clean {res.clean:.4f}, PGD {res.robust['pgd']:.4f} on {res.n} images", flush=True)
    return model.cpu().eval(), meta


def build_context(cfg: StudyConfig, *, device: Any = None, progress: bool = True) -> Any:
    """Data splits + base model + threat model: what every trial of the study shares."""
    from .data import make_splits
    from .trial import TrialContext

    dev = get_device(device)
    splits = make_splits(cfg.data)
    model, meta = ensure_base_model(cfg, splits, dev, progress=progress)
    out = cfg.out_path.resolve()
    return TrialContext(
        base_model=model.to(dev).eval(), base_meta={k: meta[k] for k in ("model", "dataset")}, splits=splits,
        threat=cfg.threat, eval=cfg.eval, gate=cfg.gate, device=dev, eval_batch_size=cfg.data.eval_batch_size,
        out_dir=out / "checkpoints", cache_dir=out / "cache",
    )


def prunable_layer_names(cfg: StudyConfig, ctx: Any) -> list[str]:
    from .prune import prunable_layers

    p = cfg.defaults.prune
    return list(prunable_layers(ctx.base_model, include_classifier=p.include_classifier,
                                include_first=p.include_first))


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------


class Objective:
    """``optuna`` objective: suggest params, run the Optuna-free core, store what it measured."""

    def __init__(self, cfg: StudyConfig, ctx: Any, *, artifact_dir: str | None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.ctx, self.log = cfg, ctx, log
        self.store = FileSystemArtifactStore(artifact_dir) if artifact_dir else None
        if artifact_dir:
            Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        self.layer_names = prunable_layer_names(cfg, ctx)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        from .trial import TrialGated, run_trial

        # a heartbeat retry inherits the killed trial's user attrs: rerun it with the same seed
        seed = int(trial.user_attrs.get("seed", self.cfg.seed * 100_003 + trial.number))
        trial.set_user_attr("seed", seed)
        try:
            params = suggest_params(trial, self.cfg.space, self.cfg.defaults, seed=seed,
                                    layer_names=self.layer_names)
            result = run_trial(params, self.ctx, name=f"trial_{trial.number:05d}")
        except TrialGated as g:
            trial.set_user_attr("pruned_reason", g.reason)
            for k, v in g.metrics.items():
                trial.set_user_attr(f"gate_{k}", v)
            self.log(f"trial {trial.number} gated: {g.reason}")
            raise optuna.TrialPruned(g.reason) from None
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            self.log(f"trial {trial.number} failed: {type(e).__name__}: {e}")
            raise
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("layer_sparsity", {k: round(v, 5) for k, v in result.layer_sparsity.items()})
        for k, v in result.checks.items():
            trial.set_user_attr(f"check_{k}", v)
        for k, v in result.flags.items():
            trial.set_user_attr(f"flag_{k}", bool(v))
        trial.set_user_attr("flag_any", any(result.flags.values()))
        self._constraints(trial, result)
        self._upload(trial, result, params)
        self.log(f"trial {trial.number}: clean {result.clean_acc:.4f}  robust {result.robust_acc:.4f}  "
                 f"macs {result.macs / 1e6:.2f}M ({result.macs / max(result.dense_macs, 1):.0%})  "
                 f"{result.time_s:.1f}s")
        return result.clean_acc, result.robust_acc, result.cost(self.cfg.cost)

    def _constraints(self, trial: optuna.Trial, result: Any) -> None:
        c = self.cfg.constraints
        if c.max_macs is not None:
            trial.set_constraint("max_macs", (result.macs - c.max_macs) / c.max_macs)
        if c.max_bitops is not None:
            trial.set_constraint("max_bitops", (result.bitops - c.max_bitops) / c.max_bitops)
        if c.min_clean_acc is not None:
            trial.set_constraint("min_clean_acc", c.min_clean_acc - result.clean_acc)
        if any(v > 0 for v in getattr(trial, "constraints", {}).values()):
            trial.set_user_attr("feasible", False)
        elif c.max_macs is not None or c.max_bitops is not None or c.min_clean_acc is not None:
            trial.set_user_attr("feasible", True)

    def _upload(self, trial: optuna.Trial, result: Any, params: Any) -> None:
        if result.checkpoint is None:
            return
        meta_path = Path(result.checkpoint).with_suffix(".json")
        meta_path.write_text(json.dumps({
            "study": self.cfg.name, "trial": trial.number, "params": trial.params, "seed": params.seed,
            "trial_params": to_dict(params), "metrics": result.metrics(), "stages": to_dict(result.stages),
            "layer_sparsity": dict(result.layer_sparsity), "flags": dict(result.flags),
            "threat": to_dict(self.cfg.threat), "checkpoint": Path(result.checkpoint).name,
        }, indent=2, default=str))
        trial.set_user_attr("checkpoint", result.checkpoint)
        if self.store is None:
            return
        for path, mime in ((result.checkpoint, "application/octet-stream"), (str(meta_path), "application/json")):
            artifact_id = upload_artifact(artifact_store=self.store, file_path=path, study_or_trial=trial,
                                          mimetype=mime)
            key = "artifact_checkpoint" if mime.endswith("stream") else "artifact_metadata"
            trial.set_user_attr(key, artifact_id)


# --------------------------------------------------------------------------------------------
# Optimization: one process or several workers sharing the storage
# --------------------------------------------------------------------------------------------

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _finished(study: optuna.Study) -> int:
    """Finished trials that count toward the target. A trial failed by a stale heartbeat and
    re-queued by ``RetryHeartbeatStaleTrialCallback`` does not: its retry takes its place."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(t.state in FINISHED and not (t.state == TrialState.FAIL and t.number in retried)
               for t in trials)


def _stop_at(target: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Callback stopping a worker once the study has ``target`` finished trials (any worker's)."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _finished(study) >= target:
            study.stop()
    return callback


def _worker(name: str, storage: str, n_trials: int, target: int, device: str | None, threads: int | None,
            timeout: float | None, artifact_dir: str | None, quiet: bool, worker: int = 0,
            progress_bar: bool = False) -> None:
    """One worker: builds its own context and runs ``n_trials`` trials of the shared study."""
    set_cpu_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, cfg = load_study(name, storage, worker=worker)
    ctx = build_context(cfg, device=device, progress=not quiet)
    art = artifact_dir or study.user_attrs.get("artifact_dir")
    # One bar per machine: Optuna's own progress bar, with the per-trial lines written above it.
    bar = progress_bar and n_trials > 0
    if bar:
        from tqdm import tqdm

        log: Callable[[str], None] = tqdm.write
    else:
        log = print
    objective = Objective(cfg, ctx, artifact_dir=art, log=log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # show_progress_bar
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,),
                       callbacks=[_stop_at(target)], gc_after_trial=True, show_progress_bar=bar)


def optimize(name: str, storage: str, *, n_trials: int | None = None, workers: int = 1,
             device: str | None = None, timeout: float | None = None, artifact_dir: str | None = None,
             quiet: bool = False, progress: bool = True) -> optuna.Study:
    """Runs the study until it has ``n_trials`` finished trials (resuming where it stopped).

    With one worker on a terminal, a progress bar counts the trials (``progress=False`` hides it).

    With ``workers > 1`` each worker is a separate process sharing the storage, pinned to its own
    GPU when several exist; the remaining trials are split exactly between them. Workers on other
    machines pointing at the same storage stop once the study reaches the target.
    """
    study, cfg = load_study(name, storage)
    target = cfg.n_trials if n_trials is None else n_trials
    remaining = target - _finished(study)
    if remaining <= 0:
        print(f"study {name!r} already has {_finished(study)} finished trials (target {target})")
        return study
    # Base model once, before workers start (they only load it).
    from .data import make_splits

    ensure_base_model(cfg, make_splits(cfg.data), get_device(device), progress=not quiet)
    workers = max(1, min(workers, remaining))
    print(f"optimizing {name!r}: {remaining} trial(s) to reach {target}, {workers} worker(s), storage {storage}",
          flush=True)
    if workers == 1:
        _worker(name, storage, remaining, target, device, None, timeout, artifact_dir, quiet,
                progress_bar=progress and sys.stderr.isatty())
    else:
        devices = _worker_devices(device, workers)
        threads = max(1, (os.cpu_count() or 1) // workers)
        shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(name, storage, shares[i], target, devices[i], threads,
                                                   timeout, artifact_dir, quiet, i), daemon=False)
                 for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            print(f"warning: {len(bad)} worker(s) exited with codes {bad}", file=sys.stderr)
    study, _ = load_study(name, storage)
    return study


def _worker_devices(device: str | None, workers: int) -> list[str | None]:
    import torch

    if device in (None, "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        return [f"cuda:{i % n}" for i in range(workers)]
    return [device] * workers


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("trial", "clean_acc", "robust_acc", "transfer_acc", "macs", "mac_ratio", "bitops",
                 "sparsity", "flags", "params")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.3g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per Pareto-optimal feasible trial (``study.best_trials``), best robust first."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: -t.values[1]):
        ua = t.user_attrs
        flags = [k.removeprefix("flag_") for k, v in ua.items() if k.startswith("flag_") and k != "flag_any" and v]
        rows.append({
            "trial": t.number, "clean_acc": t.values[0], "robust_acc": t.values[1],
            "transfer_acc": ua.get("transfer_acc"), "macs": int(ua.get("macs", t.values[2])),
            "mac_ratio": ua.get("mac_ratio"), "bitops": ua.get("bitops"), "sparsity": ua.get("sparsity"),
            "flags": ",".join(flags) or "-",
            "params": " ".join(f"{k.split('.', 1)[1]}={_fmt(v)}" for k, v in t.params.items()
                               if not k.startswith("prune.layer_sparsity.")),
        })
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A plain-text table (what `study pareto` prints)."""
    if not rows:
        return "(no rows)"
    cells = [[_fmt(r.get(c)) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Trials by state, best value per objective, Pareto set size and hypervolume."""
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    names = study.metric_names or ["clean_acc", "robust_acc", "cost"]
    best = {}
    for i, (n, d) in enumerate(zip(names, study.directions)):
        if done:
            pick = max if d == optuna.study.StudyDirection.MAXIMIZE else min
            t = pick(done, key=lambda t: t.values[i])
            best[n] = {"value": t.values[i], "trial": t.number}
    out = {"name": study.study_name, "trials": len(trials), "by_state": {k: v for k, v in by_state.items() if v},
           "best": best, "pareto_size": len(study.best_trials) if done else 0}
    out["hypervolume"] = hypervolume(study) if done else None
    return out


def reference_point(study: optuna.Study) -> list[float]:
    """Clean and robust accuracy 0, cost = the dense model's (the worst a sensible trial can be)."""
    costs = [t.user_attrs.get("dense_macs", t.values[2]) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    cost_ref = max(costs) if costs else 1.0
    if study.metric_names and study.metric_names[2] == "bitops":
        cost_ref = cost_ref * 32 * 32
    return [0.0, 0.0, float(cost_ref) * 1.0001]


def hypervolume(study: optuna.Study) -> float:
    """Hypervolume of the feasible Pareto front, costs normalized by the dense model's."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume  # no public equivalent in Optuna 5.0

    ref = reference_point(study)
    pts = [[-t.values[0], -t.values[1], t.values[2] / ref[2]] for t in study.best_trials]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.asarray(pts, dtype=float), np.asarray([0.0, 0.0, 1.0])))
