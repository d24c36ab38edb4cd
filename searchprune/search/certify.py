"""``study certify``: re-measure the front on held-out test images with the full attack suite.

Pareto membership and every "dominates" claim of a search are decided on the validation images the
sampler selected on, with the study's (cheap) PGD: the best of many noisy trials looks better than
it is. Certification takes every feasible Pareto trial plus the enqueued baselines, reloads each
checkpoint and measures it on the first ``n_test`` *test* images with the study's PGD and a suite
of strong attacks (``autoattack`` by default); an image counts as robust only if it survives all of
them (``test_worst_acc``). The certified front is the non-dominated set of
``(test_clean_acc, test_worst_acc, cost)``; the report says how many search-front trials leave it
and how far validation PGD drops to the test worst case.

Optuna does not let a finished trial's attributes change, so the ``test_*`` values of each trial
live in the study user attribute ``certified`` (trial number -> attributes) and are read back with
:func:`certified_attrs`; export, ``study pareto`` and the plots use them through that function.

An attack is given as ``NAME`` or ``NAME:key=value,key=value`` (options passed to the registered
attack), e.g. ``autoattack:version=quick`` or ``square:queries=1000``; a reduced budget is stored
with the results (``test_attacks``) so a table can say so.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .._torch import get_device, seed_everything
from ..attacks.spec import AttackSpec, parse_attack, suite_accuracy
from ..checkpoint import load_checkpoint
from ..data import BatchLoader, make_splits
from ..errors import ConfigError
from .export import _fetch_checkpoint
from .hypervolume import non_dominated_sort
from .reports import CERTIFIED_ATTR, certified_attrs, cost_kind, format_table
from .study import stored_config

__all__ = ["AttackSpec", "CertifyReport", "parse_attack", "certify_study", "certified_attrs", "certify_candidates",
           "CERTIFIED_ATTR"]  # certified_attrs and CERTIFIED_ATTR live in reports (export reads them too)

def certify_candidates(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto trials plus the completed enqueued baselines, by trial number."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    picked = {t.number: t for t in study.best_trials}
    picked.update({t.number: t for t in done if t.user_attrs.get("baseline")})
    return [picked[n] for n in sorted(picked)]


def _measure(model: torch.nn.Module, loader: BatchLoader, threat: Any, specs: Sequence[AttackSpec],
             n_test: int | None) -> dict[str, Any]:
    """Clean, the study's PGD and each attack of the suite; the worst case over all of them."""
    res = suite_accuracy(model, loader, threat, [AttackSpec("pgd"), *specs], max_images=n_test)
    out: dict[str, Any] = {"test_n": res["n"], "test_clean_acc": res["clean"], "test_worst_acc": res["worst"]}
    out.update({f"test_acc_{name}": acc for name, acc in res["acc"].items()})
    return out


@dataclass
class CertifyReport:
    """What certification found.

    Attributes:
        rows: one per certified trial: number, search and test metrics, cost, front membership.
        left_front: search-front trials that are not on the certified front.
        mean_drop, max_drop: validation PGD accuracy minus test worst-case accuracy (search-front trials).
        max_drop_trial: the trial with the largest drop.
        attacks: the suite, as given (reduced budgets visible).
        n_test: test images measured per trial.
    """

    rows: list[dict[str, Any]]
    left_front: list[int]
    mean_drop: float
    max_drop: float
    max_drop_trial: int | None
    attacks: list[str]
    n_test: int
    cost: str

    def table(self) -> str:
        cols = ("trial", "baseline", "clean_acc", "pgd_acc", "test_clean_acc", "test_worst_acc", "drop", self.cost,
                "search_front", "certified_front")
        return format_table(self.rows, cols)

    def summary(self) -> str:
        on_search = [r for r in self.rows if r["search_front"] == "yes"]
        return (f"{len(self.left_front)} of {len(on_search)} search-front trial(s) leave the certified front"
                f"{' (' + ', '.join(map(str, self.left_front)) + ')' if self.left_front else ''}; validation PGD -> "
                f"test worst case: mean drop {self.mean_drop:+.4f}, largest {self.max_drop:+.4f}"
                f"{f' (trial {self.max_drop_trial})' if self.max_drop_trial is not None else ''}")


