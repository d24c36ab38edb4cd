"""Progress off a terminal: log lines with epoch, images/s, elapsed and estimate (issue 14).

A fake clock and a tiny interval stand in for time: nothing here waits or times anything."""

from __future__ import annotations

import io

import torch
from torch import nn

import searchprune._progress as progress_mod
from searchprune._progress import Progress, format_duration
from searchprune.attacks import evaluate
from searchprune.config import ThreatModel, TrainConfig
from searchprune.data import ArrayDataset, BatchLoader
from searchprune.train import train_


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_interval_with_rate_elapsed_and_estimate():
    clock, out = FakeClock(), io.StringIO()
    p = Progress(10, "train[pgd]", stream=out, interval_s=30.0, clock=clock)
    assert not p.terminal
    clock.t += 10
    p.update(2, images=256, epoch=0, loss=0.5)
    assert out.getvalue() == ""  # 10 s < 30 s: nothing yet
    clock.t += 20
    p.update(2, images=256, epoch=1, loss=0.25)  # 30 s since the start: a line
    line = out.getvalue().strip()
    assert line == ("train[pgd]: 4/10 batch (40%) | epoch 1 | 17 img/s | elapsed 0:00:30 | eta 0:00:45 | "
                    "loss 0.25")
    clock.t += 29
    p.update(1, images=128)
    assert len(out.getvalue().splitlines()) == 1  # 29 s since the last line
    clock.t += 1
    p.update(1, images=128)
    assert len(out.getvalue().splitlines()) == 2
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("train[pgd]: 6/10 batch (60%)")
    p.update(1)  # closed: silent
    assert len(out.getvalue().splitlines()) == 3


def test_short_step_and_disabled_write_nothing():
    clock, out = FakeClock(), io.StringIO()
    with Progress(3, "quick", stream=out, clock=clock) as p:
        p.update(3, images=30)
    assert out.getvalue() == ""
    off = Progress(3, "off", stream=out, clock=clock, enabled=False, interval_s=0)
    off.update(3)
    off.close()
    assert out.getvalue() == ""


def test_one_long_batch_still_gets_a_closing_line_and_unknown_total():
    clock, out = FakeClock(), io.StringIO()
    p = Progress(None, "certify", unit="img", stream=out, clock=clock)
    clock.t += 95
    p.close()
    assert out.getvalue().strip() == "certify: 0/? img | elapsed 0:01:35"
    assert format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "?"


def _data(n: int = 64) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
                        torch.randint(0, 2, (n,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def test_train_reports_epoch_lines_off_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)  # a line per batch instead of per 30 s
    loader = BatchLoader(_data(), 16, shuffle=True, seed=0)
    train_(_model(), loader, TrainConfig(recipe="standard", epochs=2, lr=0.1), threat=ThreatModel(),
           progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train[standard]")]
    assert len(lines) == 9  # 8 batches + the closing line
    assert lines[0].startswith("train[standard]: 1/8 batch (12%) | epoch 0 | ")
    assert "epoch 1" in lines[-1] and "8/8 batch (100%)" in lines[-1]
    for ln in lines:
        assert " img/s | elapsed " in ln and " | loss " in ln and " acc " in ln
    assert "eta 0:00:00" in lines[-1]


def test_train_without_progress_is_silent(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)
    train_(_model(), BatchLoader(_data(), 16), TrainConfig(recipe="standard", epochs=1), threat=ThreatModel())
    assert capsys.readouterr().err == ""


def test_evaluate_reports_images(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)
    loader = BatchLoader(_data(40), 16)
    res = evaluate(_model(), loader, ThreatModel(eps=0.1, alpha=0.05, steps=2), attacks=("pgd",), progress=True,
                   desc="certify")
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == [
        "certify[pgd]: 16/40 img (40%)", "certify[pgd]: 32/40 img (80%)", "certify[pgd]: 40/40 img (100%)",
        "certify[pgd]: 40/40 img (100%)"]
    assert f"clean {res.clean:.4g}" in lines[-1] and "worst" in lines[-1]


def test_terminal_gets_a_tqdm_bar_with_the_numbers():
    out = io.StringIO()
    with Progress(4, "train[fast]", stream=out, terminal=True) as p:
        assert p.bar is not None
        p.update(2, images=64, epoch=0, loss=0.5, acc=0.75)
        p.bar.refresh()
    text = out.getvalue()
    assert "train[fast]" in text and "loss=0.5" in text and "acc=0.75" in text and "2/4" in text
