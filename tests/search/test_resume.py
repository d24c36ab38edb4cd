"""No lost or repeated work (issue 12): resumed runs propose new points, interrupted and orphaned
trials are failed and re-queued, surplus trials never count, storages fail with one clear line.

Studies here are the tiny synthetic ones of ``_tiny.py`` (a trial takes well under a second once the
base model exists; the base model is trained once per test session). Tests that signal a real
subprocess are marked slow.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _tiny import tiny_config, tiny_study_config, trials_of, write_yaml
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from searchprune.cli import main
from searchprune.errors import ConfigError
from searchprune.search import create_study, finished_trials, make_storage, optimize
from searchprune.search import objective as objective_module
from searchprune.search.optimize import Interrupted, _Guarded
from searchprune.search.recovery import _HERE, recover_stale_trials, retry_of
from searchprune.search.samplers import run_seed
from searchprune.search.study import DIRECTIONS

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """One base checkpoint path for the session (trained by the first optimize that needs it)."""
    return tmp_path_factory.getbasetemp() / "tiny_base" / "mnist_small_synthetic.pt"


def _params(trials):
    return [tuple(sorted(t.params.items())) for t in trials]


def _queued(t: optuna.trial.FrozenTrial) -> dict:
    """The params a waiting (enqueued) trial will run with."""
    return t.system_attrs["fixed_params"]


# ---- seeds ------------------------------------------------------------------------------------


def test_run_seed_differs_by_worker_and_history_and_repeats_for_the_same():
    seeds = {run_seed(7, worker=w, n_trials=n) for w in range(3) for n in range(50)}
    assert len(seeds) == 150
    assert run_seed(7, worker=1, n_trials=4) == run_seed(7, worker=1, n_trials=4)
    assert run_seed(7, worker=0, n_trials=4) != run_seed(8, worker=0, n_trials=4)
    assert run_seed(None, worker=3, n_trials=9) is None


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_three_runs_of_two_trials_repeat_no_point(tmp_path, base, sampler):
    cfg = tiny_study_config(tmp_path, base, name=f"resume_{sampler}", sampler={"name": sampler, "seed": 0})
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    create_study(cfg, storage=storage)
    for run in (1, 2, 3):
        optimize(cfg.name, storage, n_trials=2 * run, quiet=True, progress=False)
    trials = trials_of(storage, cfg.name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len(set(_params(trials))) == 6, _params(trials)


def test_same_history_gives_the_same_proposals(tmp_path, base):
    """Two copies of one study, run the same way, propose the same points (the seeds are derived)."""
    runs = []
    for copy in ("a", "b"):
        cfg = tiny_study_config(tmp_path / copy, base, name="same", sampler={"name": "tpe", "seed": 3})
        storage = str(tmp_path / copy / "s.log")
        create_study(cfg, storage=storage)
        optimize("same", storage, n_trials=2, quiet=True, progress=False)
        optimize("same", storage, n_trials=4, quiet=True, progress=False)
        runs.append(_params(trials_of(storage, "same")))
    assert runs[0] == runs[1] and len(set(runs[0])) == 4


def test_processes_opening_the_study_together_propose_distinct_points(tmp_path):
    """Cluster workers launched at once (each its own ``study optimize --workers 1``) see one history
    and one worker index; the trial each process gets first separates their seeds."""
    from searchprune.search.samplers import SAMPLERS, make_run_sampler

    for sampler in ("random", "tpe"):
        study = _journal_study(tmp_path, name=f"together_{sampler}")
        study.enqueue_trial({"x": 0.5})  # a baseline waiting at number 0, as `study create` enqueues
        trials = study.get_trials(deepcopy=False)
        snapshot = dict(n_trials=len(trials), first_free=0, worker=0, options={})
        procs = [optuna.load_study(study_name=study.study_name, storage=study._storage,
                                   sampler=make_run_sampler(sampler, seed=11, **snapshot)) for _ in range(3)]
        points = []
        for _ in range(4):  # the processes take turns, as they would on a shared storage
            for p in procs:
                t = p.ask()
                points.append(round(t.suggest_float("x", 0.0, 1.0), 12))
                p.tell(t, [0.5, 0.5, 1.0])
        assert points[0] == 0.5  # the first process ran the enqueued trial: rank 0
        drawn = points[1:]
        assert len(set(drawn)) == len(drawn), (sampler, points)
        assert procs[0].sampler.run_seed == run_seed(11, worker=0, n_trials=1)  # a lone run's seed
        assert len({p.sampler.run_seed for p in procs}) == 3
        assert all(type(p.sampler) is type(SAMPLERS.get(sampler)(0, {})) for p in procs)  # still the study's kind


# ---- slots, interrupts and orphans (storage-level, no training) ----------------------------------


def _journal_study(tmp_path: Path, name: str = "j") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=make_storage(str(tmp_path / f"{name}.log")),
                               directions=DIRECTIONS)


def _suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("prune.sparsity", 0.3, 0.9)
    trial.set_user_attr("seed", 1000 + trial.number)


def test_a_trial_past_the_target_is_surplus_and_does_not_count(tmp_path):
    study = _journal_study(tmp_path)
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5, 1.0]))
    called = []
    guarded = _Guarded(lambda t: called.append(t) or (0.9, 0.5, 1.0), target=2, journal_heartbeat=True)
    study.optimize(guarded, n_trials=3, catch=(Exception,))
    (surplus,) = study.get_trials(states=(TrialState.PRUNED,))
    assert not called and surplus.user_attrs["surplus"] is True  # stopped after the first surplus trial
    assert "surplus" in surplus.user_attrs["fail_reason"] and finished_trials(study) == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_trial_fails_as_interrupted_and_is_requeued(tmp_path, signum):
    study = _journal_study(tmp_path)

    def interrupted(trial: optuna.Trial) -> tuple[float, float, float]:
        _suggest(trial)
        raise Interrupted(signum)

    with pytest.raises(Interrupted):
        study.optimize(_Guarded(interrupted, target=3, journal_heartbeat=True), n_trials=1, catch=(Exception,))
    failed, waiting = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    assert failed.user_attrs["interrupted"] == signal.Signals(signum).name
    assert failed.user_attrs["worker_pid"] == os.getpid()
    assert waiting.state == TrialState.WAITING and retry_of(waiting) == 0
    assert _queued(waiting) == failed.params and waiting.user_attrs["seed"] == failed.user_attrs["seed"]
    assert finished_trials(study) == 0 and failed._trial_id not in _HERE


def test_an_interrupt_inside_suggest_requeues_the_param_already_stored(tmp_path):
    """The signal can land inside ``suggest_*`` after the storage has the new param but before the
    trial's own cache does (the slow signal test hit it once): the retry repeats the stored params."""
    study = _journal_study(tmp_path)

    def interrupted(trial: optuna.Trial) -> tuple[float, float, float]:
        dist = optuna.distributions.FloatDistribution(0.3, 0.9)
        study._storage.set_trial_param(trial._trial_id, "prune.sparsity", dist.to_internal_repr(0.6), dist)
        raise Interrupted(signal.SIGINT)  # before Optuna caches the param in the trial

    with pytest.raises(Interrupted):
        study.optimize(_Guarded(interrupted, target=3, journal_heartbeat=True), n_trials=1, catch=(Exception,))
    failed, waiting = study.get_trials()
    assert failed.params == {"prune.sparsity": 0.6}
    assert waiting.state == TrialState.WAITING and _queued(waiting) == {"prune.sparsity": 0.6}


