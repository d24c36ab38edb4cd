"""Several worker processes on one study (journal file, real PostgreSQL) and a worker killed with SIGKILL.

Worker processes are spawned, so each imports torch and builds its own trial context: these tests
take tens of seconds and are marked slow. The PostgreSQL server is private to this module
(``_pg.postgres_server``) and skipped, with the reason, where it cannot be started.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _pg import PostgresUnavailable, postgres_server
from _tiny import tiny_study_config, trials_of
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from searchprune.search import create_study, optimize
from searchprune.search.recovery import retry_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")


def _two_workers(tmp_path: Path, base: Path, storage: str, name: str,
                 n: int = 5) -> list[optuna.trial.FrozenTrial]:
    cfg = tiny_study_config(tmp_path, base, name=name, n_trials=n, baselines=["dense"])
    create_study(cfg, storage=storage)
    optimize(name, storage, workers=2, quiet=True)
    return trials_of(storage, name)


def _check_shared_study(trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    # two workers finishing at the same moment may both start one more trial: the later one finds
    # its slot taken, is pruned as surplus at once and counts nowhere
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.PRUNED and not t.params for t in surplus)
    trials = [t for t in trials if t not in surplus]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == n and max(numbers) < n + len(surplus), numbers
    assert len({t._trial_id for t in trials}) == n
    reasons = [t.user_attrs.get("fail_reason") for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, reasons
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1  # the enqueued baseline ran once
    # the workers' samplers are seeded apart, so neither repeats the other's proposals
    searched = [tuple(sorted(t.params.items())) for t in trials if not t.user_attrs.get("baseline")]
    assert not [p for p, c in Counter(searched).items() if c > 1]
    assert len({t.user_attrs["seed"] for t in trials}) == n


def test_two_workers_on_a_journal_file(tmp_path, base):
    storage = str(tmp_path / "runs" / "x.log")
    _check_shared_study(_two_workers(tmp_path, base, storage, "journal2"), 5)
    assert Path(storage).stat().st_size > 0


def test_two_workers_on_postgresql(tmp_path, base, postgres_url):
    assert postgres_url.startswith("postgresql+psycopg://")
    _check_shared_study(_two_workers(tmp_path, base, postgres_url, "pg2"), 5)


def test_independent_processes_started_together_repeat_no_point(tmp_path, base):
    """Cluster workers: two separate ``study optimize`` runs (each one worker, index 0) opened on one
    journal at the same moment draw from different seeds (samplers.make_run_sampler)."""
    import multiprocessing

    storage = str(tmp_path / "together.log")
    cfg = tiny_study_config(tmp_path, base, name="together", n_trials=6, baselines=["dense"],
                            sampler={"name": "random", "seed": 5})
    create_study(cfg, storage=storage)
    optimize("together", storage, n_trials=1, quiet=True, progress=False)  # trains the base once, runs the baseline
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=optimize, args=("together", storage),
                         kwargs={"n_trials": 6, "quiet": True, "progress": False}) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    _check_shared_study(trials_of(storage, "together"), 6)


def _heartbeats(db: Path) -> list[tuple[int, str]]:
    """(trial_id, heartbeat time) rows Optuna's RDB storage keeps for running trials."""
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute("SELECT trial_id, heartbeat FROM trial_heartbeats").fetchall()
        except sqlite3.OperationalError:  # schema not there yet
            return []


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def kill_storage(request, tmp_path):
    """A storage URL for the kill -9 test (PostgreSQL: the module's throw-away server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kill.db'}"
    if request.param == "journal":
        return str(tmp_path / "kill.log")
    return request.getfixturevalue("postgres_url")


def test_killed_worker_trial_is_failed_and_retried(tmp_path, base, monkeypatch, kill_storage):
    """SIGKILL mid-trial leaves a RUNNING trial. On RDB storages (SQLite, PostgreSQL) the next optimize
    fails it once its heartbeat is older than the grace period and RetryHeartbeatStaleTrialCallback
    re-runs the same params (same seed) as a new trial; on a journal file the next optimize sees that
    the trial's worker process is gone, fails it and re-queues the same params and seed."""
    monkeypatch.setenv("SEARCHPRUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SEARCHPRUNE_HEARTBEAT_GRACE", "2")
    storage = kill_storage
    rdb = "://" in storage
    # one PostgreSQL server serves every test of the module: a name per storage kind
    name = "killed_" + (storage.split(":")[0].split("+")[0] if rdb else "journal")
    cfg = tiny_study_config(tmp_path, base, name=name, n_trials=2,
                            space={"prune.sparsity": {"low": 0.3, "high": 0.9}},
                            defaults={"prune": {"method": "magnitude", "sparsity": 0.5},
                                      "finetune": {"recipe": "fast", "epochs": 2, "lr": 0.02}},
                            data={"dataset": "synthetic", "train_size": 512, "val_size": 128, "test_size": 64,
                                  "batch_size": 32, "eval_batch_size": 128})
    create_study(cfg, storage=storage)
    from searchprune._torch import get_device
    from searchprune.data import make_splits
    from searchprune.search import ensure_base_model

    # trained here, so the worker starts its first trial at once
    ensure_base_model(cfg, make_splits(cfg.data), get_device("cpu"), progress=False)

    # the worker stalls inside its first fine-tune (after writing a marker), so the kill always lands
    # mid-trial however fast the machine is; the retry below runs unpatched in this process
    marker = tmp_path / "stalled"
    script = textwrap.dedent(f"""
        import pathlib, time
        import searchprune.trial as core
        def stalled(*args, **kwargs):
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(3600)
        core._finetune = stalled
        from searchprune.search import optimize
        optimize({name!r}, {storage!r}, quiet=True)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mid_trial() -> bool:
        if not marker.exists():
            return False
        running = [t for t in trials_of(storage, name) if t.state == TrialState.RUNNING and t.params]
        if storage.startswith("sqlite"):  # its heartbeat thread wrote once and its params were suggested
            return bool(running and _heartbeats(Path(storage.removeprefix("sqlite:///"))))
        return bool(running) and "worker_pid" in running[0].user_attrs

    try:
        deadline = time.monotonic() + 120
        while not mid_trial():
            assert worker.poll() is None, f"worker exited ({worker.returncode}) before a trial started"
            assert time.monotonic() < deadline, "no trial started within 120 s"
            time.sleep(0.05)
        if storage.startswith("postgresql"):
            time.sleep(1.5)  # one heartbeat interval: the first beat is in the table
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    (killed,) = trials_of(storage, name)
    assert killed.state == TrialState.RUNNING and worker.returncode == -signal.SIGKILL
    assert killed.user_attrs["worker_pid"] == worker.pid

    if rdb:
        time.sleep(3)  # > grace period: the heartbeat is stale now
    optimize(name, storage, quiet=True)  # the journal needs no wait: the worker's pid is gone
    trials = trials_of(storage, name)
    assert trials[0].state == TrialState.FAIL
    retries = [t for t in trials if retry_of(t) == 0]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.number == 1 and retry.state == TrialState.COMPLETE
    if rdb:
        assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]
    else:
        assert trials[0].user_attrs["fail_reason"].startswith("worker gone")
    assert retry.params == killed.params and retry.user_attrs["seed"] == killed.user_attrs["seed"]
    # the killed trial's retry takes its place: the target of 2 finished trials means 2 completed
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
