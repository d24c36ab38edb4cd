"""Physical channel removal on the project's architectures: a valid smaller network, consistent
shortcuts and depthwise groups, fewer MACs, the right channels kept, and checkpoints that rebuild."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from searchprune import models
from searchprune.config import PruneConfig
from searchprune.models import macs
from searchprune.prune import allocate, load_pruned_state_dict_, prunable_layers, prune_, resize_to_state_dict_
from searchprune.prune.structured import channel_groups, params_after

ARCHS = {  # name -> (input shape, create_model kwargs)
    "cnn8": ((1, 28, 28), {"in_channels": 1, "image_size": (28, 28)}),
    "resnet20": ((3, 32, 32), {}),
    "vgg16_bn": ((3, 32, 32), {}),
    "mobilenetv2_cifar": ((3, 32, 32), {}),
}


def _create(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    shape, kw = ARCHS[arch]
    return models.create_model(arch, num_classes=10, **kw), shape


def _channels(sparsity: float, allocation: str = "uniform", method: str = "magnitude", **kw) -> PruneConfig:
    return PruneConfig(method=method, granularity="channel", allocation=allocation, sparsity=sparsity, **kw)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_channel_pruning_gives_a_valid_smaller_network(arch: str) -> None:
    torch.manual_seed(0)
    model, shape = _create(arch)
    dense = copy.deepcopy(model).eval()
    x = torch.rand(2, *shape)
    params = sum(p.numel() for p in model.parameters())
    report = prune_(model, _channels(0.5), input_shape=shape)
    model.eval()
    out = model(x)
    assert out.shape == dense(x).shape and torch.isfinite(out).all()
    assert report.structural and report.params_after < report.params_before
    assert sum(p.numel() for p in model.parameters()) < params
    assert macs.count_macs(model, shape) < 0.6 * macs.count_macs(dense, shape)
    assert not any(isinstance(m, nn.Module) and hasattr(m, "parametrizations") for m in model.modules())
    layers = prunable_layers(model)
    for name, kept in report.kept_channels.items():
        assert layers[name].weight.shape[0] == len(kept)
    assert report.sparsity == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_structured_checkpoint_rebuilds_from_the_dense_architecture(arch: str) -> None:
    torch.manual_seed(0)
    model, shape = _create(arch)
    prune_(model, _channels(0.4, allocation="global"), input_shape=shape)
    state = copy.deepcopy(model.state_dict())
    fresh, _ = _create(arch)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)  # the plain dense model does not fit
    load_pruned_state_dict_(fresh, state)
    model.eval()
    fresh.eval()
    x = torch.rand(2, *shape)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert [tuple(p.shape) for p in fresh.parameters()] == [tuple(p.shape) for p in model.parameters()]
    for a, b in zip(fresh.modules(), model.modules()):
        if isinstance(a, nn.Conv2d):
            assert (a.in_channels, a.out_channels, a.groups) == (b.in_channels, b.out_channels, b.groups)


def test_resnet20_shortcut_groups_and_macs_fall_with_sparsity() -> None:
    torch.manual_seed(0)
    base, shape = _create("resnet20")
    dense = macs.count_macs(base, shape)
    counts = [dense]
    for s in (0.3, 0.5, 0.7):
        model = copy.deepcopy(base)
        report = prune_(model, _channels(s), input_shape=shape)
        counts.append(macs.count_macs(model, shape))
        # residual sums couple the stem with every stage-1 conv2, and stage 2's projection
        # shortcut with its conv2s: each coupled set keeps the same channels
        kept = report.kept_channels
        for coupled in (["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"],
                        ["layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]):
            assert all(kept[n] == kept[coupled[0]] for n in coupled), coupled
        assert len(kept["layer1.0.conv1"]) == round(16 * (1 - s))
        model(torch.rand(2, *shape))
    assert all(a > b for a, b in zip(counts, counts[1:])), counts


def test_include_first_false_keeps_the_stem_and_its_coupled_channels() -> None:
    torch.manual_seed(0)
    model, shape = _create("resnet20")
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    out_ch = dict(model.named_modules())[first].out_channels
    report = prune_(model, _channels(0.5, include_first=False), input_shape=shape)
    assert first not in report.kept_channels
    assert dict(model.named_modules())[first].out_channels == out_ch
    assert report.sparsity == pytest.approx(0.5, abs=0.02)  # over the channels that can go


def test_classifier_outputs_are_never_removed() -> None:
    torch.manual_seed(0)
    model, shape = _create("vgg16_bn")
    prune_(model, _channels(0.8, allocation="global", include_classifier=True), input_shape=shape)
    cls = [m for m in model.modules() if getattr(m, "is_classifier", False)]
    assert len(cls) == 1 and cls[0].out_features == 10
    unmarked = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    prune_(unmarked, _channels(0.5), input_shape=(3, 6, 6))  # no is_classifier: the last layer is the head
    assert unmarked(torch.rand(2, 3, 6, 6)).shape == (2, 5) and unmarked[0].out_channels == 4


class Plain(nn.Module):
    """conv 3->8 (BN), conv 8->12 (BN), pool 2x2, fc 48->16, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(48, 16)
        self.classifier = nn.Linear(16, 10)
        self.classifier.is_classifier = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (B, 12, 2, 2)
        return self.classifier(F.relu(self.fc(x.flatten(1))))


