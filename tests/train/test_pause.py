"""train_(pause_at=..., on_pause=...): successive halving measures a trial inside one training run.

Pausing must change nothing the run computes (same optimizer state, same schedule, RNG restored),
so a trial that survives every rung ends exactly where an uninterrupted run ends: no rung is paid twice.
"""

from __future__ import annotations

import pytest
import torch
from test_train import THREAT, Loader, _net, _state

from searchprune.attacks import robust_accuracy
from searchprune.config import TrainConfig
from searchprune.errors import ConfigError
from searchprune.train import scheduled_lr, train_


@pytest.mark.parametrize("recipe,schedule", [("fast", "cosine"), ("pgd", "cyclic"), ("standard", "step")])
def test_pausing_changes_nothing_the_run_computes(recipe: str, schedule: str) -> None:
    cfg = TrainConfig(recipe=recipe, epochs=2.0, lr=0.05, schedule=schedule, milestones=(0.5,), seed=3)
    plain = _net()
    train_(plain, Loader(), cfg, threat=THREAT)
    paused = _net()
    loader = Loader()
    calls: list[tuple[int, float, int, bool]] = []

    def on_pause(i: int, epochs_done: float) -> None:
        # what a rung does: evaluate (eval mode, PGD with a random start draws from the global RNG)
        calls.append((i, epochs_done, loader.drawn, paused.training))
        robust_accuracy(paused, [b for b in Loader(n=64).batches], THREAT)
        torch.rand(100)

    train_(paused, loader, cfg, threat=THREAT, pause_at=(0.25, 0.75, 1.5), on_pause=on_pause)
    # 8 batches per epoch: 0.25 -> 2, 0.75 -> 6, 1.5 -> 12 batches done
    assert calls == [(0, 0.25, 2, True), (1, 0.75, 6, True), (2, 1.5, 12, True)]
    for k, v in _state(plain).items():
        assert torch.equal(v, paused.state_dict()[k]), k


def test_the_schedule_continues_across_pauses() -> None:
    cfg = TrainConfig(recipe="standard", epochs=2.0, lr=0.1, schedule="cosine")
    history = train_(_net(), Loader(), cfg, threat=THREAT, pause_at=(0.5, 1.0), on_pause=lambda i, e: None)
    # each epoch's last lr is the cosine value of one 16-batch schedule, not of restarted pieces
    assert [h["lr"] for h in history] == [pytest.approx(scheduled_lr(cfg, step=s, total=16)) for s in (7, 15)]
    assert [h["batches"] for h in history] == [8, 8]


def test_a_raising_callback_stops_training_and_restores_modes() -> None:
    model = _net()
    model.eval()
    loader = Loader()

    def on_pause(i: int, epochs_done: float) -> None:
        raise RuntimeError(f"pruned at rung {i}")

    with pytest.raises(RuntimeError, match="pruned at rung 0"):
        train_(model, loader, TrainConfig(epochs=1.0), threat=THREAT, pause_at=(0.25,), on_pause=on_pause)
    assert loader.drawn == 2 and not model.training


def test_pauses_round_to_batches_and_bad_ones_are_refused() -> None:
    calls: list[tuple[int, float]] = []
    train_(_net(), Loader(), TrainConfig(epochs=0.5), threat=THREAT, pause_at=(0.01, 0.02, 0.25, 0.5, 2.0),
           on_pause=lambda i, e: calls.append((i, e)))
    # 8 batches per epoch: 0.01 and 0.02 both pause after the first batch; 0.5 and 2.0 lie at/after the end
    assert calls == [(0, 0.125), (1, 0.125), (2, 0.25)]
    for pause_at, match in [((0.5, 0.25), "increasing"), ((0.25, 0.25), "increasing"), ((-1.0,), "increasing")]:
        with pytest.raises(ConfigError, match=match):
            train_(_net(), Loader(), TrainConfig(epochs=1.0), threat=THREAT, pause_at=pause_at,
                   on_pause=lambda i, e: None)
    with pytest.raises(ConfigError, match="on_pause"):
        train_(_net(), Loader(), TrainConfig(epochs=1.0), threat=THREAT, pause_at=(0.5,))
