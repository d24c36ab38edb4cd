"""Exact hypervolume for 1-3 objectives, exclusive contributions and non-dominated sorting.

Everything here is in *minimization form*: a point ``p`` dominates the box ``[p, ref]``, and a
smaller coordinate is better. :func:`to_minimization` turns values of a study with mixed
directions (Optuna's ``"maximize"``/``"minimize"`` or ``StudyDirection``) into that form by
flipping the sign of maximized objectives; the reference point is flipped the same way.

Points that do not strictly dominate the reference point in every coordinate (on or outside the
reference box) dominate no volume and contribute nothing. Duplicates count once in the
hypervolume; each copy's exclusive contribution is 0 (the other copy still covers its box).

Algorithms (``n`` points): 2-D sorts by the first coordinate and sweeps (``O(n log n)``); 3-D
slices along the third coordinate and sums the 2-D area of each slab (``O(n^2 log n)``), which is
plenty for studies of a few thousand trials. Only numpy; no Optuna private module.

Example:
    >>> import numpy as np
    >>> hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0]))
    3.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = [
    "direction_signs",
    "hypervolume",
    "hypervolume_contributions",
    "non_dominated_sort",
    "to_minimization",
]


def direction_signs(directions: Sequence[object]) -> np.ndarray:
    """Multipliers that turn values of the given directions into minimization form.

    Args:
        directions: ``"maximize"``/``"minimize"`` (any case) or ``optuna.study.StudyDirection``
            members, one per objective.

    Returns:
        Float array with ``-1.0`` for maximized and ``+1.0`` for minimized objectives.
    """
    signs = []
    for d in directions:
        name = str(getattr(d, "name", d)).lower()  # StudyDirection.MAXIMIZE.name == "MAXIMIZE"
        if name == "maximize":
            signs.append(-1.0)
        elif name == "minimize":
            signs.append(1.0)
        else:
            raise ConfigError(f"objective direction {d!r}: expected 'maximize' or 'minimize'")
    return np.asarray(signs, dtype=float)


def to_minimization(values: np.ndarray | Sequence[Sequence[float]] | Sequence[float],
                    directions: Sequence[object]) -> np.ndarray:
    """Values (one point ``(d,)`` or points ``(n, d)``) of the given directions in minimization form."""
    arr = np.asarray(values, dtype=float)
    signs = direction_signs(directions)
    if arr.shape[-1:] != signs.shape:
        raise ConfigError(f"values of shape {arr.shape}: expected {len(signs)} objectives (one per direction)")
    return arr * signs


def _check(points: np.ndarray | Sequence[Sequence[float]], ref: np.ndarray | Sequence[float]
           ) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, dtype=float)
    r = np.asarray(ref, dtype=float)
    if r.ndim != 1 or r.shape[0] not in (1, 2, 3):
        raise ConfigError(f"reference point of shape {r.shape}: expected 1, 2 or 3 objectives")
    if pts.size == 0:
        pts = pts.reshape(0, r.shape[0])
    if pts.ndim != 2 or pts.shape[1] != r.shape[0]:
        raise ConfigError(f"points of shape {pts.shape}: expected (n, {r.shape[0]}) to match the reference point")
    if not (np.isfinite(pts).all() and np.isfinite(r).all()):
        raise ConfigError("points and reference point must be finite (got NaN or infinity)")
    return pts, r


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume of points that all strictly dominate ``ref``."""
    if len(pts) == 0:
        return 0.0
    order = np.lexsort((pts[:, 1], pts[:, 0]))  # by x, ties by y
    xs, ys = pts[order, 0], pts[order, 1]
    best = np.minimum.accumulate(ys)
    prev = np.concatenate(([ref[1]], best[:-1]))
    # each point lowers the staircase by (prev - y) over the width ref_x - x
    return float(np.sum((ref[0] - xs) * np.maximum(prev - ys, 0.0)))


def _hv3(pts: np.ndarray, ref: np.ndarray) -> float:
    """3-D hypervolume by slicing along z: slab [z_i, z_{i+1}) has the 2-D area of the points with z <= z_i."""
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 2], kind="stable")]
    zs = np.concatenate((pts[:, 2], [ref[2]]))
    total = 0.0
    for i in range(len(pts)):
        dz = zs[i + 1] - zs[i]
        if dz > 0:
            total += _hv2(pts[: i + 1, :2], ref[:2]) * dz
    return total


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if ref.shape[0] == 1:
        return float(ref[0] - pts[:, 0].min())
    if ref.shape[0] == 2:
        return _hv2(pts, ref)
    return _hv3(pts, ref)


def hypervolume(points: np.ndarray | Sequence[Sequence[float]], ref: np.ndarray | Sequence[float]) -> float:
    """Volume dominated by ``points`` (minimization form) and bounded by the reference point.

    Args:
        points: ``(n, d)`` with ``d`` in 1..3; ``n`` may be 0.
        ref: ``(d,)`` reference point; points not strictly better than it in every coordinate add nothing.

    Returns:
        The exact hypervolume (0.0 for no point inside the reference box).
    """
    pts, r = _check(points, ref)
    return _hv(pts, r)


def hypervolume_contributions(points: np.ndarray | Sequence[Sequence[float]],
                              ref: np.ndarray | Sequence[float]) -> np.ndarray:
    """Exclusive hypervolume contribution of each point: ``HV(all) - HV(all but this one)``.

    Dominated points, duplicates and points outside the reference box contribute 0.

    Returns:
        ``(n,)`` float array, one contribution per input point in input order.
    """
    pts, r = _check(points, ref)
    out = np.zeros(len(pts))
    inside = np.flatnonzero(np.all(pts < r, axis=1))
    if len(inside) == 0:
        return out
    sub = pts[inside]
    # only a point no other point weakly dominates can own volume alone; duplicates weakly dominate each other
    weak = np.all(sub[:, None, :] <= sub[None, :, :], axis=2)  # weak[i, j]: i weakly dominates j
    np.fill_diagonal(weak, False)
    total = _hv(sub, r)
    keep = np.ones(len(sub), dtype=bool)
    for j in np.flatnonzero(~weak.any(axis=0)):
        keep[j] = False
        out[inside[j]] = max(total - _hv(sub[keep], r), 0.0)
        keep[j] = True
    return out


def non_dominated_sort(points: np.ndarray | Sequence[Sequence[float]]) -> list[list[int]]:
    """Fronts of a non-dominated sort (minimization form), best first, as index lists.

    Front 0 holds the points no other point dominates; front ``k`` the points dominated only by
    points of earlier fronts. Equal points are in the same front. Indices within a front are ascending.
    """
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return []
    if pts.ndim != 2:
        raise ConfigError(f"points of shape {pts.shape}: expected (n, d)")
    if not np.isfinite(pts).all():
        raise ConfigError("points must be finite (got NaN or infinity)")
    le = np.all(pts[:, None, :] <= pts[None, :, :], axis=2)
    lt = np.any(pts[:, None, :] < pts[None, :, :], axis=2)
    dom = le & lt  # dom[i, j]: i dominates j
    n_dominators = dom.sum(axis=0)
    remaining = np.ones(len(pts), dtype=bool)
    fronts: list[list[int]] = []
    while remaining.any():
        front = np.flatnonzero(remaining & (n_dominators == 0))
        fronts.append([int(i) for i in front])
        remaining[front] = False
        n_dominators = n_dominators - dom[front].sum(axis=0)
    return fronts
