"""Asynchronous multi-objective successive halving (MO-ASHA) for multi-objective Optuna studies.

Optuna's pruners, ``Trial.report`` and ``Trial.should_prune`` refuse studies with several
objectives, so the search prunes on its own: a trial fine-tunes in pieces, and at each rung
budget ``r_k = min_epochs * eta**k`` (below ``max_epochs``) it measures its objectives on that
rung's evaluation and continues only if it ranks in the top ``ceil(n / eta)`` of the ``n`` trials
that reached the rung so far (itself included). Ranking: non-dominated sorting; inside the one
front that the cut splits, exclusive hypervolume contribution (larger first). See :func:`promote`
for the exact rule.

The rung values live in storage as trial user attributes, so every worker on one storage
(journal file, RDB) ranks against the records of all the others; there is no barrier between
workers (asynchronous: a decision is final and uses the records visible at the time).

Per rung ``k`` a trial stores ``rung_<k>_<metric>`` for every metric it hands over (at least the
objectives, by default ``clean_acc``, ``robust_acc``, ``cost``), ``rung_<k>_epochs`` (fine-tuning
epochs done), then ``rung_<k>_seen`` (trials ranked, itself included), ``rung_<k>_peers`` (their
trial numbers, itself excluded) and ``rung_<k>_promoted``; a pruned trial also stores
``pruned_reason`` and ends ``PRUNED`` (the samplers use pruned trials). A baseline trial (user attr
``baseline``, enqueued at study creation) is never pruned: it is the reference the front is judged
against, so it runs in full and stores ``rung_<k>_kept_baseline`` where it would have been cut.

Intended wiring (the trial core stays Optuna-free: it only calls a plain callback, and the
exception the callback raises passes through it)::

    # search/objective.py
    pruner = MOASHAPruner(study_cfg.pruner)                   # MOASHAConfig from the YAML `pruner:` section
    def __call__(self, trial):
        params = suggest_params(trial, ...)
        try:
            result = run_trial(params, ctx, rungs=pruner.rungs, on_rung=pruner.reporter(trial))
        except optuna.TrialPruned:
            raise  # rung metrics and pruned_reason are already stored; keep this before `except Exception`
        ...

    # trial.py: fine-tune up to each rung budget, measure, hand over; the schedule continues, no rung is paid twice
    done = 0.0
    for k, r in enumerate(rungs):
        if r >= total_epochs:
            break
        train_ up to r epochs (continuing the same LR schedule and optimizer); done = r
        m = measure at rung k (low rungs may use fewer images / PGD steps)
        on_rung(k, done, {"clean_acc": m.clean_acc, "robust_acc": m.pgd_acc, "cost": cost})   # may raise
    train_ the remaining epochs; the final evaluation is the study's full one

Example:
    >>> promote([(0, [0.9, 0.5, 10.0]), (1, [0.8, 0.4, 10.0])], (2, [0.7, 0.3, 10.0]), eta=3,
    ...         directions=["maximize", "maximize", "minimize"])[0]
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config import PrunerConfig
from ..errors import ConfigError
from .hypervolume import hypervolume_contributions, non_dominated_sort, to_minimization

__all__ = [
    "DIRECTIONS",
    "OBJECTIVES",
    "MOASHAConfig",
    "MOASHAPruner",
    "OnRung",
    "RungReporter",
    "from_config",
    "promote",
    "rung_records",
]

OBJECTIVES: tuple[str, ...] = ("clean_acc", "robust_acc", "cost")
DIRECTIONS: tuple[str, ...] = ("maximize", "maximize", "minimize")
RECORD_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # FAIL/WAITING trials are not counted

OnRung = Callable[[int, float, Mapping[str, float]], None]
"""``on_rung(k, epochs_done, metrics)``: the callback the trial core calls at rung ``k``; it may raise."""

Record = tuple[int, Sequence[float]]  # (trial number, objective vector in the study's directions)


@dataclass(frozen=True)
class MOASHAConfig:
    """Rungs and promotion rate of MO-ASHA.

    Attributes:
        min_epochs: fine-tuning epochs at the first rung (> 0; fractions of an epoch allowed).
        eta: reduction factor (integer >= 2): rung budgets grow by ``eta``, ``1/eta`` of a rung continues.
        max_epochs: the full fine-tuning budget; rungs lie strictly below it (at ``max_epochs`` the trial
            ends normally, there is nothing left to save).
        min_trials_per_rung: while fewer trials than this (itself included) have reached a rung, a trial
            there is promoted unconditionally; ``None`` means ``eta``.
        objectives: metric names ranked at each rung, in order.
        directions: ``"maximize"``/``"minimize"`` per objective.
        floors: ``{metric: minimum}``: a trial with a rung metric below its floor is pruned whatever its rank
            (the absolute floor of a fixed gate, checked at every rung).
    """

    min_epochs: float = 0.25
    eta: int = 3
    max_epochs: float = 3.0
    min_trials_per_rung: int | None = None
    objectives: tuple[str, ...] = OBJECTIVES
    directions: tuple[str, ...] = DIRECTIONS
    floors: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "floors", MappingProxyType(dict(self.floors)))
        for key, v in self.floors.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"pruner.floors.{key} = {v!r}: expected a number")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
            raise ConfigError(f"pruner.eta = {self.eta!r}: expected an integer >= 2")
        if not (isinstance(self.min_epochs, (int, float)) and math.isfinite(self.min_epochs) and self.min_epochs > 0):
            raise ConfigError(f"pruner.min_epochs = {self.min_epochs!r}: expected a number > 0")
        if not (isinstance(self.max_epochs, (int, float)) and math.isfinite(self.max_epochs)
                and self.max_epochs > self.min_epochs):
            raise ConfigError(f"pruner.max_epochs = {self.max_epochs!r}: expected a number > min_epochs "
                              f"({self.min_epochs})")
        m = self.min_trials_per_rung
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"pruner.min_trials_per_rung = {m!r}: expected an integer >= 1 or null (= eta)")
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"pruner.objectives = {list(self.objectives)}: expected distinct metric names")
        if len(self.directions) != len(self.objectives):
            raise ConfigError(f"pruner.directions = {list(self.directions)}: expected one per objective "
                              f"{list(self.objectives)}")
        to_minimization(np.zeros(len(self.directions)), self.directions)  # validates the direction names

    @property
    def rungs(self) -> tuple[float, ...]:
        """Rung budgets in epochs: ``min_epochs * eta**k`` for every ``k`` with a budget below ``max_epochs``."""
        out: list[float] = []
        r = float(self.min_epochs)
        while r < self.max_epochs * (1 - 1e-12):
            out.append(r)
            r *= self.eta
        return tuple(out)

    @property
    def min_trials(self) -> int:
        """Trials a rung needs before it prunes anyone (``min_trials_per_rung``, default ``eta``)."""
        return self.eta if self.min_trials_per_rung is None else self.min_trials_per_rung


def from_config(cfg: PrunerConfig, *, log: Callable[[str], None] | None = None) -> MOASHAPruner | None:
    """The pruner a study's ``pruner:`` section asks for; None for ``name: none``."""
    if cfg.name == "none":
        return None
    if cfg.name != "mo_asha":
        raise ConfigError(f"pruner.name: unknown pruner {cfg.name!r}; expected one of: mo_asha, none")
    return MOASHAPruner(MOASHAConfig(min_epochs=float(cfg.min_epochs), eta=int(cfg.eta),
                                     max_epochs=float(cfg.max_epochs), min_trials_per_rung=cfg.min_trials_per_rung,
                                     floors=dict(cfg.floors)), log=log)