def test_kept_channels_are_the_ones_that_survive() -> None:
    """Removing channels physically = silencing the same channels' consumers in the dense model."""
    torch.manual_seed(0)
    dense = Plain().eval()
    for bn in (dense.bn1, dense.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    pruned = copy.deepcopy(dense)
    report = prune_(pruned, _channels(0.5), input_shape=(3, 8, 8))
    kept = report.kept_channels
    assert len(kept["conv1"]) == 4 and len(kept["conv2"]) == 6 and len(kept["fc"]) == 8
    silenced = copy.deepcopy(dense)
    with torch.no_grad():
        drop1 = [c for c in range(8) if c not in kept["conv1"]]
        drop2 = [c for c in range(12) if c not in kept["conv2"]]
        dropf = [c for c in range(16) if c not in kept["fc"]]
        silenced.conv2.weight[:, drop1] = 0
        for c in drop2:  # flatten maps channel c to features 4c .. 4c+3
            silenced.fc.weight[:, 4 * c:4 * c + 4] = 0
        silenced.classifier.weight[:, dropf] = 0
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(pruned.eval()(x), silenced(x), rtol=1e-5, atol=1e-6)
    # and the kept channels are the largest-magnitude ones of each layer
    for name in ("conv1", "conv2", "fc"):
        w = getattr(dense, name).weight.detach().abs().flatten(1).mean(1)
        assert kept[name] == sorted(torch.topk(w, len(kept[name])).indices.tolist())


def test_resize_handles_depthwise_groups() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    model[2].is_classifier = True
    torch.manual_seed(0)
    pruned = copy.deepcopy(model)
    prune_(pruned, _channels(0.5), input_shape=(3, 6, 6))
    assert pruned[1].groups == pruned[1].in_channels == pruned[1].out_channels == 4
    fresh = resize_to_state_dict_(copy.deepcopy(model), pruned.state_dict())
    assert fresh[1].groups == 4 and fresh[1].in_channels == 4 and fresh[0].out_channels == 4
    fresh.load_state_dict(pruned.state_dict())
    x = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(fresh(x), pruned(x))


def test_model_mode_and_bn_statistics_untouched_by_tracing() -> None:
    torch.manual_seed(0)
    model, shape = _create("resnet20")
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.num_batches_tracked.clone()
    prune_(model, _channels(0.5), input_shape=shape)
    assert model.training
    assert torch.equal(bn.num_batches_tracked, before)


def test_round_to_keeps_multiples_of_the_block() -> None:
    torch.manual_seed(0)
    model, shape = _create("resnet20")
    report = prune_(model, _channels(0.3, options={"round_to": 8}), input_shape=shape)
    for name, kept in report.kept_channels.items():
        assert len(kept) % 8 == 0, (name, len(kept))
    model(torch.rand(1, *shape))
    with pytest.raises(Exception, match="round_to"):
        prune_(_create("resnet20")[0], _channels(0.3, options={"round_to": 0}), input_shape=shape)
    with pytest.raises(Exception, match="round_to"):  # not an option of weight pruning
        prune_(_create("resnet20")[0], PruneConfig(method="magnitude", options={"round_to": 8}),
               input_shape=shape)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_parameter_count_without_surgery_matches_surgery(arch: str) -> None:
    torch.manual_seed(0)
    model, shape = _create(arch)
    layers = prunable_layers(model)
    _, groups = channel_groups(model, layers, torch.rand(1, *shape))
    gen = torch.Generator().manual_seed(0)
    scores = {str(i): torch.rand(g.size, generator=gen) for i, g in enumerate(groups)}
    keep = allocate(scores, allocation="uniform", sparsity=0.4, min_keep=1)
    predicted = params_after(model, groups, keep)
    for i, g in enumerate(groups):
        removed = torch.nonzero(~keep[str(i)]).flatten().tolist()
        if removed:
            g.group.prune(idxs=removed)
    assert predicted == sum(p.numel() for p in model.parameters())


def test_channel_compression_hits_the_whole_model_ratio() -> None:
    torch.manual_seed(0)
    model, shape = _create("resnet20")
    total = sum(p.numel() for p in model.parameters())
    report = prune_(model, PruneConfig(method="magnitude", granularity="channel", allocation="global",
                                       sparsity=None, compression=3.0), input_shape=shape)
    after = sum(p.numel() for p in model.parameters())
    assert total / after == pytest.approx(3.0, rel=0.01)
    assert report.extra["compression"] == pytest.approx(total / after)
    assert report.target_sparsity is not None and 0 < report.target_sparsity < 1
    assert report.sparsity == pytest.approx(report.target_sparsity, abs=0.01)
