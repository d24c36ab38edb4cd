"""Model zoo contract: every registered model is checked here the day it is registered."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from searchprune.config import ModelConfig
from searchprune.data import DatasetInfo
from searchprune.errors import ConfigError
from searchprune.models import Normalize, build_model, create_model, list_models, register_model
from searchprune.models._registry import MODELS

ALL = list_models()
# the smallest size each model's down-sampling accepts keeps the big models cheap on CPU
SIZE = 16


def _classifiers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "is_classifier", False)]


def test_registry_has_the_documented_models() -> None:
    expected = {"cnn8", "mnist_small", "resnet20", "resnet32", "resnet56", "vgg16_bn", "wrn_28_4",
                "preact_resnet18", "mobilenetv2_cifar"}
    assert expected <= set(ALL)


# ---------------------------------------------------------------------------------------------
# contract tests over the registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape(name: str, channels: int) -> None:
    model = create_model(name, num_classes=7, in_channels=channels, image_size=(SIZE, SIZE))
    out = model(torch.rand(2, channels, SIZE, SIZE))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_exactly_one_classifier_and_it_produces_the_output(name: str) -> None:
    model = create_model(name, num_classes=7, in_channels=3, image_size=(SIZE, SIZE)).eval()
    marked = _classifiers(model)
    assert len(marked) == 1
    clf = marked[0]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert isinstance(clf, nn.Linear) and clf is linears[-1] and clf.out_features == 7
    seen = {}
    clf.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    out = model(torch.rand(2, 3, SIZE, SIZE))
    assert torch.equal(out, seen["out"])  # nothing after the classifier


@pytest.mark.parametrize("name", ALL)
def test_normalize_is_the_first_layer(name: str) -> None:
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    torch.manual_seed(0)
    with_norm = create_model(name, in_channels=3, image_size=(SIZE, SIZE), mean=mean, std=std).eval()
    first = next(iter(with_norm.children()))
    assert isinstance(first, Normalize)
    # the same weights without normalization, fed pre-normalized inputs, give the same logits
    plain = create_model(name, in_channels=3, image_size=(SIZE, SIZE)).eval()
    prefix = f"{_first_name(with_norm)}."
    state = {k: v for k, v in with_norm.state_dict().items() if not k.startswith(prefix)}
    plain.load_state_dict(state)
    x = torch.rand(2, 3, SIZE, SIZE)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(with_norm(x), plain((x - m) / s), rtol=1e-4, atol=1e-5)


def _first_name(model: nn.Module) -> str:
    return next(iter(model.named_children()))[0]


@pytest.mark.parametrize("name", ALL)
def test_relu_modules_not_inplace_and_each_leaf_runs_once(name: str) -> None:
    # one module per activation lets hooks and activation quantizers see every activation
    model = create_model(name, in_channels=1, image_size=(SIZE, SIZE))
    calls: dict[str, int] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.ReLU):
            assert not mod.inplace, mod_name
        if not list(mod.children()):
            mod.register_forward_hook(lambda m, i, o, n=mod_name: calls.__setitem__(n, calls.get(n, 0) + 1))
    model(torch.rand(2, 1, SIZE, SIZE))
    assert calls and max(calls.values()) == 1
    assert any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(1)
    a = create_model(name, in_channels=1, image_size=(SIZE, SIZE))
    torch.manual_seed(1)
    b = create_model(name, in_channels=1, image_size=(SIZE, SIZE))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ALL)
def test_torch_pruning_removes_channels(name: str) -> None:
    """Structured pruning must trace every model (the reason for option-B shortcuts)."""
    model = create_model(name, num_classes=5, in_channels=3, image_size=(SIZE, SIZE)).eval()
    example = torch.rand(1, 3, SIZE, SIZE)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=_classifiers(model),
    )
    pruner.step()
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.4 * before
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 5)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 3  # the input is never pruned


# ---------------------------------------------------------------------------------------------
# architecture specifics
# ---------------------------------------------------------------------------------------------


def test_cnn8_matches_eight_layer_conv_exactly() -> None:
    model = create_model("cnn8", num_classes=10, in_channels=1, image_size=(28, 28))
    # hand count: conv weights k*k*c_in*c_out + c_out biases; then the two FCs
    convs = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    expected = sum(9 * ci * co + co for ci, co in convs) + (2048 * 128 + 128) + (128 * 10 + 10)
    assert expected == 549_994
    assert sum(p.numel() for p in model.parameters()) == expected
    conv_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in conv_layers] == [
        (1, 32, 1), (32, 32, 2), (32, 64, 1), (64, 64, 2), (64, 128, 1), (128, 128, 2)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in conv_layers)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Dropout | nn.MaxPool2d) for m in model.modules())
    assert len([m for m in model.modules() if isinstance(m, nn.ReLU)]) == 7


@pytest.mark.parametrize(("size", "fc_in"), [((28, 28), 2048), ((32, 32), 2048), ((16, 16), 512)])
def test_cnn8_fc_input_follows_image_size(size: tuple[int, int], fc_in: int) -> None:
    model = create_model("cnn8", in_channels=3, image_size=size)
    assert model.fc1.in_features == fc_in
    assert model(torch.rand(2, 3, *size)).shape == (2, 10)


@pytest.mark.parametrize(("size", "fc_in"), [((28, 28), 32 * 7 * 7), ((32, 32), 32 * 8 * 8)])
def test_mnist_small_is_hydra_mnist_model(size: tuple[int, int], fc_in: int) -> None:
    model = create_model("mnist_small", in_channels=1, image_size=size)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (16, (4, 4), (2, 2), (1, 1)), (32, (4, 4), (2, 2), (1, 1))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(fc_in, 100), (100, 10)]


@pytest.mark.parametrize(("name", "depth"), [("resnet20", 20), ("resnet32", 32), ("resnet56", 56)])
def test_cifar_resnets_depth_and_option_b_shortcuts(name: str, depth: int) -> None:
    model = create_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2  # entering the 32- and 64-channel stages
    for block in (model.layer2[0], model.layer3[0]):
        conv, bn = block.shortcut
        assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)


def test_wrn_28_4_widths() -> None:
    model = create_model("wrn_28_4")
    assert [g[0].conv1.out_channels for g in (model.block1, model.block2, model.block3)] == [64, 128, 256]
    assert all(len(g) == 4 for g in (model.block1, model.block2, model.block3))
    assert model.fc.in_features == 256


def test_vgg_has_thirteen_convs_and_rejects_tiny_inputs() -> None:
    model = create_model("vgg16_bn")
    assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == 13
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)  # MNIST-sized inputs work too
    with pytest.raises(ConfigError, match="too small"):
        create_model("vgg16_bn", image_size=(8, 8))


def test_model_options_are_checked() -> None:
    slim = create_model("mobilenetv2_cifar", width_mult=0.5, image_size=(SIZE, SIZE))
    assert slim.stem[0].out_channels == 16 and slim.linear.in_features == 1280
    assert isinstance(create_model("wrn_28_4", dropout=0.3).block1[0].dropout, nn.Dropout)
    with pytest.raises(ConfigError, match=r"unexpected option\(s\) \['depth'\].*dropout"):
        create_model("wrn_28_4", depth=40)
    with pytest.raises(ConfigError, match="cnn8.*'foo'"):
        create_model("cnn8", foo=1)


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ConfigError) as err:
        create_model("resnet9000")
    msg = str(err.value)
    assert "resnet9000" in msg and all(name in msg for name in ALL)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("cnn8", num_classes=0)
    with pytest.raises(ConfigError, match="image_size"):
        create_model("cnn8", image_size=(28, 28, 28))
    with pytest.raises(ConfigError, match="3 input channels"):
        create_model("resnet20", in_channels=3, mean=[0.1, 0.2], std=[0.3, 0.3])


# ---------------------------------------------------------------------------------------------
# Normalize
# ---------------------------------------------------------------------------------------------


def test_normalize_math_buffers_and_identity() -> None:
    norm = Normalize([0.5, 0.25], [0.5, 0.25])
    x = torch.rand(2, 2, 3, 3)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25], dim=1)
    torch.testing.assert_close(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "std"} and not list(norm.parameters())
    ident = Normalize()
    assert ident(x) is x and not ident.state_dict()
    torch.testing.assert_close(Normalize([0.5], [0.5])(torch.ones(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))


@pytest.mark.parametrize(("mean", "std", "match"), [
    ([0.5], None, "both mean and std"),
    ([0.5, 0.5], [0.5], "same non-zero length"),
    ([0.5], [0.0], "std > 0"),
])
def test_normalize_rejects_bad_stats(mean, std, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Normalize(mean, std)


# ---------------------------------------------------------------------------------------------
# build_model: arch and factory
# ---------------------------------------------------------------------------------------------

FMNIST = DatasetInfo("fashion-mnist", 10, 1, (28, 28), (0.286,), (0.353,))
CIFAR = DatasetInfo("cifar10", 100, 3, (32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def test_build_model_from_arch_uses_dataset_info() -> None:
    model = build_model(ModelConfig(arch="cnn8"), FMNIST)
    assert model.conv1.in_channels == 1 and model.fc2.out_features == 10
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.286])
    model = build_model(ModelConfig(arch="resnet20"), CIFAR)
    assert model.conv1.in_channels == 3 and model.linear.out_features == 100
    # kwargs override the dataset statistics (Adver-Fine's [-1, 1] convention)
    model = build_model(ModelConfig(arch="cnn8", kwargs={"mean": [0.5], "std": [0.5]}), FMNIST)
    assert model.normalize.std.flatten().tolist() == [0.5]


def test_build_model_unknown_arch() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        build_model(ModelConfig(arch="nope"), FMNIST)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's model file importable as a fresh, uniquely named module."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        from torch import nn
        from searchprune.models import Normalize

        def small(num_classes, in_channels, width=8):
            return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, num_classes))

        def normalized(*, num_classes, in_channels, mean, std, **rest):
            model = nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.LazyLinear(num_classes))
            model.rest = sorted(rest)
            return model

        def not_a_model(num_classes):
            return "oops"

        class Holder:
            @staticmethod
            def make(num_classes):
                return nn.Linear(4, num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_factory_gets_only_the_arguments_it_declares(user_module: str) -> None:
    model = build_model(ModelConfig(arch=None, factory=f"{user_module}:small", kwargs={"width": 4}), CIFAR)
    assert model[0].in_channels == 3 and model[0].out_channels == 4 and model[-1].out_features == 100
    # the factory marked nothing: the last Linear becomes the classifier
    assert _classifiers(model) == [model[-1]]
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 100)


def test_factory_with_var_kwargs_gets_everything(user_module: str) -> None:
    model = build_model(ModelConfig(arch=None, factory=f"{user_module}:normalized"), FMNIST)
    assert isinstance(model[0], Normalize) and model[0].mean.flatten().tolist() == pytest.approx([0.286])
    assert model.rest == ["image_size"]


def test_factory_dotted_attribute(user_module: str) -> None:
    model = build_model(ModelConfig(arch=None, factory=f"{user_module}:Holder.make"), FMNIST)
    assert isinstance(model, nn.Linear) and model.is_classifier


@pytest.mark.parametrize(("factory", "match"), [
    ("no_such_pkg_xyz.models:net", "cannot import 'no_such_pkg_xyz.models'"),
    ("{mod}:missing", "has no attribute 'missing'"),
    ("{mod}:not_a_model", "expected it to return an nn.Module, got str"),
    ("{mod}:", "expected 'package.module:function'"),
])
def test_bad_factory_names_the_string(user_module: str, factory: str, match: str) -> None:
    spec = factory.format(mod=user_module)
    with pytest.raises(ConfigError, match=match) as err:
        build_model(ModelConfig(arch=None, factory=spec), FMNIST)
    assert repr(spec) in str(err.value)


def test_factory_rejects_options_it_does_not_take(user_module: str) -> None:
    with pytest.raises(ConfigError, match=r"unexpected option\(s\) \['depth'\]"):
        build_model(ModelConfig(arch=None, factory=f"{user_module}:small", kwargs={"depth": 3}), FMNIST)


def test_register_model_adds_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))  # undo the registration afterwards

    @register_model("test_tiny")
    def test_tiny(*, num_classes=10, in_channels=3, image_size=(32, 32), mean=None, std=None):
        head = nn.Linear(in_channels, num_classes)
        head.is_classifier = True
        return nn.Sequential(Normalize(mean, std), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)

    assert "test_tiny" in list_models()
    assert create_model("test_tiny", num_classes=4)(torch.rand(2, 3, 5, 5)).shape == (2, 4)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("test_tiny")(test_tiny)
    with pytest.raises(TypeError, match="must accept"):
        register_model("test_bad")(lambda num_classes: nn.Identity())
