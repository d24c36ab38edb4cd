"""train_: every recipe learns, schedules, fractional epochs, parameter restriction, extra loss,
callbacks, determinism and errors, on a tiny learnable task."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from searchprune.attacks import accuracy, robust_accuracy
from searchprune.config import ThreatModel, TrainConfig
from searchprune.errors import ConfigError
from searchprune.train import RECIPES, RecipeContext, list_recipes, register_recipe, scheduled_lr, train_

THREAT = ThreatModel(eps=0.1, alpha=0.04, steps=3, random_start=True)


def _toy_data(n: int, seed: int, classes: int = 4, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images in [0, 1]: a fixed random prototype per class plus as much uniform noise."""
    protos = torch.rand(classes, 1, hw, hw, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return (0.5 * protos[y] + 0.5 * torch.rand(n, 1, hw, hw, generator=g)).clamp(0, 1), y


class Loader:
    """A minimal BatchLoader stand-in: fixed batches, len(), set_epoch() recorded, draws counted."""

    def __init__(self, n: int = 512, batch: int = 64, seed: int = 0) -> None:
        x, y = _toy_data(n, seed)
        self.batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
        self.epochs: list[int] = []
        self.drawn = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        for b in self.batches:
            self.drawn += 1
            yield b


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 4))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_four_recipes_are_registered() -> None:
    assert {"standard", "pgd", "fast", "trades"} <= set(list_recipes())


@pytest.mark.parametrize("recipe", list_recipes())
def test_each_recipe_reduces_its_loss(recipe: str) -> None:
    model, loader = _net(), Loader()
    cfg = TrainConfig(recipe=recipe, epochs=3, lr=0.05, schedule="constant")
    history = train_(model, loader, cfg, threat=THREAT)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # TRADES's KL term grows as the model grows confident, so its total falls slowest (~0.8x)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    assert history[-1]["acc"] > history[0]["acc"]
    assert accuracy(model, Loader(256, seed=1).batches) > 0.8
    assert all(h["images"] == 512 and h["batches"] == 8 and h["seconds"] > 0 for h in history)


def test_adversarial_training_buys_robustness() -> None:
    test = Loader(256, seed=1).batches
    threat = ThreatModel(eps=0.1, alpha=0.02, steps=10)
    accs = {}
    for recipe in ("standard", "fast"):
        model = _net()
        train_(model, Loader(), TrainConfig(recipe=recipe, epochs=3, lr=0.05), threat=threat)
        accs[recipe] = robust_accuracy(model, test, threat)
    assert accs["fast"] > accs["standard"] + 0.2


def test_training_attack_comes_from_cfg_attack_when_set() -> None:
    seen: list[RecipeContext] = []

    @register_recipe("_spy")
    def spy(model, x, y, ctx):
        seen.append(ctx)
        logits = model(x)
        return nn.functional.cross_entropy(logits, y), logits

    try:
        own = ThreatModel(eps=0.2, alpha=0.05, steps=2)
        train_(_net(), Loader(), TrainConfig(recipe="_spy", epochs=0.25), threat=THREAT)
        train_(_net(), Loader(), TrainConfig(recipe="_spy", epochs=0.25, attack=own), threat=THREAT)
    finally:
        del RECIPES._items["_spy"]
    assert seen[0].attack == THREAT and seen[-1].attack == own
    assert "_spy" not in list_recipes()


def _curve(cfg: TrainConfig, total: int) -> list[float]:
    return [scheduled_lr(cfg, step=s, total=total) for s in range(total)]


def test_schedules_follow_their_formulas() -> None:
    assert _curve(TrainConfig(lr=0.1, schedule="constant"), 4) == [0.1] * 4
    step = _curve(TrainConfig(lr=1.0, schedule="step", milestones=(0.5, 0.75), gamma=0.1), 8)
    assert step == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = _curve(TrainConfig(lr=2.0, schedule="cosine"), 10)
    assert cos == pytest.approx([1.0 + math.cos(math.pi * s / 10) for s in range(10)])
    assert cos[0] == 2.0 and all(a > b for a, b in zip(cos, cos[1:]))
    cyc = _curve(TrainConfig(lr=1.0, schedule="cyclic", cyclic_peak=0.4), 10)
    # 0 -> lr over the first 40% of the batches, back to 0 over the rest (read at each batch's end)
    assert cyc == pytest.approx([0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])
    with pytest.raises(ValueError):
        scheduled_lr(TrainConfig(), step=4, total=4)


def test_train_applies_the_schedule_per_batch() -> None:
    # gamma = 0 after the halfway milestone: the second epoch must leave the weights alone
    snapshots: list[dict[str, torch.Tensor]] = []
    model = _net()
    cfg = TrainConfig(epochs=2, lr=0.05, schedule="step", milestones=(0.5,), gamma=0.0, weight_decay=0.0)
    history = train_(model, Loader(), cfg, threat=THREAT,
                     epoch_callback=lambda epoch, rec: snapshots.append(_state(model)) and None)
    assert history[0]["lr"] == 0.05 and history[1]["lr"] == 0.0
    params = [n for n, _ in model.named_parameters()]
    assert all(torch.equal(snapshots[0][n], snapshots[1][n]) for n in params)
    cos_cfg = TrainConfig(epochs=2, lr=0.1, schedule="cosine")
    cos = train_(_net(), Loader(), cos_cfg, threat=THREAT)
    assert cos[0]["lr"] == pytest.approx(scheduled_lr(cos_cfg, step=7, total=16))  # last batch of epoch 0
    assert cos[1]["lr"] == pytest.approx(scheduled_lr(cos_cfg, step=15, total=16))


