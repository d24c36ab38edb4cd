"""The allocation contract, parametrized over the registry: a score allocation keeps exactly the
units its target asks for (within one unit), always drops the ``-inf`` (already pruned) units, keeps
``min_keep`` per layer, and is deterministic; a non-score allocation (``learned``) refuses scores."""

from __future__ import annotations

import pytest
import torch

from searchprune.errors import ConfigError
from searchprune.prune import allocate, get_allocation, list_allocations
from searchprune.prune.allocation import has_ratios

SCORED = [a for a in list_allocations() if get_allocation(a).scored]
RATIOS = {"a": 0.25, "b": 0.75, "c": 0.5}


def _scores(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(40, generator=g), "b": torch.rand(8, 5, generator=g), "c": torch.rand(20, generator=g)}


def _allocate(name: str, scores: dict[str, torch.Tensor], sparsity: float = 0.5, **kw) -> dict[str, torch.Tensor]:
    ratios = RATIOS if has_ratios(name) else None
    return allocate(scores, allocation=name, sparsity=sparsity, ratios=ratios, **kw)


def test_the_registry_holds_the_documented_allocations() -> None:
    assert set(list_allocations()) == {"global", "uniform", "per_layer", "mrs", "learned"}
    assert SCORED and "learned" not in SCORED


@pytest.mark.parametrize("name", SCORED)
def test_exact_counts_and_shapes(name: str) -> None:
    scores = _scores()
    keep = _allocate(name, scores)
    assert {n: k.shape for n, k in keep.items()} == {n: s.shape for n, s in scores.items()}
    assert all(k.dtype == torch.bool for k in keep.values())
    removed = {n: int((~k).sum()) for n, k in keep.items()}
    if name == "global":
        assert sum(removed.values()) == round(0.5 * sum(s.numel() for s in scores.values()))
        threshold = max(float(scores[n][~keep[n]].max()) for n in keep if removed[n])
        assert all(float(scores[n][keep[n]].min()) >= threshold for n in keep)  # one cut over all layers
    else:
        per = RATIOS if has_ratios(name) else {n: 0.5 for n in scores}
        assert removed == {n: round(per[n] * s.numel()) for n, s in scores.items()}
        for n in keep:  # within a layer the lowest scores go
            if removed[n]:
                assert float(scores[n][~keep[n]].max()) <= float(scores[n][keep[n]].min())


@pytest.mark.parametrize("name", SCORED)
def test_dead_units_always_go_and_min_keep_holds(name: str) -> None:
    scores = _scores(1)
    scores["a"][:30] = float("-inf")  # already pruned: more than any target here asks of layer a
    keep = _allocate(name, scores, sparsity=0.1, min_keep=3)
    assert not keep["a"][:30].any()
    assert all(int(k.sum()) >= 3 for k in keep.values())


@pytest.mark.parametrize("name", SCORED)
def test_deterministic_and_rejects_nan(name: str) -> None:
    scores = _scores(2)
    first, again = _allocate(name, scores), _allocate(name, {n: s.clone() for n, s in scores.items()})
    assert all(torch.equal(first[n], again[n]) for n in first)
    scores["c"][0] = float("nan")
    with pytest.raises(ValueError, match="'c'"):
        _allocate(name, scores)


@pytest.mark.parametrize("name", [a for a in list_allocations() if not get_allocation(a).scored])
def test_non_score_allocations_refuse_scores(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        allocate(_scores(), allocation=name, sparsity=0.5)
    msg = str(e.value)
    assert repr(name) in msg and all(a in msg for a in SCORED)


def test_unknown_allocation_lists_the_registry() -> None:
    with pytest.raises(ConfigError) as e:
        allocate(_scores(), allocation="nope", sparsity=0.5)
    assert "nope" in str(e.value) and all(a in str(e.value) for a in list_allocations())
