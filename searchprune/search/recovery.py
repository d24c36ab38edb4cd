"""Which trials count toward a study's target, and recovery of trials whose worker is gone.

A study's target counts every trial except a surplus start and a FAIL that was re-queued (a dead
worker's, an interrupted one). On storages without Optuna heartbeats (journal files) every trial
carries ``worker_host``, ``worker_pid`` and a ``heartbeat`` time, and :func:`recover_stale_trials`
fails and re-queues a RUNNING trial whose worker process is gone or silent past the grace period.
See :mod:`searchprune.search.optimize` for how workers use them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import optuna
from optuna.trial import FrozenTrial, TrialState

from .storage import has_rdb_heartbeats, heartbeat_settings

__all__ = ["FINISHED", "RETRY_ATTRS", "retry_of", "counts", "counted_trials", "finished_trials",
           "recover_stale_trials", "requeue", "owned"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
RETRY_ATTRS = ("seed", "baseline")
"""User attrs a re-queued trial inherits (its seed: the rerun trains the same way)."""
_HERE: set[int] = set()
"""Trial ids this process is running now (a RUNNING trial of this pid not in it is an orphan)."""


def retry_of(t: FrozenTrial) -> int | None:
    """The number of the trial ``t`` reruns (an Optuna heartbeat retry or a searchprune re-queue), or None."""
    n = t.system_attrs.get("failed_trial")  # what RetryHeartbeatStaleTrialCallback.retried_trial_number reads
    return n if n is not None else t.user_attrs.get("retry_of")


def counts(t: FrozenTrial, retried: set[int]) -> bool:
    """Whether ``t`` counts toward the target: not surplus, nor a FAIL that was re-queued or interrupted."""
    ua = t.user_attrs
    if ua.get("surplus"):
        return False
    if t.state != TrialState.FAIL:
        return True
    return not (t.number in retried or ua.get("requeued") or ua.get("interrupted"))


def counted_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward the target (see :func:`counts`), in any state."""
    retried = {n for t in trials if (n := retry_of(t)) is not None}
    retried |= {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [t for t in trials if counts(t, retried)]


def finished_trials(study: optuna.Study) -> int:
    """Finished trials that count toward the target (see :func:`counts`): a re-queued trial's rerun
    takes its place."""
    return sum(t.state in FINISHED for t in counted_trials(study.get_trials(deepcopy=False)))


# --------------------------------------------------------------------------------------------
# Dead workers on storages without Optuna heartbeats
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale_reason(t: FrozenTrial, grace_s: float, now: float) -> str | None:
    ua = t.user_attrs
    host, pid = ua.get("worker_host"), ua.get("worker_pid")
    if host == socket.gethostname() and isinstance(pid, int) and t._trial_id not in _HERE:
        if pid == os.getpid() or not _pid_alive(pid):
            return f"worker gone: process {pid} on {host} is not running"
    start = t.datetime_start.timestamp() if t.datetime_start else now
    seen = max(start, float(ua.get("heartbeat", start)))
    if now - seen > grace_s:
        who = f"process {pid} on {host}" if host else "a worker that never reported"
        return f"worker gone: no heartbeat from {who} for {now - seen:.0f} s (grace period {grace_s:.0f} s)"
    return None


def recover_stale_trials(study: optuna.Study, *, grace_s: float | None = None, now: float | None = None) -> list[int]:
    """Fails and re-queues the RUNNING trials of dead workers (storages without Optuna heartbeats).

    A trial is stale when its worker process is gone (same host, pid not alive) or its heartbeat is
    older than ``grace_s`` (``$SEARCHPRUNE_HEARTBEAT_GRACE``, 180 s). It is marked FAIL with
    ``fail_reason`` and ``requeued``, and its params are enqueued again with its seed and
    ``retry_of``. Two workers recovering at once re-queue it once (the second cannot fail a finished
    trial). RDB storages are left to Optuna's heartbeats. ``now`` (epoch seconds) is for tests.

    Returns:
        The numbers of the trials recovered.
    """
    storage = study._storage
    if has_rdb_heartbeats(storage):
        return []
    grace = heartbeat_settings()[1] if grace_s is None else grace_s
    now, done = (time.time() if now is None else now), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _stale_reason(t, grace, now)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            storage.set_trial_user_attr(t._trial_id, "requeued", True)
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        requeue(study, t)
        done.append(t.number)
    return done


def requeue(study: optuna.Study, t: FrozenTrial | optuna.Trial) -> None:
    """Enqueues ``t``'s params again with its seed (and baseline flag) and ``retry_of``: its number.

    The params are read back from the storage: a live trial interrupted inside ``suggest_*`` has
    written its newest param there but not yet into its own cache, and the retry must repeat it."""
    ua = t.user_attrs
    attrs = {k: ua[k] for k in RETRY_ATTRS if k in ua}
    params = study._storage.get_trial_params(t._trial_id)
    with warnings.catch_warnings():  # a baseline's fixed params may sit outside the searched range
        warnings.simplefilter("ignore", UserWarning)
        study.enqueue_trial(dict(params), user_attrs={**attrs, "retry_of": t.number})


@contextmanager
def owned(trial: optuna.Trial, heartbeat_s: float | None) -> Iterator[None]:
    """Owner attrs (``worker_host``, ``worker_pid``) on every storage; where Optuna keeps no
    heartbeat, also a thread rewriting the ``heartbeat`` attr every ``heartbeat_s`` seconds."""
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    _HERE.add(trial._trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                trial.storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
            except Exception:  # a storage hiccup: the next beat tries again; the trial itself reports errors
                pass

    thread = None
    if heartbeat_s is not None:
        trial.set_user_attr("heartbeat", time.time())
        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        _HERE.discard(trial._trial_id)
