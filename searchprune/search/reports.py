"""What a study found: the Pareto table, a summary, the reference point and hypervolume."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from . import hypervolume as _hv

__all__ = [
    "CERTIFIED_ATTR", "certified_attrs", "cost_kind", "TABLE_COLUMNS", "pareto_rows", "format_table", "study_summary",
    "reference_point", "hypervolume", "study_hypervolume",
]

TABLE_COLUMNS = ("trial", "clean_acc", "robust_acc", "transfer_acc", "macs", "mac_ratio", "dense_macs", "bitops",
                 "size_bytes", "latency_ms", "test_worst_acc", "sparsity", "flags", "params")


CERTIFIED_ATTR = "certified"  # study user attribute: {trial number (str): {test_* attributes}} (study certify)


def certified_attrs(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's ``test_*`` attributes written by ``study certify`` (empty when not certified).

    A finished trial's user attributes cannot change in Optuna, so certification stores them in the
    study user attribute :data:`CERTIFIED_ATTR`; ``test_*`` user attributes of the trial itself
    (none today) would be read too.
    """
    stored = study.user_attrs.get(CERTIFIED_ATTR, {})
    own = {k: v for k, v in trial.user_attrs.items() if k.startswith("test_")}
    return {**own, **stored.get(str(trial.number), {})}


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` (every objective minimized) up to ``reference``.

    Only the non-dominated points are summed, so a dominated point changes the result by exactly
    nothing (not by a rounding difference); points outside the reference box add nothing.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, len(reference))
    if len(pts) == 0:
        return 0.0
    return _hv.hypervolume(pts[_hv.non_dominated_sort(pts)[0]], reference)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.3g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per Pareto-optimal feasible trial (``study.best_trials``), best robust first."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: -t.values[1]):
        ua = t.user_attrs
        flags = [k.removeprefix("flag_") for k, v in ua.items() if k.startswith("flag_") and k != "flag_any" and v]
        rows.append({
            "trial": t.number, "clean_acc": t.values[0], "robust_acc": t.values[1],
            "transfer_acc": ua.get("transfer_acc"), "macs": int(ua.get("macs", t.values[2])),
            "mac_ratio": ua.get("mac_ratio"), "dense_macs": ua.get("dense_macs"), "bitops": ua.get("bitops"),
            "size_bytes": ua.get("size_bytes"), "latency_ms": ua.get("latency_ms"), "sparsity": ua.get("sparsity"),
            "test_worst_acc": certified_attrs(study, t).get("test_worst_acc"),  # after `study certify`
            "flags": ",".join(flags) or "-",
            "params": " ".join(f"{k.split('.', 1)[1]}={_fmt(v)}" for k, v in t.params.items()
                               if not k.startswith("prune.layer_sparsity.")),
        })
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A plain-text table (what `study pareto` prints)."""
    if not rows:
        return "(no rows)"
    cells = [[_fmt(r.get(c)) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Trials by state, best value per objective, Pareto set size and hypervolume."""
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    names = study.metric_names or ["clean_acc", "robust_acc", "cost"]
    best = {}
    for i, (n, d) in enumerate(zip(names, study.directions)):
        if done:
            pick = max if d == optuna.study.StudyDirection.MAXIMIZE else min
            t = pick(done, key=lambda t: t.values[i])
            best[n] = {"value": t.values[i], "trial": t.number}
    out = {"name": study.study_name, "trials": len(trials), "by_state": {k: v for k, v in by_state.items() if v},
           "best": best, "pareto_size": len(study.best_trials) if done else 0}
    out["hypervolume"] = study_hypervolume(study) if done else None
    return out


def cost_kind(study: optuna.Study) -> str:
    """The study's third objective (the cost axis): its third metric name, "macs" by default."""
    return study.metric_names[2] if study.metric_names and len(study.metric_names) > 2 else "macs"


def reference_point(study: optuna.Study) -> list[float]:
    """Clean and robust accuracy 0, cost = the dense base model's (the worst a sensible trial can be).

    The base model's cost is the ``base_<kind>`` attribute every trial stores; trials from before
    it existed fall back to their own cost (and, for MACs, to their base ``dense_macs`` record).
    """
    kind = cost_kind(study)
    costs = []
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        ref = t.user_attrs.get(f"base_{kind}")
        if ref is None and kind == "macs" and "base_macs" not in t.user_attrs:
            ref = t.user_attrs.get("dense_macs")  # before issue 9, dense_macs held the base model's MACs
        costs.append(float(ref) if isinstance(ref, int | float) else float(t.values[2]))
    cost_ref = max(costs) if costs else 1.0
    return [0.0, 0.0, float(cost_ref) * 1.0001]


def study_hypervolume(study: optuna.Study) -> float:
    """Hypervolume of the feasible Pareto front, costs normalized by the dense model's."""
    ref = reference_point(study)
    pts = [[-t.values[0], -t.values[1], t.values[2] / ref[2]] for t in study.best_trials]
    return hypervolume(pts, [0.0, 0.0, 1.0])
