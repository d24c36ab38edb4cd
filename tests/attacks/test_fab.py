"""FAB: the box-constrained hyperplane projection (exact, and equal to the reference's), minimal
adversarial points inside the ball, targeted and untargeted, L-inf and L2, honesty on a robust
model. The torchattacks comparison of the whole FAB-T run is in test_autoattack.py."""

from __future__ import annotations

import pytest
import torch
from _toys import Constant, toy_data
from _toys import accuracy as _acc

from searchprune.attacks.fab import fab, hyperplane_projection
from searchprune.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n: int = 64, d: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, d, generator=g)
    w = torch.randn(n, d, generator=g)
    w[w.abs() < 0.2] = 0  # some coordinates do not matter
    b = (w * t).sum(1) + torch.randn(n, generator=g) * torch.rand(n, generator=g) * 25
    return t, w, b


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_lands_on_the_hyperplane_inside_the_box(norm) -> None:
    t, w, b = _problem()
    d = hyperplane_projection(t, w, b, norm)
    z = t + d
    assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6
    # reachable rows: the largest move inside the box crosses the hyperplane
    far = torch.where((w * t).sum(1, keepdim=True) > b[:, None], (w < 0).float(), (w > 0).float())
    reachable = ((w * far).sum(1) - b) * ((w * t).sum(1) - b) <= 0
    assert reachable.sum() > 10 and (~reachable).sum() > 0  # both cases are exercised
    assert torch.allclose((w * z).sum(1)[reachable], b[reachable], atol=1e-4)
    assert (d[w == 0] == 0).all()


def test_projection_is_minimal_in_linf() -> None:
    """Any point of the hyperplane in the box is at least as far: random feasible points are never
    closer than the projection."""
    t, w, b = _problem(n=16, d=12, seed=3)
    d = hyperplane_projection(t, w, b, "linf")
    best = d.abs().amax(dim=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        z = torch.rand(t.shape, generator=g)
        # move z along w onto the hyperplane and keep it if still in the box
        z = z + ((b - (w * z).sum(1)) / (w * w).sum(1))[:, None] * w
        ok = (z >= 0).all(1) & (z <= 1).all(1)
        assert ((z - t).abs().amax(dim=1)[ok] >= best[ok] - 1e-5).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_equals_the_reference(norm) -> None:
    ta_fab = pytest.importorskip("torchattacks.attacks.fab")
    t, w, b = _problem(n=128, d=50, seed=1)
    ref = ta_fab.projection_linf if norm == "linf" else ta_fab.projection_l2
    assert torch.allclose(hyperplane_projection(t, w, b, norm), ref(t, w, b), atol=1e-5)


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_breaks_a_trained_net_within_the_ball(net, test_set, targeted, norm, eps) -> None:
    x, y = test_set[0][:64], test_set[1][:64]
    clean = _acc(net, x, y)
    x_adv = fab(net, x, y, eps=eps, norm=norm, steps=20, targeted=targeted, n_targets=3)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert _acc(net, x_adv, y) < clean - 0.3
    # an example FAB leaves alone is returned clean; a changed one is misclassified
    changed = size > 0
    with torch.no_grad():
        assert (net(x_adv[changed]).argmax(1) != y[changed]).all()


def test_more_targets_never_weaken(net, test_set) -> None:
    x, y = test_set[0][:32], test_set[1][:32]
    one = _acc(net, fab(net, x, y, eps=0.06, steps=10, n_targets=1), y)
    three = _acc(net, fab(net, x, y, eps=0.06, steps=10, n_targets=3), y)
    assert three <= one


def test_never_beats_a_constant_model_and_bad_arguments_raise() -> None:
    model = Constant(top=2)
    x, y = toy_data(32, seed=2)
    assert _acc(model, fab(model, x, y, eps=0.3, steps=10), y) == _acc(model, x, y)
    with pytest.raises(ConfigError, match="beta"):
        fab(model, x, y, eps=0.1, beta=1.5)
    with pytest.raises(ConfigError):
        fab(model, x, y, eps=0.1, norm="l1")
