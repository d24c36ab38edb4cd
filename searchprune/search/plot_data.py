"""What the study figures and the report draw: one record per finished trial, 2-D fronts, hypervolume history,
the points of each objective pair, the certified metric and the stage-wise rows.

Kept apart from the drawing (:mod:`.plots`) so the numbers behind each figure are tested as data.
Everything here reads trials defensively: attributes a study version did not store (test metrics of
certification, stage-wise robustness, a baseline's name) are simply absent, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..config import TrialDefaults
from ..errors import ConfigError
from .baselines import BASELINES
from .reports import certified_attrs, hypervolume, reference_point
from .space import strip_tag, trial_params_from_flat
from .study import stored_config

__all__ = [
    "Metric", "metric", "TrialPoint", "trial_points", "front_2d", "hypervolume_history", "baseline_name",
    "STAGES", "DEFAULT_NAMES", "maximized", "metric_names", "cost_kind", "trial_groups", "pair_points",
    "certified_metric", "compute_axis", "stage_rows",
]

DEFAULT_NAMES = ["clean_acc", "robust_acc", "macs"]
STAGES = ("prune", "finetune", "quantize")


@dataclass(frozen=True)
class Metric:
    """How a metric is shown: label, unit and the factor from stored value to shown value."""

    name: str
    label: str
    unit: str
    scale: float

    @property
    def axis(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def show(self, v: float) -> float:
        return v * self.scale


_METRICS = {
    "clean_acc": ("clean accuracy", "%", 100.0), "robust_acc": ("robust accuracy", "%", 100.0),
    "pgd_acc": ("PGD accuracy", "%", 100.0), "worst_acc": ("worst-case accuracy", "%", 100.0),
    "macs": ("MACs", "M", 1e-6), "dense_macs": ("dense-kernel MACs", "M", 1e-6), "bitops": ("BitOPs", "G", 1e-9),
    "size_bytes": ("size", "kB", 1e-3), "latency_ms": ("latency", "ms", 1.0), "sparsity": ("sparsity", "%", 100.0),
}


def metric(name: str) -> Metric:
    """Display settings of a metric (``test_*`` and ``acc_*`` accuracies in %, unknown names as stored)."""
    base = name.removeprefix("test_")
    prefix = "test " if base != name else ""
    if base in _METRICS:
        label, unit, scale = _METRICS[base]
    elif base.startswith("acc_"):
        label, unit, scale = f"accuracy under {base.removeprefix('acc_')}", "%", 100.0
    else:
        label, unit, scale = base.replace("_", " "), "", 1.0
    return Metric(name, prefix + label, unit, scale)


@dataclass(frozen=True)
class TrialPoint:
    """A completed trial as the figures see it.

    Attributes:
        values: the objectives, in the study's metric order.
        method, recipe: pruning method and fine-tuning recipe ("none": no fine-tuning).
        bits: weight bits (32: not quantized).
        baseline: the seed recipe's name when the trial was enqueued as a baseline, else None.
        feasible: False when a stored constraint is violated.
        attrs: the trial's user attributes.
    """

    number: int
    values: tuple[float, ...]
    method: str
    recipe: str
    bits: int
    sparsity: float | None
    baseline: str | None
    feasible: bool
    attrs: Mapping[str, Any] = field(repr=False)

    def value(self, name: str, names: Sequence[str]) -> float | None:
        """An objective by metric name, else a numeric user attribute (None when absent)."""
        if name in names:
            return self.values[list(names).index(name)]
        v = self.attrs.get(name)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None

    def hover(self, names: Sequence[str]) -> str:
        head = f"trial {self.number}" + (f" (baseline {self.baseline})" if self.baseline else "")
        what = f"{self.method} / fine-tune {self.recipe} / {self.bits}-bit"
        sparsity = f"sparsity {self.sparsity:.1%}" if self.sparsity is not None else ""
        vals = ", ".join(f"{metric(n).label} {metric(n).show(v):.4g}{metric(n).unit}"
                         for n, v in zip(names, self.values))
        return "<br>".join(p for p in (head, what, sparsity, vals, "" if self.feasible else "infeasible") if p)


def _defaults(study: optuna.Study) -> TrialDefaults:
    try:
        return stored_config(study).defaults
    except ConfigError:  # a study searchprune did not create: no defaults to resolve against
        return TrialDefaults()


def _resolve(t: FrozenTrial, defaults: TrialDefaults) -> tuple[str, str, int, float | None]:
    """(method, recipe, weight bits, sparsity) of a trial: its params over the study's defaults."""
    flat = {strip_tag(k): v for k, v in t.params.items()}
    try:
        p = trial_params_from_flat(defaults, flat)
        method, sparsity = p.prune.method, p.prune.sparsity
        recipe = p.finetune.recipe if p.finetune is not None else "none"
        bits = p.quant.weight_bits if p.quant.mode != "none" else 32
    except (ConfigError, TypeError, ValueError):  # params of another version: read them as they are
        method = str(flat.get("prune.method", defaults.prune.method))
        recipe = str(flat.get("finetune.recipe", "?"))
        bits = int(flat.get("quant.weight_bits", 32)) if flat.get("quant.mode", "none") != "none" else 32
        sparsity = flat.get("prune.sparsity")
    measured = t.user_attrs.get("sparsity")
    if isinstance(measured, int | float):
        sparsity = float(measured)
    return method, recipe, int(bits), None if sparsity is None else float(sparsity)


