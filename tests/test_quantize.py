"""Tests of searchprune.quantize: fake quantizers, calibration, QAT, STE vs hard rounding, costs,
state_dict round trips and the int8 export. Tiny models on tiny learnable data: seconds each."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _toys import MaskParam
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import QuantConfig
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.quantize import (
    ActFakeQuant,
    WeightFakeQuant,
    calibrate_,
    count_bitops,
    dequantize_,
    hard_rounding,
    int8_backend,
    is_quantized,
    layer_bitwidths,
    quantize_,
    set_ste_,
    to_int8,
)
from searchprune.quantize._fake import act_qrange, weight_qrange

# ---------------------------------------------------------------------------------------------
# Fixtures: a learnable 4-class problem (a fixed random template per class + noise) and nets
# ---------------------------------------------------------------------------------------------

SIZE = 16
CLASSES = 4


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    templates = torch.rand(CLASSES, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = (0.5 * templates[y] + 0.25 + 0.25 * torch.randn(n, 1, SIZE, SIZE, generator=g)).clamp(0, 1)
    return x, y  # x (n, 1, 16, 16) in [0, 1]


def _batches(x: torch.Tensor, y: torch.Tensor, bs: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


class Normalize(nn.Module):
    """Stands in for searchprune.models.Normalize (recognised by name by the int8 export)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 1, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 1, 1, 1), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TinyNet(nn.Module):
    """conv-bn-relu-pool x2, linear: the ops of the BN CNNs (and what FX fuses)."""

    def __init__(self, c1: int = 8, c2: int = 16) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.conv1, self.bn1 = nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2 * (SIZE // 4) ** 2, CLASSES)
        self.fc.is_classifier = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(torch.flatten(x, 1))


def _mask_(model: nn.Module, sparsity: float = 0.5, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            mask = (torch.rand(m.weight.shape, generator=g) >= sparsity).float()
            parametrize.register_parametrization(m, "weight", MaskParam(mask))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for xb, yb in _batches(x, y, 64):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    xtr, ytr = _data(1024, seed=1)
    xte, yte = _data(256, seed=2)
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.fixture(scope="module")
def trained(data: dict[str, torch.Tensor]) -> nn.Module:
    torch.manual_seed(0)
    model = _train(TinyNet(), data["xtr"], data["ytr"])
    acc = (model(data["xte"]).argmax(1) == data["yte"]).float().mean().item()
    assert acc > 0.9, f"the fixture model should learn the task, got accuracy {acc:.3f}"
    return model


def _calib(data: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return _batches(data["xtr"][:512], data["ytr"][:512])


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
         steps: int) -> torch.Tensor:
    """Plain L-inf PGD from the clean point (no random start): the test is about the quantizer's
    gradient, so it should not depend on another module's attack options."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = (x_adv.detach() + alpha * grad.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    return x_adv


# ---------------------------------------------------------------------------------------------
# The weight quantizer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", list(range(2, 17)))
def test_weight_roundtrip_error_is_at_most_half_a_step(bits: int, per_channel: bool) -> None:
    w = torch.randn(6, 3, 3, 3) * torch.logspace(-2, 1, 6).view(6, 1, 1, 1)  # channels of very different size
    q = WeightFakeQuant(bits, per_channel=per_channel)
    s = q.scale(w)
    assert s.shape == ((6, 1, 1, 1) if per_channel else ())
    wq = q(w)
    assert torch.all((w - wq).abs() <= s / 2 * (1 + 1e-5) + 1e-12)
    k = wq / s  # integers on the symmetric grid
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert k.abs().max() <= weight_qrange(bits) + 1e-3
    if per_channel:  # each channel's largest weight sits on the grid's end
        kmax = k.abs().reshape(6, -1).amax(1)
        assert torch.allclose(kmax, torch.full_like(kmax, float(weight_qrange(bits))), atol=1e-3)


def test_two_bit_weights_are_ternary() -> None:
    wq = WeightFakeQuant(2)(torch.randn(4, 10))
    for row in wq:
        assert len(torch.unique(row)) <= 3


def test_zero_channel_and_zero_weights_stay_zero() -> None:
    w = torch.randn(3, 8)
    w[1] = 0.0
    w[0, ::2] = 0.0
    wq = WeightFakeQuant(4)(w)
    assert torch.all(wq[w == 0] == 0)
    assert torch.isfinite(wq).all()


def test_quantizer_registered_after_mask_keeps_zeros(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    _mask_(model, 0.6)
    quantize_(model, QuantConfig(mode="ptq", weight_bits=3, act_bits=None))
    for m in (model.conv1, model.conv2, model.fc):
        plist = list(m.parametrizations.weight)
        assert isinstance(plist[0], MaskParam) and isinstance(plist[-1], WeightFakeQuant)
        mask = plist[0].mask
        assert torch.all(m.weight[mask == 0] == 0)
        # the scale comes from the *masked* weight: its largest kept entry is on the grid's end
        masked = m.parametrizations.weight.original * mask
        s = plist[-1].scale(masked)
        assert torch.allclose(m.weight.abs().reshape(len(s), -1).amax(1), (s * 3).flatten(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Activation quantizers and calibration
# ---------------------------------------------------------------------------------------------


def test_quantize_keeps_layer_names_and_records_bits(trained: nn.Module, data: dict) -> None:
    model = copy.deepcopy(trained)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    cfg = QuantConfig(mode="ptq", weight_bits=6, act_bits=5, layer_bits={"fc": 4})
    assert quantize_(model, cfg, calib_loader=_calib(data)) is model
    modules = dict(model.named_modules())
    for name in names:
        assert isinstance(modules[name], nn.Conv2d | nn.Linear)
        assert isinstance(modules[name].act_quant, ActFakeQuant)
    assert layer_bitwidths(model) == {"conv1": (6, 5), "conv2": (6, 5), "fc": (4, 5)}
    assert model.fc.weight_bits == 4 and model.conv1.act_bits == 5
    assert is_quantized(model)


def test_activation_quantizer_grid_and_zero() -> None:
    q = ActFakeQuant(4)
    q.set_range_(-0.3, 1.2)
    x = torch.linspace(-1, 2, 1001)
    y = q(x)
    s, z = q.qparams()
    k = y / s + z
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= -1e-4 and k.max() <= act_qrange(4) + 1e-4
    assert q(torch.zeros(3)).eq(0).all()  # zero is exactly representable
    inside = (x >= -0.3) & (x <= 1.2)
    assert torch.all((x - y)[inside].abs() <= s / 2 + 1e-6)


def test_uncalibrated_quantizer_refuses_to_run(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    quantize_(model, QuantConfig(mode="ptq", act_bits=8))
    with pytest.raises(RuntimeError, match="not calibrated"):
        model(torch.rand(2, 1, SIZE, SIZE))


def test_calibration_is_deterministic(trained: nn.Module, data: dict) -> None:
    cfg = QuantConfig(mode="ptq", act_bits=8, calibration="percentile", percentile=99.0, calib_batches=3)
    a = quantize_(copy.deepcopy(trained), cfg, calib_loader=_calib(data))
    b = quantize_(copy.deepcopy(trained), cfg, calib_loader=_calib(data))
    ranges_a = {k: v for k, v in a.state_dict().items() if ".act_quant." in k}
    ranges_b = {k: v for k, v in b.state_dict().items() if ".act_quant." in k}
    assert ranges_a.keys() == ranges_b.keys() and len(ranges_a) == 9
    assert all(torch.equal(ranges_a[k], ranges_b[k]) for k in ranges_a)


def test_percentile_range_inside_minmax_range(trained: nn.Module, data: dict) -> None:
    mm = quantize_(copy.deepcopy(trained), QuantConfig(mode="ptq", act_bits=8), calib_loader=_calib(data))
    pc = quantize_(copy.deepcopy(trained), QuantConfig(mode="ptq", act_bits=8, calibration="percentile",
                                                        percentile=99.0), calib_loader=_calib(data))
    narrower = 0
    for name in ("conv1", "conv2", "fc"):
        a, b = getattr(mm, name).act_quant, getattr(pc, name).act_quant
        assert b.lo >= a.lo and b.hi <= a.hi
        narrower += int(b.hi < a.hi)
    assert narrower >= 1  # 99th percentile really clips something


def test_calibration_restores_train_mode_and_bn_stats(trained: nn.Module, data: dict) -> None:
    model = copy.deepcopy(trained).train()
    stats = model.bn1.running_mean.clone()
    quantize_(model, QuantConfig(mode="qat", act_bits=8), calib_loader=_calib(data))
    assert model.training and model.bn1.training
    assert torch.equal(model.bn1.running_mean, stats)


# ---------------------------------------------------------------------------------------------
# QAT and the STE vs hard rounding switch
# ---------------------------------------------------------------------------------------------


def test_qat_gradients_reach_the_weights(trained: nn.Module, data: dict) -> None:
    model = copy.deepcopy(trained)
    _mask_(model, 0.5)
    quantize_(model, QuantConfig(mode="qat", weight_bits=4, act_bits=4), calib_loader=_calib(data))
    x, y = data["xtr"][:64], data["ytr"][:64]

    def weight_grads() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        return [m.parametrizations.weight.original.grad for m in (model.conv1, model.conv2, model.fc)]

    for g, m in zip(weight_grads(), (model.conv1, model.conv2, model.fc)):
        mask = m.parametrizations.weight[0].mask
        assert g is not None and g[mask == 1].abs().sum() > 0  # the STE carries the gradient
        assert torch.all(g[mask == 0] == 0)  # pruned weights get none
    with hard_rounding(model):  # the true derivative of rounding is zero
        assert all(g is None or torch.all(g == 0) for g in weight_grads())

    # a few SGD steps through the quantizers lower the training loss
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < before


def test_attack_through_ste_is_stronger_than_through_hard_rounding(trained: nn.Module, data: dict) -> None:
    model = copy.deepcopy(trained)
    quantize_(model, QuantConfig(mode="ptq", weight_bits=4, act_bits=4), calib_loader=_calib(data))
    x, y = data["xte"], data["yte"]
    clean = _acc(model, x, y)
    assert clean > 0.85

    with hard_rounding(model):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
        assert (grad != 0).float().mean() < 0.05  # gradient masking: mostly (here: all) zero
        x_hard = _pgd(model, x, y, eps=0.1, alpha=0.02, steps=10)
    assert all(q.ste for q in model.modules() if isinstance(q, ActFakeQuant | WeightFakeQuant))

    x_ste = _pgd(model, x, y, eps=0.1, alpha=0.02, steps=10)  # BPDA through the STE
    acc_hard, acc_ste = _acc(model, x_hard, y), _acc(model, x_ste, y)
    assert acc_ste < acc_hard - 0.3, (acc_ste, acc_hard)
    assert acc_hard > clean - 0.05  # the masked gradient barely moves the inputs

    # forward values do not depend on the switch
    set_ste_(model, False)
    with torch.no_grad():
        hard_out = model(x)
    set_ste_(model, True)
    with torch.no_grad():
        assert torch.equal(hard_out, model(x))


# ---------------------------------------------------------------------------------------------
# Round trips: fresh model + quantize_ (no calibration) + load_state_dict == saved model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain", "masked", "smaller"])
def test_state_dict_round_trip_is_exact(variant: str, data: dict) -> None:
    def build() -> nn.Module:
        torch.manual_seed(123)  # a *different* init than the saved model's: loading must fix it
        net = TinyNet(4, 6) if variant == "smaller" else TinyNet()
        if variant == "masked":
            _mask_(net, 0.7, seed=5)  # the rebuilt model carries the same kind of mask
        return net

    torch.manual_seed(0)
    saved = TinyNet(4, 6) if variant == "smaller" else TinyNet()
    if variant == "masked":
        _mask_(saved, 0.7, seed=5)
    saved = _train(saved, data["xtr"][:256], data["ytr"][:256], epochs=1)
    cfg = QuantConfig(mode="ptq", weight_bits=5, act_bits=6, layer_bits={"conv2": 3})
    quantize_(saved, cfg, calib_loader=_calib(data))
    state = copy.deepcopy(saved.state_dict())

    fresh = quantize_(build(), cfg)  # no calibration
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(data["xte"]), saved(data["xte"]))


def test_dequantize_restores_float_model_and_keeps_masks(trained: nn.Module, data: dict) -> None:
    model = copy.deepcopy(trained)
    _mask_(model, 0.5)
    with torch.no_grad():
        ref = model(data["xte"])
    quantize_(model, QuantConfig(mode="ptq", weight_bits=3, act_bits=3), calib_loader=_calib(data))
    with torch.no_grad():
        assert not torch.equal(model(data["xte"]), ref)
    twin = copy.deepcopy(model)
    dequantize_(model)
    assert not is_quantized(model) and not hasattr(model.conv1, "act_quant")
    assert [type(p) for p in model.conv1.parametrizations.weight] == [MaskParam]
    with torch.no_grad():
        assert torch.equal(model(data["xte"]), ref)
        twin(data["xte"])  # removing from one deep copy must not break the other (shared class)


def test_quantize_refuses_a_quantized_model_and_none_is_a_noop(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    assert quantize_(model, QuantConfig(mode="none")) is model and not is_quantized(model)
    quantize_(model, QuantConfig(mode="ptq", act_bits=None))
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_(model, QuantConfig(mode="ptq", act_bits=None))


# ---------------------------------------------------------------------------------------------
# Mixed precision and costs
# ---------------------------------------------------------------------------------------------


def test_layer_bits_gives_mixed_precision(trained: nn.Module) -> None:
    model = quantize_(copy.deepcopy(trained), QuantConfig(mode="ptq", weight_bits=8, act_bits=None,
                                                          layer_bits={"conv2": 2}))
    for row in model.conv2.weight.reshape(16, -1):
        assert len(torch.unique(row)) <= 3
    assert max(len(torch.unique(r)) for r in model.conv1.weight.reshape(8, -1)) > 3


def test_unknown_layer_bits_name_lists_the_valid_names(trained: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"quant\.layer_bits\.conv9.*conv1, conv2, fc"):
        quantize_(copy.deepcopy(trained), QuantConfig(mode="ptq", layer_bits={"conv9": 4}))


class Pair(nn.Module):
    """conv(1->2, 3x3, no padding) on 1x4x4 -> 2x2x2 -> linear(8->3).

    Weights are +-1, so no weight rounds to zero even at 2 bits: counts stay easy to do by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for m in (self.conv, self.fc):
                m.weight.copy_(torch.randint(0, 2, m.weight.shape) * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


def test_bitops_by_hand() -> None:
    net = Pair()
    conv_macs, fc_macs = 2 * 1 * 9 * (2 * 2), 8 * 3  # weights x output positions
    assert count_bitops(net, (1, 4, 4)) == (conv_macs + fc_macs) * 32 * 32
    with torch.no_grad():
        net.conv.weight[0, 0, 0] = 0.0  # 3 zeros in channel 0: 3 x 4 fewer MACs
    conv_macs -= 3 * 4
    quantize_(net, QuantConfig(mode="ptq", weight_bits=4, act_bits=8, layer_bits={"fc": 2}))  # uncalibrated
    assert count_bitops(net, (1, 4, 4)) == conv_macs * 4 * 8 + fc_macs * 2 * 8
    net2 = quantize_(Pair(), QuantConfig(mode="ptq", weight_bits=6, act_bits=None))
    assert count_bitops(net2, (1, 4, 4)) == (2 * 9 * 4 + 24) * 6 * 32


# ---------------------------------------------------------------------------------------------
# The real int8 path
# ---------------------------------------------------------------------------------------------


def test_int8_predictions_match_fake_quant(trained: nn.Module, data: dict) -> None:
    calib = _calib(data)
    cfg = QuantConfig(mode="ptq", weight_bits=8, act_bits=8, calib_batches=4)
    fq = quantize_(copy.deepcopy(trained), cfg, calib_loader=calib)
    int8 = to_int8(fq, calib, num_batches=cfg.calib_batches)
    assert any(type(m).__module__.startswith("torch.ao.nn.") and "quantized" in type(m).__module__
               for m in int8.modules())  # real int8 modules
    assert is_quantized(fq)  # the source model is untouched
    with torch.no_grad():
        agree = (int8(data["xte"]).argmax(1) == fq(data["xte"]).argmax(1)).float().mean().item()
    assert agree >= 0.99
    # the logits too: fbgemm's 16-bit sums on a CPU without VNNI were off by 1.56 here (exact engines: 0.05)
    with torch.no_grad():
        assert (int8(data["xte"]) - fq(data["xte"])).abs().max().item() < 0.25


def test_int8_engine_is_the_exact_one_for_the_cpu() -> None:
    assert int8_backend(frozenset({"sse4_2", "avx2", "fma"})) == "onednn"  # no VNNI: fbgemm would saturate
    assert int8_backend(frozenset({"avx2", "avx512f", "avx512_vnni"})) == "x86"
    assert int8_backend(frozenset({"avx2", "avx_vnni"})) == "x86"
    assert int8_backend() in torch.backends.quantized.supported_engines
    with pytest.raises(ConfigError, match="int8 backend 'qnnpack' is not available; expected one of x86, fbgemm"):
        to_int8(nn.Linear(2, 2), [torch.rand(2, 2)], backend="qnnpack")


def test_int8_folds_masks_and_keeps_source_intact(trained: nn.Module, data: dict) -> None:
    model = copy.deepcopy(trained)
    _mask_(model, 0.5)
    int8 = to_int8(model, _calib(data), num_batches=2)
    conv1 = next(m for m in int8.modules() if "Conv" in type(m).__name__ and hasattr(m, "weight"))
    w = conv1.weight()  # quantized per-channel tensor
    assert (w.int_repr() == 0).float().mean() >= 0.4  # the pruned zeros survive quantization
    assert parametrize.is_parametrized(model.conv1, "weight")
    with torch.no_grad():
        model(data["xte"][:4])


class Untraceable(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return super().forward(-x)


def test_int8_untraceable_model_raises_config_error(data: dict) -> None:
    with pytest.raises(ConfigError, match="cannot be traced"):
        to_int8(Untraceable().eval(), _calib(data), num_batches=1)


# ---------------------------------------------------------------------------------------------
# The project's own models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,shape", [("cnn8", (1, 28, 28)), ("resnet20", (3, 32, 32))])
def test_registry_models_quantize_and_export(arch: str, shape: tuple[int, int, int]) -> None:
    model = create_model(arch, num_classes=10, in_channels=shape[0], image_size=shape[1:]).eval()
    calib = [(torch.rand(16, *shape), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    fq = quantize_(copy.deepcopy(model), QuantConfig(mode="ptq", weight_bits=8, act_bits=8, calib_batches=2),
                   calib_loader=calib)
    x = torch.rand(8, *shape)
    with torch.no_grad():
        out_fp, out_fq, out_i8 = model(x), fq(x), to_int8(fq, calib, num_batches=2)(x)
    assert out_fq.shape == out_i8.shape == (8, 10)
    # an untrained net's logits are nearly tied, so compare values, not argmax
    scale = out_fp.abs().max()
    assert (out_fq - out_fp).abs().max() < 0.1 * scale + 1e-3
    assert (out_i8 - out_fq).abs().max() < 0.1 * scale + 1e-3
    calibrate_(fq, calib, num_batches=1)  # re-calibration works on a quantized registry model