def _rank_split_front(vecs: np.ndarray, numbers: list[int], ref: np.ndarray) -> list[int]:
    """Positions of a front's points, best first: exclusive hypervolume contribution, then trial number.

    Equal vectors are one point for the contribution; the copy of the lowest trial number carries it, the
    others count 0 (they add nothing the first one does not already cover).
    """
    uniq, inverse = np.unique(vecs, axis=0, return_inverse=True)
    contrib_u = hypervolume_contributions(uniq, ref)
    contrib = np.zeros(len(vecs))
    seen: set[int] = set()
    for pos in sorted(range(len(vecs)), key=lambda i: numbers[i]):
        u = int(np.ravel(inverse)[pos])
        if u not in seen:
            seen.add(u)
            contrib[pos] = contrib_u[u]
    return sorted(range(len(vecs)), key=lambda i: (-contrib[i], numbers[i]))


def promote(rung_records: Sequence[Record], candidate: Record, eta: int, directions: Sequence[object], *,
            min_trials: int | None = None) -> tuple[bool, str]:
    """Decides whether the candidate continues past a rung (pure: no storage, no Optuna objects).

    The rule, for the ``n`` distinct trials at the rung (``rung_records`` plus the candidate; a record
    with the candidate's number is replaced by the candidate):

    1. While ``n < min_trials`` (default ``eta``) the candidate is promoted: too few trials to rank.
    2. Otherwise the top ``k = ceil(n / eta)`` continue. Trials are ranked front by front (non-dominated
       sorting, objectives in ``directions``). The fronts that fit wholly in ``k`` are promoted, the ones
       after the cut are pruned; inside the front that the cut splits, trials are ranked by exclusive
       hypervolume contribution within that front (largest first; equal vectors count once, for the lowest
       trial number), then by trial number (earlier first). The reference point is the worst value per
       objective among the ``n`` trials plus 10% of their range (plus 1 where all are equal), so the
       ranking does not change under a per-objective shift or scale.

    Asynchronous: the decision is taken against the records seen so far and never revisited, so an early
    trial may be promoted that a later one would have beaten (as in ASHA).

    Args:
        rung_records: ``(trial_number, objective_vector)`` of trials at the rung, in the study's directions.
        candidate: ``(trial_number, objective_vector)`` of the deciding trial.
        eta: the reduction factor (>= 2).
        directions: ``"maximize"``/``"minimize"`` (or ``StudyDirection``) per objective.
        min_trials: trials the rung needs before it prunes; ``None`` means ``eta``.

    Returns:
        ``(promoted, reason)``; the reason names the candidate's rank, its front and the cut.
    """
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"eta = {eta!r}: expected an integer >= 2")
    need = eta if min_trials is None else min_trials
    number, cand_vec = int(candidate[0]), np.asarray(candidate[1], dtype=float)
    cand_min = to_minimization(cand_vec, directions)
    if cand_min.ndim != 1 or not np.isfinite(cand_min).all():
        raise ConfigError(f"trial {number}: objective vector {cand_vec.tolist()}: expected finite numbers")
    numbers = [number]
    vecs = [cand_min]
    for num, vec in rung_records:
        if int(num) == number:
            continue
        v = to_minimization(np.asarray(vec, dtype=float), directions)
        if not np.isfinite(v).all():
            continue  # a record that cannot be ranked (NaN metric) is ignored, not fatal for others
        numbers.append(int(num))
        vecs.append(v)
    n = len(numbers)
    if n < need:
        return True, f"{n} of {need} trials needed to rank have reached this rung: promoted"
    k = math.ceil(n / eta)
    pts = np.stack(vecs)
    fronts = non_dominated_sort(pts)
    before = 0
    for f_idx, front in enumerate(fronts):
        if 0 in front:  # position 0 is the candidate
            break
        before += len(front)
    where = f"front {f_idx + 1} of {len(fronts)}"
    cut = f"top {k} = ceil({n}/{eta}) of {n} trials continue"
    if before + len(front) <= k:
        return True, f"{where}, rank <= {before + len(front)}: {cut}"
    if before >= k:
        return False, f"{where}, behind {before} trials of better fronts: {cut}"
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ref = hi + np.where(hi > lo, 0.1 * (hi - lo), 1.0)
    order = _rank_split_front(pts[front], [numbers[i] for i in front], ref)
    rank = before + order.index(front.index(0)) + 1
    verdict = rank <= k
    return verdict, f"{where} (split by the cut, ties by hypervolume contribution), rank {rank}: {cut}"


