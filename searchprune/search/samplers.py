"""Samplers by name, behind a registry: ``@register_sampler("name")`` on a factory.

A factory takes the seed and the study's ``sampler.options`` and returns an Optuna sampler.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna

from .._registry import Registry
from ..errors import ConfigError

__all__ = ["SamplerFactory", "SAMPLERS", "register_sampler", "list_samplers", "make_sampler", "run_seed",
           "make_run_sampler"]

SamplerFactory = Callable[[int | None, dict[str, Any]], optuna.samplers.BaseSampler]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Registers ``factory(seed, options) -> BaseSampler`` under ``name``."""
    return SAMPLERS.register(name)


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def make_sampler(name: str, *, seed: int | None,
                 options: Mapping[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """Sampler by name, seeded, with its options.

    Raises:
        ConfigError: an unknown name (listing the registered ones) or a missing dependency.
    """
    return SAMPLERS.get(name)(seed, dict(options or {}))


def run_seed(seed: int | None, *, worker: int, n_trials: int, rank: int = 0) -> int | None:
    """The sampler seed of one worker in one ``study optimize`` run.

    Derived from the study seed, the worker index and the number of trials already in storage (any
    state), mixed by :class:`numpy.random.SeedSequence`: parallel workers of one run differ by their
    index, and a resumed run differs from the previous one because the study holds more trials, so
    neither re-proposes the points an earlier sampler drew. ``rank`` separates independent processes
    that opened the study at the same moment (see :func:`make_run_sampler`). A run that starts from
    the same history with the same worker index gets the same seed, so it proposes the same points
    (reproducible). ``seed=None`` stays None (an unseeded sampler).
    """
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker, n_trials, *([rank] if rank else [])]).generate_state(1)[0])


def make_run_sampler(name: str, *, seed: int | None, options: Mapping[str, Any] | None, worker: int,
                     n_trials: int, first_free: int) -> optuna.samplers.BaseSampler:
    """The sampler of one run: ``make_sampler`` seeded by :func:`run_seed`, re-seeded at its first
    trial if another process overtook this one.

    Independent ``study optimize`` processes that open the study at the same moment (cluster workers
    launched together, each ``--workers 1``) see the same history and worker index, so :func:`run_seed`
    alone gives them one seed and the same proposals. The storage hands each process its own first
    trial, though: a process whose first trial is not ``first_free`` (the trial that was first free
    when it opened the study: the lowest waiting one, else the next new number) was overtaken by
    another, and rebuilds its sampler in place (same class, so ``study.sampler`` stays what the study
    names) with how far it was overtaken (``rank``) mixed into the seed. A lone run is never
    overtaken: its seed stays the one of its history. The seed in use is ``sampler.run_seed``.
    """
    opts = dict(options or {})
    lone = run_seed(seed, worker=worker, n_trials=n_trials)
    sampler = make_sampler(name, seed=lone, options=opts)
    sampler.run_seed = lone  # type: ignore[attr-defined]
    if seed is None:
        return sampler
    own_before_trial = type(sampler).before_trial

    def before_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        del sampler.before_trial  # once, at the run's first trial: back to the class's method
        rank = trial.number - first_free
        if rank > 0:
            moved = run_seed(seed, worker=worker, n_trials=n_trials, rank=rank)
            sampler.__dict__.update(make_sampler(name, seed=moved, options=opts).__dict__)
            sampler.run_seed = moved  # type: ignore[attr-defined]
        own_before_trial(sampler, study, trial)

    sampler.before_trial = before_trial  # type: ignore[method-assign]
    return sampler


@register_sampler("tpe")
def _tpe(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """TPE with ``group=True`` and ``multivariate=True``, so conditional spaces are modelled jointly."""
    options.setdefault("group", True)
    options.setdefault("multivariate", True)
    return optuna.samplers.TPESampler(seed=seed, **options)


@register_sampler("nsga2")
def _nsga2(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **options)


@register_sampler("nsga3")
def _nsga3(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIIISampler(seed=seed, **options)


@register_sampler("gp")
def _gp(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """Gaussian-process sampler (optimizes its acquisition with scipy)."""
    if importlib.util.find_spec("scipy") is None:
        raise ConfigError("sampler 'gp' needs scipy: pip install scipy")
    return optuna.samplers.GPSampler(seed=seed, **options)


@register_sampler("random")
def _random(seed: int | None, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)  # takes none: a stray option is an error
