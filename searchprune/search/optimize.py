"""Optimization: one process, or several worker processes sharing the study's storage.

No lost or repeated work:

- **Which trials count.** A study stops at ``target`` trials that count: every trial except a FAIL
  that was re-queued (a dead worker's, an interrupted one) or a surplus one. A trial claims its slot
  when it starts: if the counted trials numbered below it (any state, waiting ones included) already
  reach the target, it is pruned at once as ``surplus`` (counted nowhere) and its worker stops, so workers that start
  together, a worker restarted mid-study or workers on other machines never overshoot. A worker
  whose remaining slots are all running elsewhere waits for them instead of leaving, so a dead
  worker's trial is retried within the run.
- **Interrupts.** SIGINT and SIGTERM raise :class:`Interrupted` in the running trial: it is failed with
  ``fail_reason`` "interrupted" (user attr ``interrupted``: the signal), its parameters are re-queued
  and the process ends (exit code 130 from the CLI). It does not count; a resumed run reruns it.
- **Dead workers.** RDB storages (SQLite, PostgreSQL, MySQL) use Optuna's heartbeats: a RUNNING
  trial whose heartbeat is older than the grace period is failed and retried with the same params
  and seed (``RetryHeartbeatStaleTrialCallback``). Other storages (journal files) get searchprune's
  own: every trial stores ``worker_host`` and ``worker_pid`` (on every storage) and a ``heartbeat``
  time (rewritten every ``$SEARCHPRUNE_HEARTBEAT_INTERVAL`` seconds); when ``optimize`` starts and after every trial, a
  RUNNING trial whose worker process is gone (same host, pid not alive) or whose heartbeat is older
  than ``$SEARCHPRUNE_HEARTBEAT_GRACE`` seconds (180) is marked FAIL (``fail_reason`` says why) and
  re-queued with the same params and seed (user attr ``retry_of``: its number).
- **Storage failures.** A storage that cannot be written ends the run with one ConfigError naming
  the path or host:port; what was stored stays, and the trial in flight is recovered as above.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from .._torch import get_device, set_cpu_threads
from ..data import make_splits
from ..errors import ConfigError
from .objective import Objective, build_context, ensure_base_model
from .recovery import FINISHED, counted_trials, finished_trials, owned, recover_stale_trials, requeue
from .storage import has_rdb_heartbeats, heartbeat_settings, mask_url, storage_error
from .study import load_study

__all__ = ["WorkerSpec", "Interrupted", "optimize", "finished_trials", "RunFailed"]

class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signal`` names it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name


class RunFailed(RuntimeError):
    """Every trial a ``study optimize`` run finished failed (or none finished): nothing was learned.

    Attributes:
        study: the study as the run left it (its failed trials carry ``fail_reason``).
    """

    def __init__(self, message: str, study: optuna.Study) -> None:
        super().__init__(message)
        self.study = study


def _check_run_args(n_trials: int | None, workers: int, timeout: float | None) -> None:
    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--n-trials: expected a number of trials >= 0, got {n_trials}")
    if workers < 1:
        raise ConfigError(f"--workers: expected at least 1 worker process, got {workers}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout: expected seconds > 0, got {timeout}")


def _finished_numbers(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False) if t.state in FINISHED}


def _check_run(study: optuna.Study, before: set[int], worker_codes: Sequence[int | None], target: int) -> None:
    """Raises RunFailed when this run finished no trial, or only failed ones (with the commonest reason).

    Only counted trials matter: a re-queued failure (a dead worker's, an interrupted one) and a
    ``surplus`` start are not this run's results. A run that finished nothing because other workers
    on the same storage reached the target meanwhile (a restarted worker) has not failed."""
    run = [t for t in counted_trials(study.get_trials(deepcopy=False))
           if t.state in FINISHED and t.number not in before]
    failed = [t for t in run if t.state == TrialState.FAIL]
    if run and len(failed) < len(run):
        return
    if not run and finished_trials(study) >= target:
        return
    if not run:
        why = f"; worker exit codes {worker_codes}" if worker_codes else ""
        raise RunFailed(f"no trial finished in this run{why}", study)
    reasons = Counter(str(t.user_attrs.get("fail_reason", "no reason recorded")) for t in failed)
    reason, count = reasons.most_common(1)[0]
    raise RunFailed(f"all {len(failed)} trial(s) of this run failed; the most common reason ({count}x): {reason}",
                    study)


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


class _Guarded:
    """The objective inside a worker: claims the trial's slot, beats, turns interrupts into a re-queue."""

    def __init__(self, objective: Callable[[optuna.Trial], Any], target: int, journal_heartbeat: bool) -> None:
        self.objective, self.target, self.journal_heartbeat = objective, target, journal_heartbeat

    def __call__(self, trial: optuna.Trial) -> Any:
        ahead = [t for t in counted_trials(trial.study.get_trials(deepcopy=False)) if t.number < trial.number]
        if len(ahead) >= self.target:
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", f"surplus: the study already has its {self.target} trials")
            trial.study.stop()
            raise optuna.TrialPruned(f"surplus: the study already has its {self.target} trials")
        try:
            with owned(trial, heartbeat_settings()[0] if self.journal_heartbeat else None):
                return self.objective(trial)
        except KeyboardInterrupt as e:
            trial.set_user_attr("interrupted", getattr(e, "signal", "SIGINT"))
            trial.set_user_attr("fail_reason", "interrupted")
            requeue(trial.study, trial)
            raise


_SIGNALLED: list[int] = []


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """Raises once: a second signal (the parent forwarding one) must not break the first one's cleanup."""
    if not _SIGNALLED:
        _SIGNALLED.append(signum)
        raise Interrupted(signum)


@contextmanager
def _interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _SIGNALLED.clear()


def _stop_at(target: int, deadline: float | None = None) -> Callable[[optuna.Study, FrozenTrial], None]:
    """After each trial: recover dead workers' trials; go on while a counted slot is free or a
    re-queued trial waits; stop once every counted trial is finished. While the last slots are
    running in other workers, wait for them (polling every heartbeat interval, at most the grace
    period and two intervals): one that turns out dead is failed and retried, and this worker runs
    the retry, so a run does not end with a dead worker's slot lost."""
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        interval, grace = heartbeat_settings()
        wait_until = time.time() + grace + 2 * interval  # long enough for a dead worker's trial to go stale
        while True:
            if has_rdb_heartbeats(study._storage):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            else:
                recover_stale_trials(study)
            counted = counted_trials(study.get_trials(deepcopy=False))
            if len(counted) < target or any(t.state == TrialState.WAITING for t in counted):
                return
            now = time.time()
            if all(t.state.is_finished() for t in counted) or now > wait_until or (deadline and now > deadline):
                study.stop()  # the rest runs elsewhere (alive, or to be recovered by the next run)
                return
            time.sleep(min(interval, 5))
    return callback


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs.

    Attributes:
        n_trials: trials this worker runs at most (the slot claims stop it at ``target`` first).
        target: finished trials of the whole study at which every worker stops.
        threads: CPU threads for torch (None: leave as is).
        worker: index of the worker (one input of the sampler seed, see ``samplers.run_seed``).
        progress_bar: one Optuna progress bar, with the per-trial lines written above it.
    """

    name: str
    storage: str
    n_trials: int
    target: int
    device: str | None = None
    threads: int | None = None
    timeout: float | None = None
    artifact_dir: str | None = None
    quiet: bool = False
    worker: int = 0
    progress_bar: bool = False


def _worker(spec: WorkerSpec) -> None:
    """One worker: builds its own context and runs at most ``spec.n_trials`` trials of the shared study.

    Raises:
        Interrupted: SIGINT or SIGTERM (the trial in flight is failed as "interrupted" and re-queued).
        ConfigError: the storage cannot be written (one line naming it).
    """
    set_cpu_threads(spec.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _interrupts():
        study, cfg = load_study(spec.name, spec.storage, worker=spec.worker)
        ctx = build_context(cfg, device=spec.device, progress=not spec.quiet)
        art = spec.artifact_dir or study.user_attrs.get("artifact_dir")
        bar = spec.progress_bar and spec.n_trials > 0
        log: Callable[[str], None] = tqdm.write if bar else print
        objective = _Guarded(Objective(cfg, ctx, artifact_dir=art, log=log), spec.target,
                             journal_heartbeat=not has_rdb_heartbeats(study._storage))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # show_progress_bar
                deadline = None if spec.timeout is None else time.time() + spec.timeout
                study.optimize(objective, n_trials=spec.n_trials, timeout=spec.timeout, catch=(Exception,),
                               callbacks=[_stop_at(spec.target, deadline)], gc_after_trial=True,
                               show_progress_bar=bar)
        except Exception as e:
            cause = _storage_cause(e)
            if cause is None:
                raise
            raise storage_error(spec.storage, cause, "; the trials stored so far are kept, and the one in flight "
                                                     "is re-queued when `study optimize` runs again") from None


def _storage_cause(e: BaseException | None) -> BaseException | None:
    """The storage error behind ``e``: itself, or one in its context chain (Optuna, failing to record
    a trial's end, raises an AssertionError while handling the write error)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, (OSError, sqlalchemy.exc.SQLAlchemyError)):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _worker_process(spec: WorkerSpec) -> None:
    """A spawned worker: one line and exit code 2 for a ConfigError, 130 when interrupted."""
    try:
        _worker(spec)
    except ConfigError as e:
        print(f"error: worker {spec.worker}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def optimize(name: str, storage: str, *, n_trials: int | None = None, workers: int = 1,
             device: str | None = None, timeout: float | None = None, artifact_dir: str | None = None,
             quiet: bool = False, progress: bool = True) -> optuna.Study:
    """Runs the study until it has ``n_trials`` finished trials (resuming where it stopped).

    With one worker on a terminal, a progress bar counts the trials (``progress=False`` hides it).

    With ``workers > 1`` each worker is a separate process sharing the storage, pinned to its own
    GPU when several exist. Workers claim trial slots as they start them (see the module docstring),
    so this run, a restarted worker and workers on other machines pointing at the same storage
    together run exactly the target. SIGINT or SIGTERM stops every worker (each fails its trial as
    "interrupted" and re-queues it) and raises :class:`Interrupted`.

    Raises:
        ConfigError: a negative ``n_trials``, ``workers < 1`` or a ``timeout`` that is not > 0.
        RunFailed: trials were due and this run finished none, or only failed ones (the message
            counts them and gives the most common reason).
    """
    _check_run_args(n_trials, workers, timeout)
    study, cfg = load_study(name, storage)
    target = cfg.n_trials if n_trials is None else n_trials
    try:
        recovered = recover_stale_trials(study)
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise storage_error(storage, e) from None
    if recovered:
        print(f"re-queued trial(s) {recovered} of worker(s) that are gone", flush=True)
    remaining = target - finished_trials(study)
    if remaining <= 0:
        print(f"study {name!r} already has {finished_trials(study)} finished trials (target {target})")
        return study
    # Base model once, before workers start (they only load it).
    ensure_base_model(cfg, make_splits(cfg.data), get_device(device), progress=not quiet)
    workers = max(1, min(workers, remaining))
    before = _finished_numbers(study)
    bad: list[int | None] = []
    print(f"optimizing {name!r}: {remaining} trial(s) to reach {target}, {workers} worker(s), "
          f"storage {mask_url(storage)}", flush=True)
    if workers == 1:
        _worker(WorkerSpec(name, storage, remaining, target, device=device, timeout=timeout,
                           artifact_dir=artifact_dir, quiet=quiet, progress_bar=progress and sys.stderr.isatty()))
    else:
        devices = _worker_devices(device, workers)
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        # each may run all remaining trials: the slot claims stop them at the target together
        specs = [WorkerSpec(name, storage, remaining, target, device=devices[i], threads=threads, timeout=timeout,
                            artifact_dir=artifact_dir, quiet=quiet, worker=i) for i in range(workers)]
        procs = [ctx.Process(target=_worker_process, args=(spec,), daemon=False) for spec in specs]
        with _interrupts():
            try:
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                _stop_workers(procs)
                raise
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            print(f"warning: {len(bad)} worker(s) exited with codes {bad}", file=sys.stderr)
    study, _ = load_study(name, storage)
    _check_run(study, before, bad, target)
    return study


def _stop_workers(procs: Sequence[mp.process.BaseProcess], grace_s: float = 30.0) -> None:
    """SIGTERM to every live worker (each fails and re-queues its trial), SIGKILL after ``grace_s``."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        if p.pid is not None:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join()


def _worker_devices(device: str | None, workers: int) -> list[str | None]:
    if device in (None, "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        return [f"cuda:{i % n}" for i in range(workers)]
    return [device] * workers