def rung_records(trials: Sequence[optuna.trial.FrozenTrial], k: int, objectives: Sequence[str]) -> list[Record]:
    """``(number, vector)`` of the trials with every ``rung_<k>_<objective>`` attribute (in the study's directions).

    Only trials in the states COMPLETE, PRUNED and RUNNING count; partly written records (another
    worker between two attribute writes) are skipped.
    """
    keys = [f"rung_{k}_{name}" for name in objectives]
    out: list[Record] = []
    for t in trials:
        if t.state not in RECORD_STATES:
            continue
        attrs = t.user_attrs
        if all(key in attrs for key in keys):
            out.append((t.number, tuple(float(attrs[key]) for key in keys)))
    return out


class MOASHAPruner:
    """MO-ASHA on an Optuna study: hands out one :class:`RungReporter` per trial.

    Args:
        config: rungs, ``eta`` and the ranked objectives; default :class:`MOASHAConfig()`.
        log: optional sink for one line per decision.
    """

    def __init__(self, config: MOASHAConfig | None = None, *, log: Callable[[str], None] | None = None) -> None:
        self.config = config or MOASHAConfig()
        self.log = log

    @property
    def rungs(self) -> tuple[float, ...]:
        """Rung budgets in fine-tuning epochs (see :attr:`MOASHAConfig.rungs`)."""
        return self.config.rungs

    def reporter(self, trial: optuna.Trial, study: optuna.Study | None = None) -> RungReporter:
        """The ``on_rung`` callback for one trial (``study`` defaults to ``trial.study``)."""
        return RungReporter(self, trial, study if study is not None else trial.study)

    def decide(self, study: optuna.Study, candidate: Record, k: int) -> tuple[bool, str, list[int]]:
        """Ranks ``candidate`` against the rung-``k`` records in ``study``'s storage.

        Returns:
            ``(promoted, reason, peers)``: ``peers`` are the trial numbers ranked against (candidate excluded).
        """
        records = rung_records(study.get_trials(deepcopy=False, states=RECORD_STATES), k, self.config.objectives)
        records = [r for r in records if r[0] != candidate[0]]
        ok, reason = promote(records, candidate, self.config.eta, self.config.directions,
                             min_trials=self.config.min_trials)
        return ok, reason, [r[0] for r in records]


