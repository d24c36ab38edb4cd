"""MAC and parameter counting: hand counts, masks, grouped convs, torch's own flop counter."""

from __future__ import annotations

import pytest
import torch
from _toys import MaskParam
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from searchprune.models import create_model
from searchprune.models.macs import count_dense_macs, count_macs, count_params, layer_costs


def _small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x10x10
        nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),  # 16x4x4
        nn.MaxPool2d(2),  # 16x2x2
        nn.Flatten(),
        nn.Linear(64, 5),
    )


def _flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, *shape))
    return counter.get_total_flops() // 2


def test_small_conv_net_hand_count() -> None:
    model = _small_net()
    costs = layer_costs(model, (3, 10, 10))
    assert list(costs) == ["0", "3", "6"]  # BN, ReLU, pooling are not counted
    assert costs["0"].dense_macs == 8 * 3 * 9 * (10 * 10)
    assert costs["0"].out_positions == 100
    assert costs["3"].dense_macs == 16 * 8 * 9 * (4 * 4)
    assert costs["6"].dense_macs == 64 * 5 and costs["6"].out_positions == 1
    assert count_dense_macs(model, (3, 10, 10)) == 21600 + 18432 + 320
    assert count_macs(model, (3, 10, 10)) == 21600 + 18432 + 320  # random init: no exact zeros


def _cnn8_hand_count() -> dict[str, int]:
    # Adver-Fine EightLayerConv on 1x28x28 (methods.md E.1): C_out * C_in * 3 * 3 * H_out * W_out
    return {
        "conv1": 32 * 1 * 9 * 28 * 28,  # 225,792
        "conv2": 32 * 32 * 9 * 14 * 14,  # stride 2: 1,806,336
        "conv3": 64 * 32 * 9 * 14 * 14,  # 3,612,672
        "conv4": 64 * 64 * 9 * 7 * 7,  # stride 2: 1,806,336
        "conv5": 128 * 64 * 9 * 7 * 7,  # 3,612,672
        "conv6": 128 * 128 * 9 * 4 * 4,  # stride 2, 7 -> 4: 2,359,296
        "fc1": 2048 * 128,  # 262,144
        "fc2": 128 * 10,  # 1,280
    }


def test_cnn8_every_layer_by_hand() -> None:
    model = create_model("cnn8", num_classes=10, in_channels=1, image_size=(28, 28))
    costs = layer_costs(model, (1, 28, 28))
    assert {name: c.dense_macs for name, c in costs.items()} == _cnn8_hand_count()
    assert count_dense_macs(model, (1, 28, 28)) == 13_686_528


