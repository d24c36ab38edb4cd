"""Shared fixture of the pruning tests: one torch thread (the CPU is shared; tiny nets gain nothing from more)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