class RungReporter:
    """``on_rung(k, epochs_done, metrics)`` for one Optuna trial: store, rank against storage, prune or continue.

    Raises ``optuna.TrialPruned(reason)`` (after storing ``pruned_reason``) when the trial does not make the cut.
    """

    def __init__(self, pruner: MOASHAPruner, trial: optuna.Trial, study: optuna.Study) -> None:
        self.pruner, self.trial, self.study = pruner, trial, study

    @property
    def rungs(self) -> tuple[float, ...]:
        """Rung budgets in fine-tuning epochs."""
        return self.pruner.rungs

    def __call__(self, k: int, epochs_done: float, metrics: Mapping[str, float]) -> None:
        cfg = self.pruner.config
        rungs = cfg.rungs
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(rungs):
            raise ConfigError(f"rung {k!r}: expected an index 0..{len(rungs) - 1} (rungs {list(rungs)} epochs)")
        missing = [name for name in (*cfg.objectives, *cfg.floors) if name not in metrics]
        if missing:
            raise ConfigError(f"rung {k} metrics {sorted(metrics)}: missing objective(s) {missing}")
        values = tuple(float(metrics[name]) for name in cfg.objectives)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"rung {k} objectives {dict(zip(cfg.objectives, values))}: expected finite numbers")
        trial = self.trial
        trial.set_user_attr(f"rung_{k}_epochs", float(epochs_done))
        extras = [key for key in metrics if key not in cfg.objectives]
        for key in [*extras, *cfg.objectives]:  # objectives last: a record counts once all of them are there
            trial.set_user_attr(f"rung_{k}_{key}", float(metrics[key]))
        ok, reason, peers = self.pruner.decide(self.study, (trial.number, values), k)
        below = [f"{key} {float(metrics[key]):.4g} < floor {floor:g}" for key, floor in cfg.floors.items()
                 if float(metrics[key]) < floor]
        if below:
            ok, reason = False, f"below the absolute floor: {', '.join(below)}"
        trial.set_user_attr(f"rung_{k}_seen", len(peers) + 1)
        trial.set_user_attr(f"rung_{k}_peers", peers)
        trial.set_user_attr(f"rung_{k}_promoted", ok)
        reason = f"MO-ASHA rung {k} ({rungs[k]:g} epochs): {reason}"
        # a baseline is the reference point the front is judged against: it runs in full whatever its rank
        # (its rung records still rank the others)
        kept = not ok and bool(trial.user_attrs.get("baseline"))
        if self.pruner.log is not None:
            verdict = "kept (a baseline runs in full; would be pruned)" if kept else "promoted" if ok else "pruned"
            self.pruner.log(f"trial {trial.number} {verdict}: {reason}")
        if kept:
            trial.set_user_attr(f"rung_{k}_kept_baseline", True)
        elif not ok:
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)
