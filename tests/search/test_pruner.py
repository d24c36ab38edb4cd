"""MO-ASHA: the pure promotion rule on hand-made rungs, an in-memory study, two worker processes on a journal file."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from searchprune.errors import ConfigError
from searchprune.search.pruner import (
    DIRECTIONS,
    MOASHAConfig,
    MOASHAPruner,
    promote,
    rung_records,
)

MAX2 = ["maximize", "maximize"]


def _promoted(records, eta=3, directions=MAX2, **kw):
    """Trial numbers promoted when each record in turn decides against all the others."""
    return {num for num, vec in records if promote(records, (num, vec), eta, directions, **kw)[0]}


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


def test_rungs():
    assert MOASHAConfig().rungs == (0.25, 0.75, 2.25)  # 6.75 > max_epochs 3
    assert MOASHAConfig(min_epochs=1, eta=3, max_epochs=9).rungs == (1.0, 3.0)  # at max_epochs the trial just ends
    assert MOASHAConfig(min_epochs=1, eta=2, max_epochs=4.5).rungs == (1.0, 2.0, 4.0)
    assert MOASHAConfig().min_trials == 3
    assert MOASHAConfig(min_trials_per_rung=5).min_trials == 5


@pytest.mark.parametrize("kwargs, match", [
    ({"eta": 1}, "pruner.eta = 1"),
    ({"eta": 2.5}, "pruner.eta = 2.5"),
    ({"min_epochs": 0}, "pruner.min_epochs = 0"),
    ({"max_epochs": 0.25}, "pruner.max_epochs = 0.25"),
    ({"min_trials_per_rung": 0}, "pruner.min_trials_per_rung = 0"),
    ({"directions": ("maximize",)}, "one per objective"),
    ({"directions": ("maximize", "up", "minimize")}, "'up'"),
    ({"objectives": ("a", "a", "b")}, "distinct"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MOASHAConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# the pure rule
# --------------------------------------------------------------------------------------------


def test_fewer_than_eta_are_promoted():
    worst, best = (0, (0.1, 0.1)), (1, (0.9, 0.9))
    assert promote([best], worst, 3, MAX2) == (True, "2 of 3 trials needed to rank have reached this rung: promoted")
    assert promote([], worst, 3, MAX2)[0]
    ok, reason = promote([best, (2, (0.5, 0.5))], worst, 3, MAX2)  # the third trial: now ranked, top 1 continues
    assert not ok and "front 3 of 3" in reason and "top 1 = ceil(3/3) of 3 trials continue" in reason
    assert promote([best, (2, (0.5, 0.5))], worst, 3, MAX2, min_trials=4)[0]  # a larger grace


def test_cut_between_fronts():
    # 7 trials, eta 3: the top ceil(7/3) = 3 continue; fronts {0, 1}, {2}, {3, 4}, {5, 6}
    recs = [(0, (0.9, 0.5)), (1, (0.5, 0.9)), (2, (0.5, 0.5)), (3, (0.4, 0.3)), (4, (0.3, 0.4)),
            (5, (0.1, 0.2)), (6, (0.2, 0.1))]
    assert _promoted(recs) == {0, 1, 2}
    ok, reason = promote(recs, recs[4], 3, MAX2)
    assert not ok and "front 3 of 4, behind 3 trials" in reason


def test_split_front_ranked_by_hypervolume_contribution():
    # front {A, B, C} split by the cut (6 trials, eta 3 -> 2 continue). Minimization form, reference point
    # = worst + 10% of range = (-0.02, -0.03). Exclusive contributions: B 0.4*0.4 = 0.16, A 0.3*0.17 = 0.051,
    # C 0.18*0.2 = 0.036, so B and A continue though C has the lower trial number.
    A, B, C = (5, (0.9, 0.2)), (0, (0.6, 0.6)), (1, (0.2, 0.8))
    recs = [A, B, C, (2, (0.5, 0.5)), (3, (0.1, 0.1)), (4, (0.3, 0.3))]
    assert _promoted(recs) == {5, 0}
    ok, reason = promote(recs, C, 3, MAX2)
    assert not ok and "rank 3" in reason and "hypervolume contribution" in reason
    assert promote(recs, A, 3, MAX2) == (True, "front 1 of 4 (split by the cut, ties by hypervolume contribution), "
                                               "rank 2: top 2 = ceil(6/3) of 6 trials continue")


def test_duplicates_count_once_earlier_trial_first():
    recs = [(3, (0.9, 0.9)), (1, (0.9, 0.9)), (2, (0.1, 0.1))]
    assert _promoted(recs) == {1}


def test_directions_are_respected():
    # (clean, robust, cost): trial 0 is the most accurate and the cheapest, trial 2 the least accurate and the dearest
    recs = [(0, (0.9, 0.6, 50.0)), (1, (0.8, 0.5, 100.0)), (2, (0.5, 0.2, 200.0))]
    assert _promoted(recs, directions=list(DIRECTIONS)) == {0}
    assert _promoted(recs, directions=["minimize", "minimize", "maximize"]) == {2}
    min_min_max = [optuna.study.StudyDirection.MINIMIZE] * 2 + [optuna.study.StudyDirection.MAXIMIZE]
    assert _promoted(recs, directions=min_min_max) == {2}
    # cost maximized too: nobody dominates, the split front is ranked by hypervolume contribution
    assert len(_promoted(recs, directions=["maximize"] * 3)) == 1


def test_candidate_replaces_its_stale_record_and_nan_peers_are_ignored():
    recs = [(0, (0.1, 0.1)), (1, (0.5, 0.5)), (2, (float("nan"), 0.9))]
    assert promote(recs, (0, (0.9, 0.9)), 2, MAX2)[0]  # its own new values count, not the record
    assert promote(recs, (0, (0.9, 0.9)), 2, MAX2)[1].endswith("of 2 trials continue")  # NaN record not ranked
    with pytest.raises(ConfigError, match="trial 7"):
        promote(recs, (7, (float("nan"), 0.1)), 2, MAX2)
    with pytest.raises(ConfigError, match="eta = 1"):
        promote(recs, (7, (0.1, 0.1)), 1, MAX2)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_random_rungs_promote_exactly_the_top_fraction(d, seed):
    rng = np.random.default_rng(seed)
    n, eta = int(rng.integers(3, 20)), int(rng.integers(2, 5))
    vecs = rng.integers(0, 6, size=(n, d)).astype(float)  # coarse values: duplicates and ties
    recs = [(int(i), tuple(v)) for i, v in zip(rng.permutation(100)[:n], vecs)]
    won = _promoted(recs, eta=eta, directions=["minimize"] * d, min_trials=1)
    assert len(won) == math.ceil(n / eta)
    for num, vec in recs:  # no pruned trial dominates a promoted one
        if num not in won:
            assert not any(np.all(np.asarray(vec) <= w) and np.any(np.asarray(vec) < w) for m, w in recs if m in won)


# --------------------------------------------------------------------------------------------
# an in-memory study
# --------------------------------------------------------------------------------------------


def _metrics(q: float, epochs: float) -> dict[str, float]:
    """A quality q in [0, 1] that improves with fine-tuning; cost falls with q, so q orders every objective."""
    return {"clean_acc": q * epochs / (epochs + 1), "robust_acc": q / 2 * epochs / (epochs + 1),
            "cost": 100.0 * (1 - q), "images": 64.0}


QS = (0.5, 0.6, 0.4, 0.9, 0.1, 0.7, 0.55)


def _enqueued_study(pruner: MOASHAPruner, baselines: tuple[float, ...] = ()) -> list:
    """Runs the trials ``QS`` in order (rungs 1 and 2 of 4 epochs); those in ``baselines`` are enqueued
    as baselines. Returns the finished trials."""
    study = optuna.create_study(directions=list(DIRECTIONS))

    def objective(trial):
        q = trial.suggest_float("q", 0.0, 1.0)
        on_rung = pruner.reporter(trial)
        for k, r in enumerate(on_rung.rungs):
            on_rung(k, r, _metrics(q, r))
        m = _metrics(q, 4)
        return m["clean_acc"], m["robust_acc"], m["cost"]

    for q in QS:
        study.enqueue_trial({"q": q}, user_attrs={"baseline": True} if q in baselines else None)
    study.optimize(objective, n_trials=len(QS))
    return study.get_trials()


def test_in_memory_study_prunes_the_expected_trials():
    pruner = MOASHAPruner(MOASHAConfig(min_epochs=1, eta=2, max_epochs=4), log=None)  # rungs (1, 2)
    # by hand, eta 2 (grace: 2 trials): rung 0 ranks .5 .6 | .4 -> rank 3 of 3, top 2: pruned | .9 | .1 -> 5 of 5,
    # top 3: pruned | .7 -> 2 of 6 | .55 -> 4 of 7, top 4: promoted;
    # rung 1 (trials 0 1 3 5 6): .55 -> 4 of 5, top 3: pruned
    trials = _enqueued_study(pruner)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.PRUNED]
    t2, t6 = trials[2], trials[6]
    assert t2.user_attrs["rung_0_clean_acc"] == pytest.approx(0.2) and t2.user_attrs["rung_0_cost"] == 60.0
    assert t2.user_attrs["rung_0_epochs"] == 1.0 and t2.user_attrs["rung_0_images"] == 64.0
    assert t2.user_attrs["rung_0_seen"] == 3 and t2.user_attrs["rung_0_peers"] == [0, 1]
    assert t2.user_attrs["rung_0_promoted"] is False and "rung_1_clean_acc" not in t2.user_attrs
    assert t2.user_attrs["pruned_reason"].startswith("MO-ASHA rung 0 (1 epochs): front 3 of 3")
    assert t6.user_attrs["rung_0_promoted"] is True and t6.user_attrs["rung_1_promoted"] is False
    assert t6.user_attrs["rung_1_peers"] == [0, 1, 3, 5]
    assert t6.user_attrs["pruned_reason"] == ("MO-ASHA rung 1 (2 epochs): front 4 of 5, behind 3 trials of better "
                                              "fronts: top 3 = ceil(5/2) of 5 trials continue")
    assert "pruned_reason" not in trials[5].user_attrs and trials[5].user_attrs["rung_1_promoted"] is True
    assert [n for n, _ in rung_records(trials, 1, MOASHAConfig().objectives)] == [0, 1, 3, 5, 6]


def test_a_baseline_is_never_pruned_but_still_ranks_the_others():
    """The same enqueued trials as above, with trial 2 (pruned there at rung 0) a baseline: it runs in full
    and records where it would have been cut; its rung records still count for trial 6's cut."""
    logs: list[str] = []
    pruner = MOASHAPruner(MOASHAConfig(min_epochs=1, eta=2, max_epochs=4), log=logs.append)
    trials = _enqueued_study(pruner, baselines=(0.4,))
    t2 = trials[2]
    assert t2.state == TrialState.COMPLETE and "pruned_reason" not in t2.user_attrs
    assert t2.user_attrs["rung_0_promoted"] is False and t2.user_attrs["rung_0_kept_baseline"] is True
    assert "rung_1_clean_acc" in t2.user_attrs  # it went on fine-tuning and reported the next rung
    assert any(line.startswith("trial 2 kept (a baseline runs in full") for line in logs)
    assert trials[4].state == TrialState.PRUNED  # not a baseline: cut as before
    assert 2 in trials[6].user_attrs["rung_1_peers"]  # the baseline's rung-1 record ranks later trials