def certify_study(study: optuna.Study, *, attacks: Sequence[str] = ("autoattack",), n_test: int | None = None,
                  device: str | None = None, seed: int = 0,
                  log: Callable[[str], None] = lambda s: None) -> CertifyReport:
    """Measures every feasible Pareto trial and baseline on test images with ``attacks``; stores ``test_*``.

    Args:
        study: a searchprune study.
        attacks: the suite (``NAME[:key=value,...]``, see :func:`parse_attack`).
        n_test: test images per trial (None: the whole test split).
        device: where to attack.
        seed: seeds each trial's measurement (the same for every trial).
        log: progress lines.

    Raises:
        ConfigError: a bad attack or no trial to certify.
    """
    specs = [parse_attack(a) for a in attacks]
    if n_test is not None and n_test < 1:
        raise ConfigError(f"--n-test: expected >= 1, got {n_test}")
    cfg = stored_config(study)
    candidates = certify_candidates(study)
    if not candidates:
        raise ConfigError(f"study {study.study_name!r} has no completed feasible trials to certify")
    dev = get_device(device)
    splits = make_splits(cfg.data)
    loader = BatchLoader(splits.test, cfg.data.eval_batch_size, device=dev, max_images=n_test)
    stored: dict[str, Any] = dict(study.user_attrs.get(CERTIFIED_ATTR, {}))
    suite = [str(s) for s in specs]
    front = {t.number for t in study.best_trials}
    kind = cost_kind(study)
    with tempfile.TemporaryDirectory() as tmp:
        for t in candidates:
            model, _ = load_checkpoint(_fetch_checkpoint(study, t, Path(tmp) / f"trial_{t.number}.pt"))
            seed_everything(seed)
            m = _measure(model.to(dev), loader, cfg.threat, specs, n_test)
            m["test_attacks"] = suite
            stored[str(t.number)] = m
            log(f"trial {t.number}: test clean {m['test_clean_acc']:.4f}, worst {m['test_worst_acc']:.4f} "
                f"({m['test_n']} images; {', '.join(suite)})")
    study.set_user_attr(CERTIFIED_ATTR, stored)
    study.set_user_attr("certify_info", {"attacks": suite, "n_test": n_test, "threat_clamp": cfg.threat.clamp})

    rows = []
    for t in candidates:
        m = stored[str(t.number)]
        pgd = float(t.user_attrs.get("pgd_acc", t.values[1]))
        rows.append({"trial": t.number, "baseline": "yes" if t.user_attrs.get("baseline") else "-",
                     "clean_acc": t.values[0], "pgd_acc": pgd, "test_clean_acc": m["test_clean_acc"],
                     "test_worst_acc": m["test_worst_acc"], "drop": pgd - m["test_worst_acc"],
                     kind: t.values[2], "search_front": "yes" if t.number in front else "-"})
    pts = np.array([[-r["test_clean_acc"], -r["test_worst_acc"], float(r[kind])] for r in rows])
    certified = {rows[i]["trial"] for i in non_dominated_sort(pts)[0]}
    for r in rows:
        r["certified_front"] = "yes" if r["trial"] in certified else "-"
    on_front = [r for r in rows if r["search_front"] == "yes"]
    drops = [r["drop"] for r in on_front]
    worst_row = max(on_front, key=lambda r: r["drop"]) if on_front else None
    n = stored[str(candidates[0].number)]["test_n"]
    return CertifyReport(rows=rows, left_front=[r["trial"] for r in on_front if r["trial"] not in certified],
                         mean_drop=float(np.mean(drops)) if drops else math.nan,
                         max_drop=float(max(drops)) if drops else math.nan,
                         max_drop_trial=worst_row["trial"] if worst_row else None, attacks=suite,
                         n_test=int(n), cost=kind)