def test_resnet20_by_hand() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3, image_size=(32, 32))
    stem = 16 * 3 * 9 * 32 * 32
    stage1 = 6 * (16 * 16 * 9 * 32 * 32)
    stage2 = 32 * 16 * 9 * 16 * 16 + 5 * (32 * 32 * 9 * 16 * 16)
    stage3 = 64 * 32 * 9 * 8 * 8 + 5 * (64 * 64 * 9 * 8 * 8)
    fc = 64 * 10
    expected = stem + stage1 + stage2 + stage3 + fc  # 40,551,040: the usual "41M" of He et al.
    # option-B projection shortcuts (1x1 convs), present when the model has them
    shortcuts = [m for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if shortcuts:
        expected += 32 * 16 * 16 * 16 + 64 * 32 * 8 * 8
    assert count_dense_macs(model, (3, 32, 32)) == expected
    assert count_dense_macs(model, (3, 32, 32)) == _flop_counter_macs(model, (3, 32, 32))


def test_masking_half_a_layer_halves_its_macs() -> None:
    model = _small_net()
    conv = model[3]
    mask = torch.ones_like(conv.weight)
    mask[: conv.out_channels // 2] = 0  # half the filters
    parametrize.register_parametrization(conv, "weight", MaskParam(mask))
    costs = layer_costs(model, (3, 10, 10))
    assert costs["3"].macs * 2 == costs["3"].dense_macs
    assert costs["3"].nonzero_params * 2 == costs["3"].params
    assert costs["3"].density == pytest.approx(0.5)
    assert costs["0"].macs == costs["0"].dense_macs  # other layers untouched
    assert count_dense_macs(model, (3, 10, 10)) == 21600 + 18432 + 320
    assert count_macs(model, (3, 10, 10)) == 21600 + 18432 // 2 + 320


def test_count_params_uses_the_effective_weight() -> None:
    model = _small_net()
    dense_total = sum(p.numel() for p in model.parameters())
    nonzero_before = count_params(model, nonzero=True)  # BatchNorm's bias starts at exactly 0
    assert nonzero_before == dense_total - model[1].bias.numel()
    conv = model[3]
    mask = (torch.rand_like(conv.weight) > 0.25).float()
    parametrize.register_parametrization(conv, "weight", MaskParam(mask))
    # `original` replaces `weight` and is not double counted
    assert count_params(model, nonzero=False) == dense_total
    assert count_params(model, nonzero=True) == nonzero_before - int((mask == 0).sum())


def test_count_params_counts_shared_parameters_once() -> None:
    lin = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(model, nonzero=False) == 16
    # ... but a layer run twice costs twice (out_positions are summed over calls)
    assert count_dense_macs(model, (4,)) == 2 * 16


def test_zero_weights_are_not_counted_without_parametrization() -> None:
    model = _small_net()
    before = count_params(model, nonzero=True)
    with torch.no_grad():
        model[6].weight[:, :32] = 0  # HYDRA's save-dense format: plain weights with zeros
    assert layer_costs(model, (3, 10, 10))["6"].macs == 32 * 5
    assert count_params(model, nonzero=True) == before - 32 * 5


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_grouped_and_depthwise_convs(groups: int) -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=groups))
    expected = 8 * (8 // groups) * 9 * 6 * 6
    assert count_dense_macs(model, (8, 6, 6)) == expected
    assert count_dense_macs(model, (8, 6, 6)) == _flop_counter_macs(model, (8, 6, 6))


def test_physically_removed_channels_are_simply_absent() -> None:
    full = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    thin = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))  # 2 filters removed
    assert count_dense_macs(thin, (3, 9, 9)) == 6 * 3 * 9 * 49 + 4 * 6 * 9 * 25
    assert count_dense_macs(thin, (3, 9, 9)) < count_dense_macs(full, (3, 9, 9))


def test_linear_on_sequences_counts_rows_per_sample() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.flatten(2).transpose(1, 2))  # (1, H*W, C) -> (1, H*W, 3)

    assert layer_costs(Tokens(), (6, 2, 5))["proj"].out_positions == 10
    assert count_dense_macs(Tokens(), (6, 2, 5)) == 10 * 18


def test_transposed_conv_counts_input_positions() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 2, 2, stride=2))  # 4x5x5 -> 2x10x10
    assert count_dense_macs(model, (4, 5, 5)) == 4 * 2 * 4 * 25
    assert count_dense_macs(model, (4, 5, 5)) == _flop_counter_macs(model, (4, 5, 5))


def test_agrees_with_torch_flop_counter_on_dense_models() -> None:
    assert count_dense_macs(_small_net(), (3, 10, 10)) == _flop_counter_macs(_small_net(), (3, 10, 10))
    model = create_model("cnn8", num_classes=10, in_channels=1, image_size=(28, 28))
    assert count_dense_macs(model, (1, 28, 28)) == _flop_counter_macs(model, (1, 28, 28))


def test_modes_restored_and_no_side_effects() -> None:
    model = _small_net().train()
    model[1].eval()  # a deliberately frozen BN stays frozen
    stats = model[1].running_mean.clone()
    count_macs(model, (3, 10, 10))
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(model[1].running_mean, stats)  # the dummy pass ran in eval mode
    assert all(p.grad is None for p in model.parameters())
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def test_bad_input_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="input shape"):
        count_macs(_small_net(), (3, 0, 10))
