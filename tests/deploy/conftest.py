"""Shared fixtures of the deploy tests: one thread, and a counter of the timed runs."""

from __future__ import annotations

import pytest
import torch

from searchprune.deploy import _measure


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the timed runs (one entry per call of ``_measure.time_runs``)."""
    calls: list[int] = []
    real = _measure.time_runs

    def counting(fn, x, *, repeats, warmup):  # type: ignore[no-untyped-def]
        calls.append(repeats)
        return real(fn, x, repeats=repeats, warmup=warmup)

    monkeypatch.setattr(_measure, "time_runs", counting)
    return calls