def _orphan(study: optuna.Study, **owner) -> optuna.trial.FrozenTrial:
    """A RUNNING trial as a worker leaves it when it dies (params suggested, owner attrs written)."""
    trial = study.ask()
    _suggest(trial)
    for k, v in owner.items():
        trial.set_user_attr(k, v)
    return study._storage.get_trial(trial._trial_id)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_workers_trial_is_failed_and_requeued_once(tmp_path):
    study = _journal_study(tmp_path)
    host = socket.gethostname()
    later = time.time() + 1000  # recovery runs 1000 s after these trials started
    dead = _orphan(study, worker_host=host, worker_pid=_dead_pid(), heartbeat=later - 1)
    alive = _orphan(study, worker_host=host, worker_pid=os.getppid(), heartbeat=later - 100)
    remote_fresh = _orphan(study, worker_host="elsewhere", worker_pid=1, heartbeat=later - 100)
    remote_old = _orphan(study, worker_host="elsewhere", worker_pid=1)  # no heartbeat since its start
    assert recover_stale_trials(study, grace_s=600, now=later) == [dead.number, remote_old.number]
    # a second worker (its own handle on the file) finds nothing left to do
    other = optuna.load_study(study_name="j", storage=make_storage(str(tmp_path / "j.log")))
    assert recover_stale_trials(other, grace_s=600, now=later) == []
    trials = {t.number: t for t in study.get_trials()}
    assert trials[alive.number].state == trials[remote_fresh.number].state == TrialState.RUNNING
    for old in (dead, remote_old):
        assert trials[old.number].state == TrialState.FAIL
        assert trials[old.number].user_attrs["fail_reason"].startswith("worker gone")
    retries = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert sorted(retry_of(t) for t in retries) == [dead.number, remote_old.number]
    for r in retries:
        old = trials[retry_of(r)]
        assert _queued(r) == old.params and r.user_attrs["seed"] == old.user_attrs["seed"]
    assert finished_trials(study) == 0  # the failed originals do not count


