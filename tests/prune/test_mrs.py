"""MRS estimation (RiFT-style sensitivity), ratio allocation, and the per-checkpoint cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from searchprune.config import PruneConfig, ThreatModel
from searchprune.errors import ConfigError
from searchprune.prune.allocation.mrs import mrs_ratios, mrs_ratios_for, mrs_scores
from searchprune.prune.cache import StatCache

THREAT = ThreatModel(eps=0.1, alpha=0.03, steps=3)


class TwoBranch(nn.Module):
    """logits = loud(x) + 0.01 * quiet(x): a relative perturbation of ``quiet`` moves the logits a
    hundred times less than the same relative perturbation of ``loud``."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.loud = nn.Linear(16, 4)
        self.quiet = nn.Linear(16, 4)
        with torch.no_grad():
            self.quiet.weight.copy_(self.loud.weight)  # same norm, so the radius is the same too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flat(x)
        return self.loud(x) + 0.01 * self.quiet(x)


def _loader(n_batches: int = 2, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(batch, 1, 4, 4, generator=g), torch.randint(0, 4, (batch,), generator=g))
            for _ in range(n_batches)]


def _layers(model: TwoBranch) -> dict[str, nn.Module]:
    return {"loud": model.loud, "quiet": model.quiet}


def test_more_sensitive_layer_ranks_higher() -> None:
    model = TwoBranch()
    scores = mrs_scores(model, _layers(model), _loader(), THREAT, eps_w=0.5, passes=2, n_batches=2)
    assert set(scores) == {"loud", "quiet"}
    assert scores["loud"] > 10 * scores["quiet"] > 0


def test_sequential_net_scores_are_nonnegative_and_finite() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4))
    scores = mrs_scores(model, {"0": model[0], "3": model[3]}, _loader(), THREAT, passes=1, n_batches=1)
    assert all(v >= 0 and v == v and v != float("inf") for v in scores.values())


def test_weights_modes_and_flags_restored_bit_identically() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 4))
    model.train()
    model[4].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    mrs_scores(model, {"0": model[0], "4": model[4]}, _loader(), THREAT, eps_w=0.3, passes=2, n_batches=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched too (eval mode)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_ratios_monotone_exact_mean_and_capped() -> None:
    mrs = {"a": 0.001, "b": 0.01, "c": 0.1, "d": 1.0, "e": 0.0}
    sizes = {"a": 100, "b": 1000, "c": 5000, "d": 200, "e": 50}
    target = 0.6
    r = mrs_ratios(mrs, sizes, target, r_max=0.9)
    mean = sum(sizes[n] * r[n] for n in r) / sum(sizes.values())
    assert mean == pytest.approx(target, abs=1e-12)
    assert all(0 <= v <= 0.9 for v in r.values())
    assert r["e"] == r["a"] == 0.9  # insensitive layers hit the cap
    order = sorted(mrs, key=mrs.get)  # increasing MRS -> non-increasing ratio
    assert all(r[x] >= r[y] for x, y in zip(order, order[1:]))
    assert r["b"] > r["c"] > r["d"]


def test_ratios_inverse_proportional_when_nothing_clips() -> None:
    r = mrs_ratios({"a": 1.0, "b": 2.0}, {"a": 10, "b": 10}, 0.3)
    assert r["a"] == pytest.approx(2 * r["b"])
    assert (r["a"] + r["b"]) / 2 == pytest.approx(0.3)


def test_ratios_edge_targets() -> None:
    assert mrs_ratios({"a": 1.0, "b": 3.0}, {"a": 5, "b": 7}, 0.0) == {"a": 0.0, "b": 0.0}
    r = mrs_ratios({"a": 1.0, "b": 3.0}, {"a": 5, "b": 7}, 0.95, r_max=0.95)
    assert r == pytest.approx({"a": 0.95, "b": 0.95})
    with pytest.raises(ConfigError, match="r_max"):
        mrs_ratios({"a": 1.0}, {"a": 5}, 0.97, r_max=0.95)
    with pytest.raises(ConfigError):
        mrs_ratios({"a": 1.0}, {"b": 5}, 0.5)


def _ctx(model: TwoBranch, cache_dir, *, options=None, loader=None) -> SimpleNamespace:
    cfg = PruneConfig(method="magnitude", allocation="mrs", sparsity=0.5,
                      options=options or {"passes": 1, "n_batches": 2, "eps_w": 0.5})
    return SimpleNamespace(model=model, layers=_layers(model), cfg=cfg, loader=loader or _loader(), threat=THREAT,
                           cache=None if cache_dir is None else StatCache(cache_dir))


def test_ratios_for_context_caches_per_checkpoint(tmp_path) -> None:
    model = TwoBranch()
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(1))
    first = mrs_ratios_for(_ctx(model, tmp_path))
    assert calls, "the first call estimates MRS"
    assert first["quiet"] > first["loud"]  # the insensitive layer is pruned more
    assert (first["quiet"] + first["loud"]) / 2 == pytest.approx(0.5)
    files = list(tmp_path.glob("mrs-*.pt"))
    assert len(files) == 1 and set(torch.load(files[0], weights_only=True)["value"]) == {"loud", "quiet"}

    calls.clear()
    assert mrs_ratios_for(_ctx(model, tmp_path)) == first
    assert not calls, "a cache hit runs no forward pass"

    with torch.no_grad():  # another checkpoint -> another key
        model.loud.weight.mul_(1.1)
    mrs_ratios_for(_ctx(model, tmp_path))
    assert calls and len(list(tmp_path.glob("mrs-*.pt"))) == 2

    calls.clear()  # other data -> another key (the scores are measured on the data)
    other = [(x.flip(0), y.flip(0)) for x, y in _loader()]
    mrs_ratios_for(_ctx(model, tmp_path, loader=other))
    assert calls and len(list(tmp_path.glob("mrs-*.pt"))) == 3


def test_ratios_for_needs_data() -> None:
    ctx = _ctx(TwoBranch(), None)
    ctx.loader = None
    with pytest.raises(ConfigError, match="loader"):
        mrs_ratios_for(ctx)


def test_linear_map_falls_with_mrs_in_proportion_and_meets_the_target() -> None:
    mrs = {"a": 1.0, "b": 2.0, "c": 4.0}
    sizes = {"a": 10, "b": 10, "c": 10}
    r = mrs_ratios(mrs, sizes, 0.3, mapping="linear")
    # f = 1 - m / 4 -> 0.75, 0.5, 0: the most sensitive layer keeps everything
    assert r["c"] == pytest.approx(0.0, abs=1e-9)
    assert r["a"] == pytest.approx(1.5 * r["b"])
    assert sum(r.values()) / 3 == pytest.approx(0.3)
    inverse = mrs_ratios(mrs, sizes, 0.3)
    assert inverse["c"] > 0  # the inverse map prunes every layer
    # equal sensitivities: both maps give the uniform ratio
    flat = {"a": 2.0, "b": 2.0}
    assert mrs_ratios(flat, {"a": 3, "b": 5}, 0.4, mapping="linear") == pytest.approx({"a": 0.4, "b": 0.4})


def test_linear_map_prunes_the_most_sensitive_layer_only_when_the_rest_are_capped() -> None:
    r = mrs_ratios({"a": 1.0, "b": 2.0}, {"a": 10, "b": 10}, 0.9, r_max=0.95, mapping="linear")
    assert r["a"] == pytest.approx(0.95)
    assert r["b"] == pytest.approx(0.85)
    with pytest.raises(ConfigError, match="mrs_map"):
        mrs_ratios({"a": 1.0}, {"a": 5}, 0.5, mapping="log")
