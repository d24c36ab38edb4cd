"""The search benchmark's bookkeeping: hypervolume curves and which searched points dominate a seed
recipe. The studies themselves are exercised by the study tests; here only the arithmetic."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import optuna
import pytest
from _scripts import ROOT, load_script
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_search")


def _trial(number: int, clean: float, robust: float, macs: float,
           state: TrialState = TrialState.COMPLETE, violation: float = 0.0) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, values=[clean, robust, macs] if state == TrialState.COMPLETE else None,
                     params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                     system_attrs={"constraints": [violation]})
    t.number = number
    return t


def test_hypervolume_of_one_point_is_its_box(bench: ModuleType) -> None:
    # box from (0, 0, 1): clean 0.8 x PGD 0.5 x (1 - 0.25)
    assert bench.hypervolume([_trial(0, 0.8, 0.5, 25.0)], dense_macs=100.0) == pytest.approx(0.8 * 0.5 * 0.75)


def test_hypervolume_ignores_infeasible_and_unfinished(bench: ModuleType) -> None:
    good = _trial(0, 0.8, 0.5, 25.0)
    infeasible = _trial(1, 0.9, 0.9, 10.0, violation=0.3)
    pruned = _trial(2, 0.0, 0.0, 0.0, state=TrialState.PRUNED)
    assert bench.hypervolume([good, infeasible, pruned], 100.0) == pytest.approx(0.3)


def test_hv_curve_is_monotone_and_repeats_over_pruned_trials(bench: ModuleType) -> None:
    trials = [_trial(0, 0.5, 0.2, 50.0), _trial(1, 0.0, 0.0, 0.0, state=TrialState.PRUNED),
              _trial(2, 0.8, 0.5, 25.0), _trial(3, 0.4, 0.1, 90.0)]
    curve = bench.hv_curve(trials, 100.0)
    assert curve[0] == pytest.approx(0.05) and curve[1] == curve[0]
    assert curve[2] == pytest.approx(0.3) and curve[3] == curve[2]  # the last point is dominated


def test_domination_needs_one_strict_improvement(bench: ModuleType) -> None:
    recipe = {"name": "hydra@0.8", "clean_acc": 0.8, "robust_acc": 0.6, "mac_ratio": 0.2}
    same = {"seed": 0, "trial": 1, "clean_acc": 0.8, "robust_acc": 0.6, "mac_ratio": 0.2}
    better = {"seed": 1, "trial": 7, "clean_acc": 0.8, "robust_acc": 0.65, "mac_ratio": 0.2}
    worse_macs = {"seed": 0, "trial": 3, "clean_acc": 0.9, "robust_acc": 0.7, "mac_ratio": 0.3}
    results = {"baselines": {"points": [recipe, {**recipe, "name": "failed", "robust_acc": None}]},
               "points": {"tpe": [same, better], "random": [worse_macs]}}
    (row,) = bench.domination(results)  # the failed recipe has no point to dominate
    assert row["baseline"] == "hydra@0.8"
    assert row["n_dominating"] == 1 and row["by_sampler"] == {"tpe": 1, "random": 0}
    assert row["example"]["trial"] == 7 and row["example"]["sampler"] == "tpe"


# ---- equal compute ------------------------------------------------------------------------------


def _timed(number: int, cpu_s: float, clean: float = 0.0, robust: float = 0.0, macs: float = 50.0,
           state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    t = _trial(number, clean, robust, macs, state=state)
    t.set_user_attr("cpu_s", cpu_s)
    return t


def test_cut_at_budget_drops_the_trial_that_crosses_it(bench: ModuleType) -> None:
    trials = [_timed(2, 30.0, 0.5, 0.2), _timed(0, 40.0, 0.4, 0.1), _timed(1, 20.0, state=TrialState.PRUNED),
              _timed(3, 5.0, 0.9, 0.9)]
    # trial order 0 (40), 1 (60), 2 (90), 3 (95): a budget of 80 keeps 0 and 1, not 2, and so not 3 either
    assert [t.number for t in bench.cut_at_budget(trials, 80.0)] == [0, 1]
    assert [t.number for t in bench.cut_at_budget(trials, 95.0)] == [0, 1, 2, 3]
    assert bench.cut_at_budget(trials, 39.0) == []


def test_compute_curve_counts_pruned_trials_compute(bench: ModuleType) -> None:
    trials = [_timed(0, 10.0, 0.5, 0.2, 50.0), _timed(1, 4.0, state=TrialState.PRUNED),
              _timed(2, 6.0, 0.8, 0.5, 25.0)]
    curve = bench.compute_curve(trials, 100.0)
    assert [x for x, _ in curve] == [10.0, 14.0, 20.0]
    assert [hv for _, hv in curve] == [pytest.approx(0.05), pytest.approx(0.05), pytest.approx(0.3)]
    assert bench.hv_at(curve, 9.9) == 0.0 and bench.hv_at(curve, 19.0) == pytest.approx(0.05)
    assert bench.hv_at(curve, 1e9) == pytest.approx(0.3)
    assert bench.compute_to_reach(curve, 0.3) == 20.0 and bench.compute_to_reach(curve, 0.31) is None


def test_arm_summary_and_targets(bench: ModuleType) -> None:
    budget = 100.0
    random_curves = [[(50.0, 0.2), (100.0, 0.3)], [(60.0, 0.3)]]  # final 0.3 and 0.3
    asha_curves = [[(20.0, 0.3), (90.0, 0.4)], [(45.0, 0.35), (120.0, 0.5)]]  # the 0.5 lies past the budget
    s = bench.arm_summary(asha_curves, budget, reference=0.3)
    assert s["final_hv"] == [0.4, 0.35] and s["mean"] == pytest.approx(0.375)
    assert s["to_reach_reference_s"] == [20.0, 45.0] and s["reached"] == 2
    results = {"budget_s": budget, "compute": {"random": random_curves, "tpe+asha": asha_curves},
               "test": {"random": [{"hv": 0.2}, {"hv": 0.25}], "tpe+asha": [{"hv": 0.3}, {"hv": 0.3}]},
               "states": {"random": {"complete": 3, "pruned": 0, "fail": 0},
                          "tpe+asha": {"complete": 2, "pruned": 2, "fail": 0}}}
    lines, summary = bench.compute_table(results)
    assert summary["reference_hv"] == pytest.approx(0.3)
    assert summary["targets"]["reaches_random_in_half"] is True  # 20 and 45 <= 50
    assert summary["targets"]["hv_ratio_vs_random"] == pytest.approx(1.25)
    assert any(line.startswith("| tpe+asha | 2 | 0.3750 +- 0.0354 | 0.3000 +- 0.0000 | 2 / 2 / 0 | 32 (2/2) |")
               for line in lines), lines
    assert "1.25x (target >= 1.2x: met)" in lines[-1]


def test_cpu_seconds_fall_back_to_wall_time(bench: ModuleType) -> None:
    import datetime

    t = _trial(0, 0.5, 0.2, 50.0)
    t.datetime_start = datetime.datetime(2026, 1, 1, 0, 0, 0)
    t.datetime_complete = datetime.datetime(2026, 1, 1, 0, 0, 12)
    assert bench.trial_cpu_s(t) == 12.0
    t.set_user_attr("cpu_s", 3.5)
    assert bench.trial_cpu_s(t) == 3.5


@pytest.mark.parametrize("allocation,only", [("per_layer", "prune.layer_sparsity"),
                                             ("skewed", "prune.options.depth_skew")])
def test_allocation_arms_pin_one_per_layer_parameterization(bench: ModuleType, tmp_path: Path, allocation: str,
                                                            only: str) -> None:
    from searchprune.config import load_study_config
    from searchprune.search import combinations, validate_study

    full = load_study_config(ROOT / "studies" / "fmnist_full.yaml")
    cfg = bench.bench_config(full, name="x", out=tmp_path, quick=True, n_trials=0, sampler={"name": "tpe"},
                             pgd_steps=3, asha=True, allocation=allocation)
    validate_study(cfg)  # every combination is a valid prune config
    assert cfg.pruner.name == "mo_asha" and set(cfg.space["prune.method"].choices) == set(bench.SCORED_METHODS)
    allocations = {c.get("prune.allocation@scored") for c in combinations(cfg.space)}
    assert allocations == {allocation}
    assert only in cfg.space and not any(k.endswith("@in_train") or "hydra" in k for k in cfg.space)
    other = "prune.options.depth_skew" if allocation == "per_layer" else "prune.layer_sparsity"
    # the other parameterization's parameters stay in the space but can never be active
    assert all(other not in c and f"{other}.*" not in c for c in combinations(cfg.space))


def test_small_model_keeps_the_space(bench: ModuleType) -> None:
    from searchprune.config import load_study_config
    from searchprune.search import validate_study

    full = load_study_config(ROOT / "studies" / "fmnist_full.yaml")
    small = bench.small_model_config(full)
    assert small.model.arch == "mnist_small" and small.model.train.max_batches == 150
    assert small.space == full.space and small.model.checkpoint != full.model.checkpoint
    validate_study(small)