def test_an_orphan_of_this_process_is_recovered_but_not_the_trial_it_runs(tmp_path):
    """A storage failure mid-trial leaves this pid's trial RUNNING; the next optimize in the same
    process must recover it, but never a trial this process is running now."""
    study = _journal_study(tmp_path)
    orphan = _orphan(study, worker_host=socket.gethostname(), worker_pid=os.getpid(), heartbeat=time.time())
    mine = _orphan(study, worker_host=socket.gethostname(), worker_pid=os.getpid(), heartbeat=time.time())
    _HERE.add(mine._trial_id)
    try:
        assert recover_stale_trials(study, grace_s=600) == [orphan.number]
    finally:
        _HERE.discard(mine._trial_id)


def test_rdb_storages_are_left_to_optunas_heartbeats(tmp_path):
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 'h.db'}"), directions=DIRECTIONS)
    _orphan(study, worker_host=socket.gethostname(), worker_pid=_dead_pid())
    assert recover_stale_trials(study, grace_s=1) == []


# ---- storages that cannot be reached, written or read ---------------------------------------------


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    for c in held:
        c.close()
    srv.close()


def test_a_silent_postgresql_host_fails_create_within_the_connect_timeout(tmp_path, silent_server):
    cfg = write_yaml(tmp_path / "s.yaml", tiny_config(tmp_path, tmp_path / "base.pt", name="silent"))
    url = f"postgresql+psycopg://alice:s3cret@127.0.0.1:{silent_server}/db"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "searchprune.cli", "study", "create", "--config", str(cfg),
                          "--storage", url], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "SEARCHPRUNE_CONNECT_TIMEOUT": "2"})
    took = time.monotonic() - t0
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"127.0.0.1:{silent_server}" in lines[0] and "did not answer within 2 s" in lines[0]
    assert "alice:***@" in lines[0] and "s3cret" not in res.stderr + res.stdout
    assert took < 100, took  # bounded by the timeout, far from the old "forever"


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (chmod 555; as root, a read-only system path)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    for cand in (d, Path("/sys/fs"), Path("/proc/sys")):
        try:
            (cand / "probe").touch()
            (cand / "probe").unlink()
        except OSError:
            return cand
    pytest.skip("no unwritable directory here (root without a read-only mount)")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_create_in_a_read_only_directory_is_one_line_naming_the_path(tmp_path, capsys, kind):
    ro = _unwritable_dir(tmp_path)
    path = ro / "sub" / ("study.db" if kind == "sqlite" else "study.log")
    storage = f"sqlite:///{path}" if kind == "sqlite" else str(path)
    cfg = write_yaml(tmp_path / "s.yaml", tiny_config(tmp_path, tmp_path / "base.pt", name="ro"))
    assert main(["study", "create", "--config", str(cfg), "--storage", storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0], err


def test_a_full_disk_mid_trial_is_one_line_and_loses_no_trial(tmp_path, base, monkeypatch, capsys):
    """The journal cannot be written once trial 2 runs (ENOSPC, simulated): optimize stops with one
    line naming the file; the two completed trials stay; the next run recovers the orphan and
    reaches the target with exactly 3 COMPLETE trials."""
    storage = str(tmp_path / "full.log")
    cfg = tiny_study_config(tmp_path, base, name="full", n_trials=3)
    create_study(cfg, storage=storage)
    optimize("full", storage, n_trials=2, quiet=True, progress=False)
    full = threading.Event()
    append = JournalFileBackend.append_logs

    def append_logs(self, logs):
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._file_path)
        return append(self, logs)

    real_run_trial = objective_module.run_trial

    fills = [1]

    def run_trial(params, ctx):
        if fills:  # the disk fills while the first trial of the run trains
            fills.pop()
            full.set()
        return real_run_trial(params, ctx)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_logs)
    monkeypatch.setattr(objective_module, "run_trial", run_trial)
    with pytest.raises(ConfigError, match="No space left on device") as e:
        optimize("full", storage, quiet=True, progress=False)
    assert storage in str(e.value) and "\n" not in str(e.value)
    assert [t.state for t in trials_of(storage, "full")] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    full.clear()
    optimize("full", storage, quiet=True, progress=False)
    trials = trials_of(storage, "full")
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}
    assert trials[2].state == TrialState.FAIL and retry_of(trials[3]) == 2
    assert trials[3].params == trials[2].params and trials[3].user_attrs["seed"] == trials[2].user_attrs["seed"]