def test_reporter_rejects_bad_calls():
    study = optuna.create_study(directions=list(DIRECTIONS))
    trial = study.ask()
    on_rung = MOASHAPruner().reporter(trial)
    with pytest.raises(ConfigError, match="rung 3: expected an index 0..2"):
        on_rung(3, 9.0, _metrics(0.5, 9.0))
    with pytest.raises(ConfigError, match=r"missing objective\(s\) \['cost'\]"):
        on_rung(0, 0.25, {"clean_acc": 0.5, "robust_acc": 0.2})
    with pytest.raises(ConfigError, match="finite"):
        on_rung(0, 0.25, {"clean_acc": float("nan"), "robust_acc": 0.2, "cost": 1.0})


# --------------------------------------------------------------------------------------------
# two worker processes on one journal file
# --------------------------------------------------------------------------------------------

N_PER_WORKER = 8
CFG = MOASHAConfig(min_epochs=1, eta=3, max_epochs=9)  # rungs (1, 3)


def _storage(path: str) -> JournalStorage:
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def _synthetic(x: float, y: float, epochs: float) -> dict[str, float]:
    g = epochs / (epochs + 1)  # x helps accuracy; y buys robustness with cost
    return {"clean_acc": x * g, "robust_acc": x * y * g, "cost": 10.0 * (1 + y)}


