"""Soak (issue 12, "Load"): 3 workers, 30 short trials, one worker killed with SIGKILL and restarted
halfway, on a journal file and on a throw-away PostgreSQL on loopback.

The study must end with exactly 30 COMPLETE trials, no parameter set run twice except a killed trial
and its retry, and the Pareto set Optuna reports equal to the one recomputed from the stored values.
Marked slow (CI runs it); about a minute of wall time per storage once the base model exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import optuna
import pytest
from _pg import PostgresUnavailable, postgres_server
from _tiny import tiny_study_config, trials_of
from optuna.trial import TrialState

from searchprune._torch import get_device
from searchprune.data import make_splits
from searchprune.search import create_study, ensure_base_model, make_storage
from searchprune.search.recovery import retry_of
from searchprune.search.study import DIRECTIONS

pytestmark = pytest.mark.slow

N = 30


@pytest.fixture(params=["journal", "postgresql"])
def storage(request, tmp_path):
    if request.param == "journal":
        yield str(tmp_path / "soak.log")
        return
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")


def _dominates(a: list[float], b: list[float]) -> bool:
    sign = [1 if d == "maximize" else -1 for d in DIRECTIONS]
    better_eq = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return better_eq and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def _spawn(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_three_workers_one_killed_and_restarted(tmp_path, base, storage):
    cfg = tiny_study_config(tmp_path, base, name="soak", n_trials=N,
                            defaults={"prune": {"method": "magnitude", "sparsity": 0.5},
                                      "finetune": {"recipe": "fast", "epochs": 0.5, "lr": 0.02}})
    create_study(cfg, storage=storage)
    ensure_base_model(cfg, make_splits(cfg.data), get_device("cpu"), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEARCHPRUNE_THREADS": "1",
           "SEARCHPRUNE_HEARTBEAT_INTERVAL": "1", "SEARCHPRUNE_HEARTBEAT_GRACE": "3"}
    run = f"from searchprune.search import optimize\noptimize('soak', {storage!r}, workers={{w}}, quiet=True)\n"
    parent = _spawn(run.format(w=3), env)
    procs = [parent]
    t0 = time.monotonic()
    victim = None
    try:
        # halfway, kill a worker in the middle of a trial. Which trial it was is read after the kill
        # (the one its dead process left RUNNING): on a fast machine a trial seen running a moment ago
        # may have finished before the signal lands. A kill between two trials loses nothing; the
        # kill is tried again on another worker, a few times at most.
        for _attempt in range(5):
            while True:
                assert parent.poll() is None, f"optimize exited ({parent.returncode}) early: {parent.stderr.read()}"
                assert time.monotonic() - t0 < 300, "the study did not get halfway in 300 s"
                trials = trials_of(storage, "soak")
                done = sum(t.state == TrialState.COMPLETE for t in trials)
                running = [t for t in trials if t.state == TrialState.RUNNING and t.params
                           and t.user_attrs.get("worker_pid", parent.pid) != parent.pid]
                if done >= N // 2 and running:
                    break
                time.sleep(0.05)
            pid = running[0].user_attrs["worker_pid"]
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)  # a trial is only RUNNING afterwards if the dead process left it so
            left = [t for t in trials_of(storage, "soak")
                    if t.state == TrialState.RUNNING and t.user_attrs.get("worker_pid") == pid]
            if left:
                victim = left[0]
                break
        assert victim is not None, "five kills all landed between trials"
        # one restarted worker, as an operator would restart the killed one
        procs.append(_spawn(run.format(w=1), env))
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    restarted = procs[1:]
    for p in [parent, *restarted]:
        assert p.returncode == 0, p.stderr.read()

    trials = trials_of(storage, "soak")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    retried = {retry_of(t) for t in trials} - {None}
    # every other trial is the killed one (failed, then retried) or a surplus start that counted nowhere
    def accounted(t: optuna.trial.FrozenTrial) -> bool:
        surplus = t.state == TrialState.PRUNED and t.user_attrs.get("surplus") and not t.params
        return bool(surplus or (t.state == TrialState.FAIL and t.number in retried))

    assert all(accounted(t) for t in others), [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in others]
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL and killed.number in retried
    (retry,) = [t for t in trials if retry_of(t) == killed.number]
    # the retry repeats every parameter the killed trial had drawn; a kill that lands between two
    # suggest calls leaves the killed trial with only the first ones, and the retry draws the rest
    assert retry.state == TrialState.COMPLETE and killed.params
    assert killed.params.items() <= retry.params.items(), (killed.params, retry.params)

    # no parameter set twice, except a trial and its retry
    by_params = defaultdict(list)
    for t in trials:
        if t.params:
            by_params[tuple(sorted(t.params.items()))].append(t)
    for group in by_params.values():
        numbers = {t.number for t in group}
        assert len(group) == 1 or all(t.number in retried or retry_of(t) in numbers for t in group), \
            [t.number for t in group]

    # the Pareto set Optuna reports is the one recomputed from the stored values
    study = optuna.load_study(study_name="soak", storage=make_storage(storage))
    front = {t.number for t in complete if not any(_dominates(o.values, t.values) for o in complete)}
    assert {t.number for t in study.best_trials} == front and front
    kind = storage.split("://")[0] if "://" in storage else "journal"
    print(f"soak on {kind}: {len(trials)} trials, {time.monotonic() - t0:.0f} s")