def baseline_name(t: FrozenTrial, method: str, recipe: str, sparsity: float | None) -> str | None:
    """The name of the seed recipe a baseline trial ran (None for a searched trial).

    A stored ``baseline_name`` (or a string ``baseline``) attribute wins; otherwise the baseline
    table row with this method and recipe (and sparsity, for rows that fix one) names it.
    """
    ua = t.user_attrs
    for key in ("baseline_name", "baseline"):
        if isinstance(ua.get(key), str) and ua[key]:
            return str(ua[key])
    if not ua.get("baseline"):
        return None
    flat = {strip_tag(k): v for k, v in t.params.items()}
    for name in BASELINES.names():
        b = BASELINES.get(name)
        if b.recipe != recipe or (b.method is not None and b.method != method):
            continue
        if b.granularity is not None and flat.get("prune.granularity", b.granularity) != b.granularity:
            continue
        if b.sparsity is not None and (sparsity is None or abs(sparsity - b.sparsity) > 1e-6):
            continue
        if b.sparsity is None and sparsity is not None and sparsity < 1e-6:
            continue
        return name if b.sparsity is not None or sparsity is None else f"{name}@{sparsity:.2f}"
    return f"baseline {method}/{recipe}"


def _feasible(t: FrozenTrial) -> bool:
    cons = getattr(t, "constraints", None) or {}
    if any(v > 0 for v in (cons.values() if isinstance(cons, Mapping) else cons)):
        return False
    return t.user_attrs.get("feasible", True) is not False


def trial_points(study: optuna.Study) -> list[TrialPoint]:
    """One :class:`TrialPoint` per completed trial, in trial order."""
    defaults = _defaults(study)
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is None:
            continue
        method, recipe, bits, sparsity = _resolve(t, defaults)
        out.append(TrialPoint(t.number, tuple(float(v) for v in t.values), method, recipe, bits, sparsity,
                              baseline_name(t, method, recipe, sparsity), _feasible(t),
                              # `study certify` keeps test_* in a study attribute (finished trials are read-only)
                              {**t.user_attrs, **certified_attrs(study, t)}))
    return out