def test_a_corrupt_journal_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.log"
    _journal_study(tmp_path, "bad")
    with path.open("a") as f:
        f.write("this is not json\n")
    with pytest.raises(ConfigError, match=r"bad.log is corrupt: line \d+ is not a JSON record"):
        make_storage(str(path))
    assert main(["study", "show", "--name", "bad", "--storage", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]


def test_a_torn_last_journal_line_is_cut_so_later_writes_stay_readable(tmp_path):
    """A worker killed mid-write leaves a line without its newline; the next append must not glue onto it."""
    path = tmp_path / "torn.log"
    study = _journal_study(tmp_path, "torn")
    study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5, 1.0]))
    with path.open("ab") as f:
        f.write(b'{"op_code": 4, "worker_id": "dead", "study_id": 0, "user_a')
    again = optuna.load_study(study_name="torn", storage=make_storage(str(path)))
    again.add_trial(optuna.trial.create_trial(values=[0.8, 0.6, 0.5]))
    fresh = optuna.load_study(study_name="torn", storage=make_storage(str(path)))
    assert [t.values for t in fresh.get_trials()] == [[0.9, 0.5, 1.0], [0.8, 0.6, 0.5]]


# ---- signals to a real study process ----------------------------------------------------------------


def _slow_cfg(tmp_path: Path, base: Path, name: str, n: int, train_size: int = 512):
    """Trials with a 2-epoch fine-tune on ``train_size`` images."""
    return tiny_study_config(tmp_path, base, name=name, n_trials=n,
                             space={"prune.sparsity": {"low": 0.3, "high": 0.9}},
                             defaults={"prune": {"method": "magnitude", "sparsity": 0.5},
                                       "finetune": {"recipe": "fast", "epochs": 2, "lr": 0.02}},
                             data={"dataset": "synthetic", "train_size": train_size, "val_size": 128,
                                   "test_size": 64, "batch_size": 32, "eval_batch_size": 128})


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_trial_ends_the_process_and_the_resumed_study_reaches_its_target(tmp_path, base, signum):
    storage = str(tmp_path / "sig.log")
    cfg = _slow_cfg(tmp_path, base, "sig", 2)
    create_study(cfg, storage=storage)
    from searchprune._torch import get_device
    from searchprune.data import make_splits
    from searchprune.search import ensure_base_model
    ensure_base_model(cfg, make_splits(cfg.data), get_device("cpu"), progress=False)
    # the process stalls inside its first fine-tune, so the signal always lands mid-trial however fast
    # the machine is (the handler raises out of the sleep); the resumed run below is not patched
    script = textwrap.dedent(f"""
        import sys, time
        import searchprune.trial as core
        core._finetune = lambda *args, **kwargs: time.sleep(3600)
        from searchprune.cli import main
        sys.exit(main(["study", "optimize", "--name", "sig", "--storage", {storage!r}, "--quiet"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not any(t.state == TrialState.RUNNING and t.params for t in trials_of(storage, "sig")):
            assert proc.poll() is None, f"optimize exited ({proc.returncode}) before a trial started"
            assert time.monotonic() < deadline, "no trial started within 180 s"
            time.sleep(0.05)
        os.kill(proc.pid, signum)
        rc = proc.wait(timeout=60)  # promptly: no waiting for the trial to finish
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130 and "interrupted" in proc.stderr.read()
    interrupted, waiting = trials_of(storage, "sig")
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["fail_reason"] == "interrupted"
    assert interrupted.user_attrs["interrupted"] == signal.Signals(signum).name
    assert waiting.state == TrialState.WAITING and _queued(waiting) == interrupted.params
    optimize("sig", storage, quiet=True, progress=False)
    trials = trials_of(storage, "sig")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert retry_of(trials[1]) == 0 and trials[1].user_attrs["seed"] == interrupted.user_attrs["seed"]


@pytest.mark.slow
def test_sigterm_to_a_multi_worker_run_reaches_every_worker(tmp_path, base):
    """`--workers 2`: SIGTERM to the parent is forwarded; each worker fails its trial as interrupted and
    re-queues it, every process ends, and nothing is left RUNNING."""
    storage = str(tmp_path / "multi.log")
    # spawned workers cannot be patched from here: trials long enough (2 epochs on 7,680 images) that
    # both are caught running at once; none is run to the end
    cfg = _slow_cfg(tmp_path, base, "multi", 4, train_size=7680)
    create_study(cfg, storage=storage)
    from searchprune._torch import get_device
    from searchprune.data import make_splits
    from searchprune.search import ensure_base_model
    ensure_base_model(cfg, make_splits(cfg.data), get_device("cpu"), progress=False)
    script = textwrap.dedent(f"""
        import sys
        from searchprune.cli import main
        sys.exit(main(["study", "optimize", "--name", "multi", "--storage", {storage!r}, "--workers", "2",
                       "--quiet"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            running = [t for t in trials_of(storage, "multi") if t.state == TrialState.RUNNING and t.params
                       and "worker_pid" in t.user_attrs]
            if len(running) == 2:
                break
            assert proc.poll() is None, f"optimize exited ({proc.returncode}) early"
            assert time.monotonic() < deadline, "two trials did not run at once within 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read()
    trials = {t.number: t for t in trials_of(storage, "multi")}
    for r in running:
        assert trials[r.number].state == TrialState.FAIL and trials[r.number].user_attrs["interrupted"] == "SIGTERM"
        with pytest.raises(ProcessLookupError):
            os.kill(r.user_attrs["worker_pid"], 0)
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    assert sorted(retry_of(t) for t in trials.values() if t.state == TrialState.WAITING) == \
        sorted(r.number for r in running)
