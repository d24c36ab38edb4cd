"""The deployable form: same function (float), int8 for 8-bit weights, channels_last decided by timing once."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import PruneConfig, QuantConfig
from searchprune.deploy import LatencyCache, deployable
from searchprune.deploy.form import inplace_activations_
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.prune import prune_
from searchprune.quantize import quantize_


def _resnet() -> nn.Module:
    model = create_model("resnet20", num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_float_form_computes_the_same_function(channels_last: bool) -> None:
    model = _resnet()
    prune_(model, PruneConfig(method="magnitude", sparsity=0.5), input_shape=(3, 32, 32))  # masks
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        form = deployable(model, example_input=x, channels_last=channels_last)
        out = form(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    info = form.deploy_info
    assert not info.int8 and info.weight_bits == 32 and info.channels_last is channels_last
    assert len(info.folded_bn) == 21 and info.channels_last_ms is None
    assert not any(parametrize.is_parametrized(m) for m in form.modules())
    assert form.conv1.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    # the original keeps its masks and batch norms
    assert parametrize.is_parametrized(model.conv1) and isinstance(model.bn1, nn.BatchNorm2d)


def test_auto_layout_is_timed_once_per_shape(timed: list[int]) -> None:
    cache = LatencyCache()
    model = _resnet()
    x = torch.rand(8, 3, 32, 32)
    first = deployable(model, example_input=x, cache=cache, repeats=2)
    assert len(timed) == 2  # NCHW and NHWC
    nchw_ms, nhwc_ms = first.deploy_info.channels_last_ms
    assert first.deploy_info.channels_last is (nhwc_ms < nchw_ms)
    masked = copy.deepcopy(model)
    prune_(masked, PruneConfig(method="magnitude", sparsity=0.9), input_shape=(3, 32, 32))
    second = deployable(masked, example_input=x, cache=cache, repeats=2)  # same shapes: same decision
    assert len(timed) == 2 and cache.hits == 1
    assert second.deploy_info.channels_last is first.deploy_info.channels_last
    pruned = copy.deepcopy(model)
    prune_(pruned, PruneConfig(method="magnitude", granularity="channel", sparsity=0.5), input_shape=(3, 32, 32))
    deployable(pruned, example_input=x, cache=cache, repeats=2)  # new shapes: timed
    assert len(timed) == 4


def _calib() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(16, 1, 28, 28, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(2)]


def test_eight_bit_weights_run_int8_kernels() -> None:
    model = create_model("cnn8", num_classes=10, in_channels=1, image_size=(28, 28)).eval()
    quantize_(model, QuantConfig(mode="ptq", weight_bits=8, act_bits=8, calib_batches=2), calib_loader=_calib())
    x = torch.rand(32, 1, 28, 28)
    form = deployable(model, example_input=x, channels_last=False, calib_loader=_calib(), calib_batches=2)
    assert form.deploy_info.int8 and form.deploy_info.weight_bits == 8
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in form.modules())
    with torch.no_grad():
        ref, out = model(x), form(x)
    assert out.shape == ref.shape
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_low_bit_weights_run_as_float_with_the_rounded_values() -> None:
    model = create_model("cnn8", num_classes=10, in_channels=1, image_size=(28, 28)).eval()
    quantize_(model, QuantConfig(mode="ptq", weight_bits=4, act_bits=None))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        form = deployable(model, example_input=x, channels_last=False)
        out = form(x)
    assert form.deploy_info.weight_bits == 4 and not form.deploy_info.int8
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # at most 2**4 - 1 distinct values per output channel: the 4-bit grid survived folding
    assert max(len(torch.unique(row)) for row in form.conv2.weight.flatten(1)) <= 15


def test_bad_settings_are_refused() -> None:
    model = create_model("cnn8", num_classes=10, in_channels=1, image_size=(28, 28))
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ConfigError, match="channels_last"):
        deployable(model, example_input=x, channels_last="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="quant_bits"):
        deployable(model, example_input=x, quant_bits=1)


class _ReadsTwice(nn.Module):
    """ReLUs whose input is read again (the sum, the caller's tensor) must not run in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu_in = nn.ReLU()
        self.relu_shared = nn.ReLU()
        self.relu_ok = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu_in(x)  # x belongs to the caller
        z = self.conv(y)
        w = self.relu_shared(z) + z
        return self.relu_ok(self.bn(w))


def test_only_activations_of_unread_fresh_tensors_run_in_place() -> None:
    model = _ReadsTwice().eval()
    x = torch.randn(2, 3, 8, 8)
    keep = x.clone()
    with torch.no_grad():
        ref = model(x)
        form = deployable(model, example_input=x, channels_last=False)
        out = form(x)
    assert [n for n, m in form.named_modules() if getattr(m, "inplace", False)] == ["relu_ok"]
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x, keep)  # the caller's input is untouched
    resnet = _resnet()
    names = inplace_activations_(copy.deepcopy(resnet))
    assert "relu" in names and "layer1.0.relu2" in names  # after the stem's BN, after a residual sum
