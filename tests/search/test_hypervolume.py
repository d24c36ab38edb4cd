"""The own hypervolume against exact brute force: unit boxes counted on integer points, inclusion-exclusion."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest

from searchprune.errors import ConfigError
from searchprune.search.hypervolume import (
    direction_signs,
    hypervolume,
    hypervolume_contributions,
    non_dominated_sort,
    to_minimization,
)

LO = -2  # smallest coordinate drawn


def _covered(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(n, cells...) bool: unit cell [c, c+1)^d inside the reference box is covered by point i (p_i <= c)."""
    axes = [np.arange(LO, int(r)) for r in ref]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (cells..., d)
    return np.stack([np.all(grid >= p, axis=-1) for p in points]) if len(points) else np.zeros((0, *grid.shape[:-1]))


def _brute_hv(points: np.ndarray, ref: np.ndarray) -> int:
    return int(_covered(points, ref).any(axis=0).sum()) if len(points) else 0


def _brute_contrib(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    cov = _covered(points, ref)
    count = cov.sum(axis=0)
    return np.array([int((cov[i] & (count == 1)).sum()) for i in range(len(points))])


def _integer_points(rng: np.random.Generator, n: int, d: int, *, front: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    pts = rng.integers(LO, 12, size=(n, d)).astype(float)  # some beyond ref = 10: outside the box
    if front and d > 1:  # coordinates summing to about a constant: many mutually non-dominated points
        pts[:, -1] = np.clip((7 if d == 2 else 10) - pts[:, :-1].sum(axis=1) + rng.integers(-1, 2, size=n), LO, 11)
    if n > 2:
        pts[-1] = pts[0]  # a duplicate
        pts[-2] = np.minimum(pts[1] + 1, 11)  # a point dominated by (or equal to) another
    return pts, np.full(d, 10.0)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_hypervolume_matches_box_count(d, seed):
    rng = np.random.default_rng(seed * 10 + d)
    pts, ref = _integer_points(rng, int(rng.integers(0, 25)), d)
    assert hypervolume(pts, ref) == pytest.approx(_brute_hv(pts, ref), abs=1e-9)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_contributions_match_box_count(d, seed):
    rng = np.random.default_rng(1000 + seed * 10 + d)
    pts, ref = _integer_points(rng, int(rng.integers(1, 20)), d, front=seed % 3 != 0)
    np.testing.assert_allclose(hypervolume_contributions(pts, ref), _brute_contrib(pts, ref), atol=1e-9)


def _inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    pts = points[np.all(points < ref, axis=1)]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for sub in itertools.combinations(range(len(pts)), k):
            corner = pts[list(sub)].max(axis=0)
            total += (-1) ** (k + 1) * float(np.prod(ref - corner))
    return total


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_on_floats_matches_inclusion_exclusion(d, seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0.0, 1.1, size=(7, d))
    ref = np.ones(d)
    assert hypervolume(pts, ref) == pytest.approx(_inclusion_exclusion(pts, ref), rel=1e-12, abs=1e-12)


def test_hand_values():
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [3.0, 3.0]) == 3.0
    assert hypervolume(np.zeros((0, 3)), np.ones(3)) == 0.0
    assert hypervolume([[1.0, 1.0, 1.0]], [1.0, 2.0, 2.0]) == 0.0  # on the reference box's face: no volume
    assert hypervolume([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [1.0, 2.0, 3.0]) == 6.0  # duplicates count once
    np.testing.assert_array_equal(hypervolume_contributions([[0.0, 0.0], [0.0, 0.0], [1.0, 0.5]], [2.0, 2.0]),
                                  [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(hypervolume_contributions([[0.0, 1.0], [1.0, 0.0]], [2.0, 2.0]), [1.0, 1.0])


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_non_dominated_sort_fronts(d, seed):
    rng = np.random.default_rng(seed)
    pts, _ = _integer_points(rng, 20, d)
    fronts = non_dominated_sort(pts)
    assert sorted(i for f in fronts for i in f) == list(range(len(pts)))
    assert all(f == sorted(f) and f for f in fronts)
    for k, front in enumerate(fronts):
        later = [j for f in fronts[k:] for j in f]
        for i in front:
            assert not any(_dominates(pts[j], pts[i]) for j in later)  # nothing from this or a later front dominates i
            if k:
                assert any(_dominates(pts[j], pts[i]) for j in fronts[k - 1])  # something of the previous front does
    assert non_dominated_sort(np.zeros((0, 2))) == []


def test_directions():
    np.testing.assert_array_equal(direction_signs(["maximize", "MINIMIZE"]), [-1.0, 1.0])
    dirs = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MAXIMIZE,
            optuna.study.StudyDirection.MINIMIZE]
    np.testing.assert_array_equal(to_minimization([[0.9, 0.5, 100.0]], dirs), [[-0.9, -0.5, 100.0]])
    np.testing.assert_array_equal(to_minimization([0.9, 0.5, 100.0], dirs), [-0.9, -0.5, 100.0])
    with pytest.raises(ConfigError, match="'up'"):
        direction_signs(["up"])
    with pytest.raises(ConfigError, match="NOT_SET"):
        direction_signs([optuna.study.StudyDirection.NOT_SET])
    with pytest.raises(ConfigError, match="expected 2 objectives"):
        to_minimization([1.0, 2.0, 3.0], ["maximize", "minimize"])


def test_bad_input():
    with pytest.raises(ConfigError, match="expected 1, 2 or 3"):
        hypervolume(np.zeros((1, 4)), np.ones(4))
    with pytest.raises(ConfigError, match=r"expected \(n, 2\)"):
        hypervolume(np.zeros((1, 3)), np.ones(2))
    with pytest.raises(ConfigError, match="finite"):
        hypervolume([[np.nan, 0.0]], [1.0, 1.0])
