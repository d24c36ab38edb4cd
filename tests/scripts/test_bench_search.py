"""The search benchmark's bookkeeping: hypervolume curves and which searched points dominate a seed
recipe. The studies themselves are exercised by the study tests; here only the arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "scripts" / "bench_search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_search"] = module
    spec.loader.exec_module(module)
    return module


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
