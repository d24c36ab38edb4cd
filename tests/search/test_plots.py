"""Study figures on a hand-made study: feasibility, projections, hypervolume, importances, dashboard push."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from searchprune.search import DIRECTIONS, OBJECTIVE_NAMES, PROJECTIONS, figures, write_plots

DENSE_MACS = 1_000_000.0
MAX_MACS = 400_000.0
MIN_CLEAN = 0.75


def _study(tmp_path: Path, *, constraints: bool = True, n: int = 12) -> optuna.Study:
    """A 3-objective study of made-up trials shaped like real ones (accuracy falls with sparsity)."""
    rng = random.Random(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(directions=DIRECTIONS, storage=f"sqlite:///{tmp_path / 'plots.db'}",
                                study_name="handmade")
    study.set_metric_names(OBJECTIVE_NAMES["macs"])
    dists = {"prune.sparsity": FloatDistribution(0.3, 0.9),
             "finetune.recipe": CategoricalDistribution(["none", "fast"])}
    for _ in range(n):
        s, recipe = rng.uniform(0.3, 0.9), rng.choice(["none", "fast"])
        clean = 0.9 - 0.3 * s**2 + rng.uniform(-0.02, 0.02)
        robust = 0.5 - 0.2 * s + (0.1 if recipe == "fast" else 0.0)
        macs = DENSE_MACS * (1 - s)
        cons = {"max_macs": (macs - MAX_MACS) / MAX_MACS, "min_clean_acc": MIN_CLEAN - clean}
        study.add_trial(optuna.trial.create_trial(
            values=[clean, robust, macs], params={"prune.sparsity": s, "finetune.recipe": recipe},
            distributions=dists, user_attrs={"dense_macs": DENSE_MACS, "macs": macs},
            constraints=cons if constraints else None))
    # a pruned trial and a failed one, as a real study has; no figure may trip over them
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


def _infeasible(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if any(v > 0 for v in t.constraints.values())}


def _trace_numbers(trace) -> set[int]:
    # each point's hover text is the trial's JSON, starting with {"number": N, ...}
    import json

    return {json.loads(str(txt).replace("<br>", ""))["number"] for txt in (trace.text or ())}


def test_pareto_front_shows_infeasible_trials_apart(tmp_path):
    study = _study(tmp_path)
    infeasible = _infeasible(study)
    assert 0 < len(infeasible) < 12, "the made-up study must mix feasible and infeasible trials"
    assert not infeasible & {t.number for t in study.best_trials}, "best_trials must be feasible"

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated constraints_func
        figs = figures(study)
    names = OBJECTIVE_NAMES["macs"]
    projections = [f"pareto_{names[i]}_vs_{names[j]}" for i, j in PROJECTIONS]
    for name in ["pareto_3d", *projections]:
        fig = figs[name][0]
        grey = [tr for tr in fig.data if "Infeasible Trial" in (tr.hovertemplate or "")]
        assert len(grey) == 1, name
        assert _trace_numbers(grey[0]) == infeasible, name
        others = set().union(*(_trace_numbers(tr) for tr in fig.data if tr is not grey[0]))
        complete = {t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
        assert others == complete - infeasible, name
    assert figs["pareto_3d"][0].data[0].type == "scatter3d"
    assert all(figs[p][0].data[0].type == "scatter" for p in projections)


def test_hypervolume_history_counts_feasible_trials_only(tmp_path):
    feasible_hv = figures(_study(tmp_path / "a", constraints=True))["hypervolume_history"][0].data[0].y
    all_hv = figures(_study(tmp_path / "b", constraints=False))["hypervolume_history"][0].data[0].y
    assert len(feasible_hv) == len(all_hv) == 12  # one point per completed trial
    assert list(all_hv) == sorted(all_hv) and all_hv[-1] > 0  # never decreases
    assert feasible_hv[-1] < all_hv[-1]  # infeasible trials add nothing


def test_write_plots_files_and_dashboard(tmp_path):
    pytest.importorskip("matplotlib")
    study = _study(tmp_path)
    out = tmp_path / "plots"
    written = write_plots(study, out)
    names = {p.stem for p in written}
    expected = {"pareto_3d", "pareto_robust_acc_vs_clean_acc", "pareto_macs_vs_robust_acc",
                "pareto_macs_vs_clean_acc", "hypervolume_history",
                "importance_clean_acc", "importance_robust_acc", "importance_macs"}
    assert names == expected
    for stem in expected:
        html, png = out / f"{stem}.html", out / f"{stem}.png"
        assert html.stat().st_size > 1000 and "plotly.min.js" in html.read_text()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, stem
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # offline: no CDN needed

    # pushed into the dashboard's storage under stable ids; pushing again overwrites
    def pushed() -> dict[str, str]:
        return get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))

    assert set(pushed()) == expected
    write_plots(study, out, png=False)
    assert set(pushed()) == expected


def test_write_plots_without_constraints_or_completed_trials(tmp_path):
    study = _study(tmp_path, constraints=False)
    figs = figures(study)
    assert not any("Infeasible" in (tr.hovertemplate or "") for tr in figs["pareto_3d"][0].data)
    empty = optuna.create_study(directions=DIRECTIONS, study_name="empty",
                                storage=f"sqlite:///{tmp_path / 'plots.db'}")
    empty.set_metric_names(OBJECTIVE_NAMES["macs"])
    empty.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    written = write_plots(empty, tmp_path / "empty", push_to_dashboard=False)
    assert {p.stem for p in written} >= {"pareto_3d", "hypervolume_history"}
