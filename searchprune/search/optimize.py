"""Optimization: one process, or several worker processes sharing the study's storage."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from .._torch import get_device, set_cpu_threads
from ..data import make_splits
from .objective import Objective, build_context, ensure_base_model
from .study import load_study

__all__ = ["WorkerSpec", "optimize", "finished_trials"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def finished_trials(study: optuna.Study) -> int:
    """Finished trials that count toward the target. A trial failed by a stale heartbeat and
    re-queued by ``RetryHeartbeatStaleTrialCallback`` does not: its retry takes its place."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(t.state in FINISHED and not (t.state == TrialState.FAIL and t.number in retried)
               for t in trials)


def _stop_at(target: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Callback stopping a worker once the study has ``target`` finished trials (any worker's)."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if finished_trials(study) >= target:
            study.stop()
    return callback


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs.

    Attributes:
        n_trials: trials this worker runs at most (its share of the remaining ones).
        target: finished trials of the whole study at which every worker stops.
        threads: CPU threads for torch (None: leave as is).
        worker: index of the worker (offsets the sampler seed).
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
    """One worker: builds its own context and runs ``spec.n_trials`` trials of the shared study."""
    set_cpu_threads(spec.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, cfg = load_study(spec.name, spec.storage, worker=spec.worker)
    ctx = build_context(cfg, device=spec.device, progress=not spec.quiet)
    art = spec.artifact_dir or study.user_attrs.get("artifact_dir")
    bar = spec.progress_bar and spec.n_trials > 0
    log: Callable[[str], None] = tqdm.write if bar else print
    objective = Objective(cfg, ctx, artifact_dir=art, log=log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # show_progress_bar
        study.optimize(objective, n_trials=spec.n_trials, timeout=spec.timeout, catch=(Exception,),
                       callbacks=[_stop_at(spec.target)], gc_after_trial=True, show_progress_bar=bar)


def optimize(name: str, storage: str, *, n_trials: int | None = None, workers: int = 1,
             device: str | None = None, timeout: float | None = None, artifact_dir: str | None = None,
             quiet: bool = False, progress: bool = True) -> optuna.Study:
    """Runs the study until it has ``n_trials`` finished trials (resuming where it stopped).

    With one worker on a terminal, a progress bar counts the trials (``progress=False`` hides it).

    With ``workers > 1`` each worker is a separate process sharing the storage, pinned to its own
    GPU when several exist; the remaining trials are split exactly between them. Workers on other
    machines pointing at the same storage stop once the study reaches the target.
    """
    study, cfg = load_study(name, storage)
    target = cfg.n_trials if n_trials is None else n_trials
    remaining = target - finished_trials(study)
    if remaining <= 0:
        print(f"study {name!r} already has {finished_trials(study)} finished trials (target {target})")
        return study
    # Base model once, before workers start (they only load it).
    ensure_base_model(cfg, make_splits(cfg.data), get_device(device), progress=not quiet)
    workers = max(1, min(workers, remaining))
    print(f"optimizing {name!r}: {remaining} trial(s) to reach {target}, {workers} worker(s), storage {storage}",
          flush=True)
    if workers == 1:
        _worker(WorkerSpec(name, storage, remaining, target, device=device, timeout=timeout,
                           artifact_dir=artifact_dir, quiet=quiet, progress_bar=progress and sys.stderr.isatty()))
    else:
        devices = _worker_devices(device, workers)
        threads = max(1, (os.cpu_count() or 1) // workers)
        shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
        ctx = mp.get_context("spawn")
        specs = [WorkerSpec(name, storage, shares[i], target, device=devices[i], threads=threads, timeout=timeout,
                            artifact_dir=artifact_dir, quiet=quiet, worker=i) for i in range(workers)]
        procs = [ctx.Process(target=_worker, args=(spec,), daemon=False) for spec in specs]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            print(f"warning: {len(bad)} worker(s) exited with codes {bad}", file=sys.stderr)
    study, _ = load_study(name, storage)
    return study


def _worker_devices(device: str | None, workers: int) -> list[str | None]:
    if device in (None, "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        return [f"cuda:{i % n}" for i in range(workers)]
    return [device] * workers