def _worker(path: str, worker: int, barrier) -> None:  # noqa: ANN001 - a multiprocessing.Barrier proxy
    study = optuna.load_study(study_name="mo", storage=_storage(path),
                              sampler=optuna.samplers.RandomSampler(seed=worker))
    pruner = MOASHAPruner(CFG)

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        # lock step: the i-th trials of both workers start together, so from each worker's second trial on
        # the first rung holds records of the other process (written into the journal, not shared memory)
        barrier.wait(timeout=60)
        trial.set_user_attr("worker", worker)
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        on_rung = pruner.reporter(trial)
        for k, r in enumerate(on_rung.rungs):
            on_rung(k, r, _synthetic(x, y, r))
        m = _synthetic(x, y, CFG.max_epochs)
        return m["clean_acc"], m["robust_acc"], m["cost"]

    study.optimize(objective, n_trials=N_PER_WORKER)


def test_two_processes_rank_against_each_others_records(tmp_path: Path):
    path = str(tmp_path / "journal.log")
    optuna.create_study(study_name="mo", storage=_storage(path), directions=list(DIRECTIONS))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(path, w, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    trials = {t.number: t for t in optuna.load_study(study_name="mo", storage=_storage(path)).get_trials()}
    assert len(trials) == 2 * N_PER_WORKER
    worker = {n: t.user_attrs["worker"] for n, t in trials.items()}
    states = [t.state for t in trials.values()]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states and TrialState.FAIL not in states
    records = {k: dict(rung_records(list(trials.values()), k, CFG.objectives)) for k in range(len(CFG.rungs))}
    first_of = {w: min(n for n in trials if worker[n] == w) for w in (0, 1)}
    seen_total = seen_own = 0
    for n, t in trials.items():
        a = t.user_attrs
        decided = [k for k in range(len(CFG.rungs)) if f"rung_{k}_promoted" in a]
        assert decided == list(range(len(decided))) and decided  # every trial reaches rung 0, rungs in order
        for k in decided:
            peers = a[f"rung_{k}_peers"]
            seen_total += len(peers)
            seen_own += sum(worker[p] == worker[n] for p in peers)
            # the decision recomputed from storage: the peers' rung values never change once written
            ok, reason = promote([(p, records[k][p]) for p in peers], (n, records[k][n]), CFG.eta, CFG.directions)
            assert ok == a[f"rung_{k}_promoted"]
            if not ok:
                assert a["pruned_reason"] == f"MO-ASHA rung {k} ({CFG.rungs[k]:g} epochs): {reason}"
        last_ok = a[f"rung_{decided[-1]}_promoted"]
        assert t.state == (TrialState.COMPLETE if last_ok else TrialState.PRUNED)
        assert last_ok <= (len(decided) == len(CFG.rungs))  # a promoted trial went on to the next rung
        if n != first_of[worker[n]]:  # ranked at rung 0 against at least one record of the other process
            assert any(worker[p] != worker[n] for p in t.user_attrs["rung_0_peers"])
        if t.state == TrialState.PRUNED:
            assert any(worker[p] != worker[n] for p in t.user_attrs["rung_0_peers"])
    assert seen_total > seen_own > 0
