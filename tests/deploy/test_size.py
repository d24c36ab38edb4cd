"""size_bytes (the smallest honest storage) and dense_macs (what a dense kernel executes)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from searchprune.config import PruneConfig, QuantConfig
from searchprune.deploy import dense_macs, layer_storage, size_bytes
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.models.macs import count_macs
from searchprune.prune import prune_
from searchprune.quantize import quantize_

SHAPE = (1, 28, 28)
OUT_SIZES = {"conv1": 28, "conv2": 14, "conv3": 14, "conv4": 7, "conv5": 7, "conv6": 4}  # cnn8 at 28x28


def _cnn8() -> nn.Module:
    return create_model("cnn8", num_classes=10, in_channels=1, image_size=SHAPE[1:]).eval()


def _hand_macs(model: nn.Module) -> int:
    """cnn8's multiply-adds from its layer attributes: out x in x k x k x H_out x W_out, plus the FCs."""
    total = 0
    for name, hw in OUT_SIZES.items():
        conv = getattr(model, name)
        total += conv.out_channels * conv.in_channels * 9 * hw * hw
    return total + model.fc1.in_features * model.fc1.out_features + model.fc2.in_features * model.fc2.out_features


def _weights(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _other_tensors(model: nn.Module) -> int:
    """Entries of biases and buffers (cnn8 has no BatchNorm; Normalize holds none without mean/std)."""
    weights = {id(m.weight) for m in _weights(model).values()}
    return sum(t.numel() for t in list(model.parameters()) + list(model.buffers()) if id(t) not in weights)


def test_unstructured_zeros_are_still_multiplied() -> None:
    model = _cnn8()
    dense = _hand_macs(model)
    assert dense_macs(model, SHAPE) == dense
    prune_(model, PruneConfig(method="magnitude", sparsity=0.9), input_shape=SHAPE)
    assert dense_macs(model, SHAPE) == dense
    assert count_macs(model, SHAPE) < 0.5 * dense  # the papers' effective MACs do drop (28% here)


def test_channel_pruned_dense_macs_count_the_new_shapes() -> None:
    model = _cnn8()
    prune_(model, PruneConfig(method="magnitude", granularity="channel", allocation="uniform", sparsity=0.5),
           input_shape=SHAPE)
    assert model.conv1.out_channels == 16 and model.fc1.in_features == 64 * 16
    assert dense_macs(model, SHAPE) == _hand_macs(model) < 0.3 * _hand_macs(_cnn8())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantized_dense_model_is_stored_at_its_bits(bits: int) -> None:
    model = _cnn8()
    float_size = size_bytes(model)
    others = _other_tensors(model)  # biases: stored at 32 bits whatever the weights' width
    quantize_(model, QuantConfig(mode="ptq", weight_bits=bits, act_bits=None))
    layers = _weights(model)
    weight_bits = sum(m.weight.numel() * bits + m.weight.shape[0] * 32 for m in layers.values())  # values + scales
    expected = math.ceil((weight_bits + 32 * others) / 8)
    assert size_bytes(model, format="dense") == expected
    assert dense_macs(model, SHAPE) == _hand_macs(model)  # quantization changes no MAC
    # "auto" may store a layer that rounding left mostly zero as a bitmap, never larger than dense
    auto = layer_storage(model)
    for name, m in layers.items():
        n, nnz, rows = m.weight.numel(), int(torch.count_nonzero(m.weight)), m.weight.shape[0]
        best = min(n * bits, n + nnz * bits, nnz * (bits + 32) + (rows + 1) * 32,
                   nnz * (bits + 16) + (rows + 1) * 32)
        assert auto[name].bits == best + rows * 32
    assert size_bytes(model) <= expected < float_size


def test_sparse_layers_pay_their_indices() -> None:
    model = _cnn8()
    assert size_bytes(model) == size_bytes(model, format="dense")  # no zeros: a sparse format only adds
    prune_(model, PruneConfig(method="magnitude", sparsity=0.9), input_shape=SHAPE)
    fc1 = layer_storage(model)["fc1"]
    nnz, rows = int(torch.count_nonzero(model.fc1.weight)), 128
    assert fc1.format == "csr_int16" and fc1.bits == nnz * (32 + 16) + (rows + 1) * 32
    as_csr32 = layer_storage(model, format="csr_int32")["fc1"]
    assert as_csr32.bits == nnz * 64 + (rows + 1) * 32
    assert layer_storage(model, format="bitmap")["fc1"].bits == 2048 * 128 + nnz * 32
    assert size_bytes(model) < size_bytes(model, format="dense")


def test_csr_int16_falls_back_where_columns_do_not_fit() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(40000, 2, bias=False))
    with torch.no_grad():
        model[1].weight[:, ::10] = 0
    assert layer_storage(model, format="csr_int16")["1"].format == "csr_int32"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="coo"):
        size_bytes(_cnn8(), format="coo")