def front_2d(xy: Sequence[tuple[float, float]], maximize: tuple[bool, bool]) -> list[int]:
    """Indices of the points non-dominated in this 2-D projection, sorted by x ascending.

    Drawn as a step line: ``hv`` (steps-post) when x is minimized, ``vh`` (steps-pre) when x is
    maximized; either way the line is the attainment boundary of the projection.
    """
    sign = [(-1.0 if m else 1.0) for m in maximize]  # to minimization
    keys = [(sign[0] * x, sign[1] * y) for x, y in xy]
    keep: list[int] = []
    for i, (a, b) in enumerate(keys):
        dominated = any((c <= a and d <= b and (c < a or d < b)) for j, (c, d) in enumerate(keys) if j != i)
        duplicate = any(keys[j] == (a, b) for j in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return sorted(keep, key=lambda i: xy[i][0])


def maximized(study: optuna.Study) -> list[bool]:
    return [d == StudyDirection.MAXIMIZE for d in study.directions]


def _duration_s(t: FrozenTrial) -> float:
    v = t.user_attrs.get("time_s")
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    if t.datetime_start is not None and t.datetime_complete is not None:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return 0.0


def hypervolume_history(study: optuna.Study) -> dict[str, list[float]]:
    """Hypervolume of the feasible completed trials so far, after each finished trial.

    The hypervolume is :func:`.reports.study_hypervolume`'s (accuracies against 0, the cost
    divided by the dense model's): a 1.0 would be a perfect free model.

    Returns:
        ``trials`` (finished trials so far), ``compute_s`` (their summed ``time_s``, pruned and
        failed trials included: compute spent) and ``hypervolume``, one entry per finished trial.
    """
    ref = reference_point(study)
    out: dict[str, list[float]] = {"trials": [], "compute_s": [], "hypervolume": []}
    pts: list[list[float]] = []
    spent = 0.0
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for k, t in enumerate(sorted(study.get_trials(deepcopy=False, states=finished), key=lambda t: t.number)):
        spent += _duration_s(t)
        if t.state == TrialState.COMPLETE and t.values is not None and _feasible(t):
            pts.append([-t.values[0], -t.values[1], t.values[2] / ref[2]])
        out["trials"].append(k + 1)
        out["compute_s"].append(spent)
        out["hypervolume"].append(hypervolume(pts, [0.0, 0.0, 1.0]) if pts else 0.0)
    return out


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objective names (``DEFAULT_NAMES`` for a study that never set them)."""
    return list(study.metric_names or DEFAULT_NAMES)


def cost_kind(names: Sequence[str]) -> str:
    """The cost objective's name (the third), for titles."""
    return names[2] if len(names) > 2 else "cost"


def trial_groups(points: Sequence[TrialPoint]) -> dict[tuple[str, str, int], list[TrialPoint]]:
    """Feasible searched points (seed recipes apart) by (method, recipe, weight bits): one legend entry each."""
    out: dict[tuple[str, str, int], list[TrialPoint]] = {}
    for p in points:
        if p.feasible and p.baseline is None:
            out.setdefault((p.method, p.recipe, p.bits), []).append(p)
    return out


def pair_points(points: Sequence[TrialPoint], names: Sequence[str], x: str, y: str,
                maximize: tuple[bool, bool]) -> tuple[list[TrialPoint], list[tuple[float, float]]]:
    """The points that have both metrics, and the 2-D front (shown units) of the feasible ones."""
    have = [p for p in points if p.value(x, names) is not None and p.value(y, names) is not None]
    mx, my = metric(x), metric(y)
    feas = [p for p in have if p.feasible]
    xy = [(mx.show(p.value(x, names) or 0.0), my.show(p.value(y, names) or 0.0)) for p in feas]
    return have, [xy[i] for i in front_2d(xy, maximize)]


def certified_metric(points: Sequence[TrialPoint]) -> str | None:
    """The certified robust metric the trials stored (``test_worst_acc``, else a ``test_acc_*``), or None."""
    keys = {k for p in points for k, v in p.attrs.items() if k.startswith("test_") and isinstance(v, int | float)}
    if "test_worst_acc" in keys:
        return "test_worst_acc"
    accs = sorted(k for k in keys if k.startswith("test_acc_"))
    return accs[0] if accs else None


def compute_axis(seconds: Sequence[float]) -> tuple[list[float], str]:
    """Summed trial seconds in the unit that reads best (s, min or h), and the axis label."""
    if seconds and seconds[-1] >= 2 * 3600:
        return [s / 3600 for s in seconds], "compute (trial time, h)"
    if seconds and seconds[-1] >= 600:
        return [s / 60 for s in seconds], "compute (trial time, min)"
    return list(seconds), "compute (trial time, s)"


def stage_rows(study: optuna.Study, points: Sequence[TrialPoint]) -> list[tuple[TrialPoint, list[str]]]:
    """Pareto trials with stage-wise measurements, and the stages each has (in pipeline order)."""
    pareto = {t.number for t in study.best_trials}
    out = []
    for p in points:
        stages = [s for s in STAGES if isinstance(p.attrs.get(f"stage_{s}_pgd_acc"), int | float)]
        if p.number in pareto and stages:
            out.append((p, stages))
    return out
