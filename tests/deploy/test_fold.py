"""BatchNorm folding: the same function without BatchNorm, on registry models, pruned models and corner cases."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import PruneConfig
from searchprune.deploy import bn_pairs, fold_bn_
from searchprune.models import create_model
from searchprune.prune import prune_

ARCHS = {  # name -> (input shape, create_model kwargs, batch norms)
    "cnn8": ((1, 28, 28), {"in_channels": 1, "image_size": (28, 28)}, 0),
    "resnet20": ((3, 32, 32), {}, 21),
    "vgg16_bn": ((3, 32, 32), {}, 13),
    "mobilenetv2_cifar": ((3, 32, 32), {}, 52),
}


def _randomize_bn_(model: nn.Module) -> nn.Module:
    """Non-trivial eval statistics, so a wrong fold shows (fresh BNs are the identity map)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_folding_keeps_the_output_of_registry_models(arch: str) -> None:
    shape, kw, n_bn = ARCHS[arch]
    model = _randomize_bn_(create_model(arch, num_classes=10, **kw))
    x = torch.rand(2, *shape)
    with torch.no_grad():
        ref = model(x)
        folded = fold_bn_(copy.deepcopy(model))
        out = folded(x)
    assert len(folded.folded_bn) == n_bn
    assert _n_bn(folded) == 0
    assert _n_bn(model) == n_bn  # the copy was folded, not the original
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_folding_a_pruned_resnet_keeps_output_and_zeros(granularity: str) -> None:
    model = _randomize_bn_(create_model("resnet20", num_classes=10))
    prune_(model, PruneConfig(method="magnitude", granularity=granularity, sparsity=0.5), input_shape=(3, 32, 32))
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    zeros_before = {n: int((m.weight == 0).sum()) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    with torch.no_grad():
        ref = model(x)
        folded = fold_bn_(copy.deepcopy(model))
        out = folded(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert _n_bn(folded) == 0
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    zeros_after = {n: int((m.weight == 0).sum()) for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)}
    assert zeros_after == zeros_before  # a per-channel scale keeps every pruned zero (gamma != 0 here)
    if granularity == "weight":
        assert sum(zeros_after.values()) > 0


def test_linear_then_batchnorm1d_folds() -> None:
    model = _randomize_bn_(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(),
                                         nn.Linear(6, 3)))
    x = torch.rand(5, 3, 2, 2)
    with torch.no_grad():
        ref = model(x)
        folded = fold_bn_(copy.deepcopy(model))
        out = folded(x)
    assert folded.folded_bn == [("1", "2")]
    assert isinstance(folded[2], nn.Identity) and folded[1].bias is not None
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


class _Shared(nn.Module):
    """A conv whose output is read twice, and a BatchNorm before (not after) a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pre_bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.conv2(self.pre_bn(self.bn(y) + y))


def test_batchnorms_that_do_not_read_a_lone_conv_output_stay() -> None:
    model = _randomize_bn_(_Shared())
    x = torch.rand(2, 3, 8, 8)
    assert bn_pairs(model) == []
    with torch.no_grad():
        ref = model(x)
        folded = fold_bn_(copy.deepcopy(model))
        out = folded(x)
    assert _n_bn(folded) == 2
    torch.testing.assert_close(out, ref)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; its Sequential pairs still fold."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.bn_free = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.bn_free(y) if float(y.sum()) > 0 else y


def test_untraceable_models_fold_sequential_pairs_only() -> None:
    model = _randomize_bn_(_Untraceable())
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        folded = fold_bn_(copy.deepcopy(model))
        out = folded(x)
    assert folded.folded_bn == [("body.0", "body.1")]
    assert isinstance(folded.bn_free, nn.BatchNorm2d)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
