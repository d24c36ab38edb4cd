"""The search layer: everything that knows Optuna.

- :mod:`.space`: the search space and its one ``when`` walker (suggest, replay, flat params -> TrialParams);
- :mod:`.storage`, :mod:`.samplers` (a registry), :mod:`.baselines` (a table of seed recipes);
- :mod:`.study`: validation at ``study create``, creation and loading;
- :mod:`.objective`: the Optuna objective (suggest, run the core, store attrs, checkpoints, artifacts);
- :mod:`.optimize`: one process or several workers sharing the storage;
- :mod:`.reports`, :mod:`.export`, :mod:`.plots` (:mod:`.plot_data`), :mod:`.report`: what a study found,
  a chosen model, figures, the one-page HTML report;
- :mod:`.certify`: the front re-measured on held-out test images with the full attack suite.

Layering: this package imports :mod:`searchprune.trial` and below, never the CLI.
"""

from __future__ import annotations

from .baselines import BASELINES, Baseline, baseline_trials, list_baselines, register_baseline
from .certify import AttackSpec, CertifyReport, certify_candidates, certify_study, parse_attack
from .export import (
    ExportMismatch,
    LoadedExport,
    Rule,
    evaluate_export,
    export_trial,
    load,
    load_export,
    parse_rule,
    select_trial,
    split_fingerprint,
)
from .objective import Objective, build_context, ensure_base_model, prunable_layer_names
from .optimize import RunFailed, WorkerSpec, finished_trials, optimize
from .plots import PROJECTIONS, figures, write_plots
from .report import write_report
from .reports import (
    CERTIFIED_ATTR,
    TABLE_COLUMNS,
    certified_attrs,
    cost_kind,
    format_table,
    hypervolume,
    pareto_rows,
    reference_point,
    study_hypervolume,
    study_summary,
)
from .samplers import SAMPLERS, list_samplers, make_sampler, register_sampler
from .space import (
    combinations,
    replay_params,
    strip_tag,
    suggest,
    suggest_params,
    trial_params_from_flat,
    validate_space,
    walk,
)
from .storage import default_storage_url, make_storage, mask_url, resolve_storage
from .study import (
    CONFIG_ATTR,
    DIRECTIONS,
    OBJECTIVE_NAMES,
    create_study,
    load_study,
    stored_config,
    validate_names,
    validate_study,
)

__all__ = [
    # space
    "walk", "suggest", "suggest_params", "replay_params", "validate_space", "combinations", "strip_tag",
    "trial_params_from_flat",
    # storage, samplers, baselines
    "make_storage", "default_storage_url", "resolve_storage", "mask_url", "SAMPLERS", "make_sampler",
    "register_sampler",
    "list_samplers", "Baseline", "BASELINES", "register_baseline", "list_baselines", "baseline_trials",
    # study
    "OBJECTIVE_NAMES", "DIRECTIONS", "CONFIG_ATTR", "validate_names", "validate_study",
    "create_study", "load_study", "stored_config",
    # objective and optimization
    "Objective", "build_context", "ensure_base_model", "prunable_layer_names", "WorkerSpec", "optimize",
    "finished_trials", "RunFailed",
    # reports, export, plots
    "TABLE_COLUMNS", "pareto_rows", "format_table", "study_summary", "reference_point", "hypervolume",
    "study_hypervolume", "Rule", "parse_rule", "select_trial", "export_trial", "load", "load_export", "LoadedExport",
    "evaluate_export",
    "ExportMismatch", "split_fingerprint", "PROJECTIONS", "figures", "write_plots", "write_report", "cost_kind",
    # certify
    "CERTIFIED_ATTR", "certified_attrs", "AttackSpec", "CertifyReport", "certify_candidates", "certify_study",
    "parse_attack",
]