@pytest.mark.parametrize("epochs,max_batches,expected", [
    (0.5, None, [4]), (1.5, None, [8, 4]), (2.0, 3, [3, 3]), (0.25, 3, [1]), (1.0, 100, [8]),
])
def test_fractional_epochs_and_batch_caps(epochs: float, max_batches: int | None,
                                          expected: list[int]) -> None:
    loader = Loader()
    history = train_(_net(), loader, TrainConfig(epochs=epochs, max_batches=max_batches), threat=THREAT)
    assert [h["batches"] for h in history] == expected
    assert [h["images"] for h in history] == [64 * b for b in expected]
    assert loader.epochs == list(range(len(expected)))  # reshuffled per epoch
    assert loader.drawn == sum(expected)  # no batch drawn beyond the plan


def test_zero_epochs_does_nothing() -> None:
    model = _net()
    before = _state(model)
    assert train_(model, Loader(), TrainConfig(epochs=0), threat=THREAT) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_params_restricts_what_is_trained() -> None:
    model = _net()
    before = _state(model)
    head = list(model[-1].parameters())
    train_(model, Loader(), TrainConfig(epochs=1, lr=0.1, weight_decay=1e-3), threat=THREAT, params=head)
    after = model.state_dict()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith("6."), name
        if not name.startswith("6."):
            assert p.grad is None  # no gradient was even computed for the frozen parameters


def test_extra_loss_is_added_to_every_batch() -> None:
    calls = []

    def constant(model: nn.Module) -> torch.Tensor:
        calls.append(1)
        return torch.tensor(5.0)

    cfg = TrainConfig(epochs=1, lr=0.05)
    plain = train_(_net(), Loader(), cfg, threat=THREAT)
    shifted = train_(_net(), Loader(), cfg, threat=THREAT, extra_loss=constant)
    assert len(calls) == 8
    assert shifted[0]["loss"] == pytest.approx(plain[0]["loss"] + 5.0, abs=1e-4)

    # a penalty with a gradient changes what is learned: shrink the classifier's weights
    small, free = _net(), _net()
    train_(small, Loader(), cfg, threat=THREAT, extra_loss=lambda m: 10.0 * m[-1].weight.pow(2).sum())
    train_(free, Loader(), cfg, threat=THREAT)
    assert small[-1].weight.norm() < 0.7 * free[-1].weight.norm()


@pytest.mark.parametrize("recipe", list_recipes())
def test_same_seed_same_result(recipe: str) -> None:
    cfg = TrainConfig(recipe=recipe, epochs=0.5, lr=0.05, seed=3)
    a, b, c = _net(), _net(), _net()
    train_(a, Loader(), cfg, threat=THREAT)
    train_(b, Loader(), cfg, threat=THREAT)
    train_(c, Loader(), TrainConfig(recipe=recipe, epochs=0.5, lr=0.05, seed=4), threat=THREAT)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    if recipe in ("fast", "pgd", "trades"):  # their random starts depend on the seed
        assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_optimizers_modes_and_layout_restored() -> None:
    model = _net().eval()
    model[0].train()
    strides = {n: p.stride() for n, p in model.named_parameters()}
    hist = train_(model, Loader(), TrainConfig(optimizer="adam", lr=1e-2, epochs=1), threat=THREAT)
    assert hist[0]["acc"] > 0.5
    assert not model.training and model[0].training and not model[1].training
    assert {n: p.stride() for n, p in model.named_parameters()} == strides


def test_epoch_callback_can_stop_training() -> None:
    seen = []
    hist = train_(_net(), Loader(), TrainConfig(epochs=5), threat=THREAT,
                  epoch_callback=lambda epoch, rec: seen.append((epoch, rec["loss"])) or epoch == 1)
    assert len(hist) == 2 and [e for e, _ in seen] == [0, 1]


def test_progress_shows_loss_and_accuracy(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # off a terminal (captured stderr) progress is a line per LOG_INTERVAL_S; 0 makes it one per batch
    monkeypatch.setattr("searchprune._progress.LOG_INTERVAL_S", 0.0)
    train_(_net(), Loader(), TrainConfig(epochs=0.5), threat=THREAT, progress=True)
    err = capsys.readouterr().err
    assert "train[standard]" in err and " loss " in err and " acc " in err and " img/s " in err


def test_bf16_training_learns_too() -> None:
    model = _net()
    hist = train_(model, Loader(), TrainConfig(recipe="fast", epochs=3, lr=0.05), threat=THREAT,
                  precision="bf16")
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_errors() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'madry'"):
        train_(_net(), Loader(), TrainConfig(recipe="madry"), threat=THREAT)
    with pytest.raises(ConfigError, match="parameters"):
        train_(_net(), Loader(), TrainConfig(), threat=THREAT, params=[])
    with pytest.raises(ConfigError, match="len"):
        train_(_net(), iter(Loader().batches), TrainConfig(), threat=THREAT)
    with pytest.raises(FloatingPointError, match="loss"):
        train_(_net(), Loader(), TrainConfig(), threat=THREAT,
               extra_loss=lambda m: torch.tensor(float("nan")))
