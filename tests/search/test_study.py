"""Studies end to end on tiny synthetic data: every sampler, constraints, pruned trials, baselines, resume.

The base model is trained once per module (``optimize`` trains it when the checkpoint is missing);
each trial is prune -> a short fine-tune -> PGD-3 on 64 validation images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from _tiny import tiny_config, tiny_study_config, trials_of, write_yaml
from optuna.trial import TrialState

from searchprune.cli import main
from searchprune.config import StudyConfig, build, to_dict
from searchprune.errors import ConfigError
from searchprune.search import (
    OBJECTIVE_NAMES,
    create_study,
    finished_trials,
    load_study,
    make_sampler,
    make_storage,
    optimize,
    pareto_rows,
    study_summary,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLERS = {
    # options make the model-based part run within 3 trials (not only the random start-up)
    "tpe": ({"n_startup_trials": 1}, optuna.samplers.TPESampler),
    "nsga2": ({"population_size": 2}, optuna.samplers.NSGAIISampler),
    "nsga3": ({"population_size": 2}, optuna.samplers.NSGAIIISampler),
    "gp": ({"n_startup_trials": 1}, optuna.samplers.GPSampler),
    "random": ({}, optuna.samplers.RandomSampler),
}


def _url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


# ---- no training needed -------------------------------------------------------------------------


def test_heartbeat_settings_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHPRUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SEARCHPRUNE_HEARTBEAT_GRACE", "3")
    store = make_storage(_url(tmp_path))
    assert (store.heartbeat_interval, store.grace_period) == (1, 3)
    monkeypatch.delenv("SEARCHPRUNE_HEARTBEAT_INTERVAL")
    monkeypatch.delenv("SEARCHPRUNE_HEARTBEAT_GRACE")
    store = make_storage(_url(tmp_path))
    assert (store.heartbeat_interval, store.grace_period) == (60, 180)
    assert make_storage(_url(tmp_path), heartbeat_interval=5).heartbeat_interval == 5


def test_gp_without_scipy_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `import scipy` raise ImportError
    with pytest.raises(ConfigError, match="sampler 'gp' needs scipy"):
        make_sampler("gp", seed=0)


def test_finished_counts_retried_failures_once(tmp_path):
    """A trial failed by a stale heartbeat and re-queued does not use up the budget; its retry does."""
    study = optuna.create_study(directions=["maximize"] * 2 + ["minimize"], storage=_url(tmp_path))
    create = optuna.trial.create_trial
    study.add_trial(create(values=[0.9, 0.5, 1.0]))                                        # 0 complete
    study.add_trial(create(state=TrialState.PRUNED))                                       # 1 pruned
    study.add_trial(create(state=TrialState.FAIL))                                         # 2 stale, retried
    study.add_trial(create(values=[0.9, 0.5, 1.0], system_attrs={"failed_trial": 2, "retry_history": [2]}))
    study.add_trial(create(state=TrialState.FAIL))                                         # 4 plain failure
    study.add_trial(create(state=TrialState.WAITING))                                      # 5 not finished
    assert finished_trials(study) == 4  # 0, 1, 3 and 4


def test_dense_baseline_pins_what_the_sampler_would_pick(tmp_path):
    """At sparsity 0 the method does not matter, so the dense point must not leave it to the sampler."""
    from searchprune.config import load_study_config
    from searchprune.search import baseline_trials

    def dense(methods: list[str]) -> list[dict]:
        space = {"prune.method": methods, "prune.sparsity": {"low": 0.3, "high": 0.9},
                 "finetune.recipe": ["none", "fast"]}
        cfg = tiny_study_config(tmp_path, tmp_path / "base.pt", baselines=["dense"], space=space)
        return baseline_trials(cfg)

    assert dense(["taylor", "magnitude"]) == [{"prune.method": "magnitude", "prune.sparsity": 0.0,
                                                "finetune.recipe": "none"}]
    # magnitude not offered: the method stays the sampler's choice
    assert dense(["taylor", "gradient"]) == [{"prune.sparsity": 0.0, "finetune.recipe": "none"}]
    full = load_study_config(Path(__file__).parents[2] / "studies" / "fmnist_full.yaml")
    dense = baseline_trials(build(StudyConfig, {**to_dict(full), "baselines": ["dense"]}))[0]
    assert dense["prune.method"] == "magnitude" and dense["prune.sparsity"] == 0.0
    assert dense["prune.granularity@scored"] == "weight" and dense["prune.allocation@scored"] == "global"


def test_a_resumed_study_does_not_replay_its_sampler(tmp_path):
    """A seeded random sampler reloaded for a resumed study must not draw its first points again."""
    from optuna.distributions import FloatDistribution

    from searchprune.search import load_study

    cfg = tiny_study_config(tmp_path, tmp_path / "base.pt", name="resume_draws")
    create_study(cfg, storage=_url(tmp_path))
    draws = []
    for _ in range(2):
        study, _ = load_study("resume_draws", _url(tmp_path))
        t = study.ask({"x": FloatDistribution(0, 1)})
        draws.append(t.params["x"])
        study.tell(t, state=TrialState.FAIL)
    assert draws[0] != draws[1]
    # two processes opening the study at once (cluster workers) see the same stored trials: the second
    # to ask is overtaken by the first and must not draw its points (same history, same stream is
    # tested on two copies of a study: test_resume.py::test_same_history_gives_the_same_proposals)
    fresh_a, _ = load_study("resume_draws", _url(tmp_path))
    fresh_b, _ = load_study("resume_draws", _url(tmp_path))
    x = FloatDistribution(0, 1)
    assert fresh_a.ask({"x": x}).params["x"] != fresh_b.ask({"x": x}).params["x"]


# ---- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_end_to_end(tmp_path, base, sampler):
    options, cls = SAMPLERS[sampler]
    if sampler == "gp":
        pytest.importorskip("scipy", reason="optuna's GPSampler needs scipy (pip install scipy)")
    cfg = tiny_study_config(tmp_path, base, name=f"s_{sampler}", n_trials=3,
                            sampler={"name": sampler, "seed": 0, "options": options})
    create_study(cfg, storage=_url(tmp_path))
    study = optimize(cfg.name, _url(tmp_path), quiet=True)
    trials = study.get_trials()
    reasons = [t.user_attrs.get("fail_reason") for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, reasons
    assert study.metric_names == OBJECTIVE_NAMES["macs"]
    for t in trials:
        clean, robust, macs = t.values
        assert 0 <= clean <= 1 and 0 <= robust <= 1 and macs == t.user_attrs["macs"] > 0
        assert set(t.params) == {"prune.sparsity", "finetune.recipe"}
    assert isinstance(load_study(cfg.name, _url(tmp_path))[0].sampler, cls)
    assert study_summary(study)["hypervolume"] > 0


@pytest.mark.filterwarnings("ignore:Fixed parameter prune.sparsity with value 0.0")  # dense: below range
def test_constraints_mark_infeasible_trials(tmp_path, base):
    from searchprune.search import figures

    dense = tiny_study_config(tmp_path, base, name="dense_probe", n_trials=1, baselines=["dense"])
    create_study(dense, storage=_url(tmp_path))
    dense_macs = optimize("dense_probe", _url(tmp_path), quiet=True).trials[0].user_attrs["dense_macs"]

    cfg = tiny_study_config(tmp_path, base, name="constrained", n_trials=3, baselines=["dense"],
                            constraints={"max_macs": 0.5 * dense_macs, "min_clean_acc": 0.01})
    study = create_study(cfg, storage=_url(tmp_path))
    study.enqueue_trial({"prune.sparsity": 0.9, "finetune.recipe": "fast"})  # well under the MAC cap
    study = optimize("constrained", _url(tmp_path), quiet=True)
    t0, t1, _ = study.get_trials()
    for t in study.get_trials():
        assert set(t.constraints) == {"max_macs", "min_clean_acc", "above_chance"}  # every trial: chance level
        cap = 0.5 * dense_macs
        assert t.constraints["max_macs"] == pytest.approx((t.user_attrs["macs"] - cap) / cap)
        assert t.constraints["min_clean_acc"] == pytest.approx(0.01 - t.values[0])
        assert t.user_attrs["feasible"] == all(v <= 0 for v in t.constraints.values())
    assert t0.user_attrs["baseline"] and t0.constraints["max_macs"] > 0 and not t0.user_attrs["feasible"]
    assert t1.user_attrs["feasible"]
    infeasible = {t.number for t in study.get_trials() if not t.user_attrs["feasible"]}
    best = {t.number for t in study.best_trials}
    assert best and not best & infeasible
    assert {r["trial"] for r in pareto_rows(study)} == best
    # the Pareto plot draws them apart, as "Infeasible Trial"
    fig = figures(study)["pareto_3d"][0]
    grey = [tr for tr in fig.data if "Infeasible Trial" in (tr.hovertemplate or "")]
    assert len(grey) == 1 and len(grey[0].x) == len(infeasible)


def test_pruned_trials_count_toward_the_target(tmp_path, base):
    """A floor below every model prunes each trial at its first rung; pruned trials are finished
    (the MO-ASHA decisions themselves are tested in test_asha.py)."""
    cfg = tiny_study_config(tmp_path, base, name="gated", n_trials=2,
                            space={"prune.sparsity": {"low": 0.3, "high": 0.9}},
                            defaults={"prune": {"method": "magnitude", "sparsity": 0.5},
                                      "finetune": {"recipe": "fast", "epochs": 1, "lr": 0.02}},
                            pruner={"name": "mo_asha", "min_epochs": 0.25, "max_epochs": 1,
                                    "floors": {"pgd_acc": 0.99}},
                            # a strong attack, so no model can reach the 0.99 floor
                            threat={"eps": 0.3, "alpha": 0.1, "steps": 3, "random_start": False})
    create_study(cfg, storage=_url(tmp_path))
    study = optimize("gated", _url(tmp_path), quiet=True)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert "floor 0.99" in t.user_attrs["pruned_reason"] and t.user_attrs["rung_0_pgd_acc"] < 0.99
        assert t.values is None and "macs" not in t.user_attrs  # stopped before the full measurement
    assert study_summary(study)["by_state"] == {"pruned": 2}
    assert len(optimize("gated", _url(tmp_path), quiet=True).trials) == 2


@pytest.mark.filterwarnings("ignore:Fixed parameter prune.sparsity with value 0.0")  # dense: below range
def test_baselines_are_the_first_trials(tmp_path, base):
    cfg = tiny_study_config(tmp_path, base, name="with_baselines", n_trials=3,
                            baselines=["dense", "shrinkbench@0.6"],
                            space={"prune.sparsity": {"low": 0.3, "high": 0.9},
                                   "finetune.recipe": ["none", "fast", "standard"]})
    study = create_study(cfg, storage=_url(tmp_path))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{"baseline": True}] * 2
    study = optimize("with_baselines", _url(tmp_path), quiet=True)
    t0, t1, t2 = study.get_trials()
    assert t0.params == {"prune.sparsity": 0.0, "finetune.recipe": "none"}
    assert t1.params == {"prune.sparsity": 0.6, "finetune.recipe": "standard"}
    assert t0.user_attrs["baseline"] and t1.user_attrs["baseline"] and "baseline" not in t2.user_attrs
    assert t0.state == t1.state == TrialState.COMPLETE
    assert t0.user_attrs["mac_ratio"] == pytest.approx(1.0)  # dense really is dense
    assert t1.user_attrs["sparsity"] == pytest.approx(0.6, abs=0.02)


@pytest.mark.parametrize("baseline, recipes, message", [
    # the space has no prune.method / prune.allocation and the defaults differ
    ("hydra", ["none", "fast", "trades"], "baselines: 'hydra' sets prune.method, prune.allocation"),
    # a value the space's choices lack
    ("shrinkbench@0.5", ["none", "fast"], "finetune.recipe='standard' (space allows: none, fast)"),
    ("nonsense", ["none", "fast"], "unknown baseline 'nonsense'"),
])
def test_unexpressible_baseline_is_refused(tmp_path, base, capsys, baseline, recipes, message):
    space = {"prune.sparsity": {"low": 0.3, "high": 0.9}, "finetune.recipe": recipes}
    cfg = tiny_config(tmp_path, base, name="refused", baselines=[baseline], space=space)
    with pytest.raises(ConfigError) as refused:
        create_study(tiny_study_config(tmp_path, base, name="refused", baselines=[baseline], space=space),
                     storage=_url(tmp_path))
    assert message in str(refused.value)
    # nothing was stored, so fixing the YAML and creating again works
    assert "refused" not in optuna.get_all_study_names(make_storage(_url(tmp_path)))
    path = write_yaml(tmp_path / "refused.yaml", cfg)
    assert main(["study", "create", "--config", str(path), "--storage", _url(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_resume_runs_only_missing_trials(tmp_path, base):
    cfg = tiny_study_config(tmp_path, base, name="resume", n_trials=2)
    create_study(cfg, storage=_url(tmp_path))
    first = optimize("resume", _url(tmp_path), quiet=True).get_trials()
    assert len(first) == 2
    optimize("resume", _url(tmp_path), n_trials=3, quiet=True)
    again = trials_of(_url(tmp_path), "resume")
    assert [t.number for t in again] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in again)
    for before, after in zip(first, again):  # the first two were not re-run
        assert (after.params, after.values, after.datetime_complete) == (before.params, before.values,
                                                                          before.datetime_complete)
    optimize("resume", _url(tmp_path), n_trials=3, quiet=True)  # target met: nothing runs
    assert len(trials_of(_url(tmp_path), "resume")) == 3
