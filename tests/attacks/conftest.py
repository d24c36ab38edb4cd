"""Fixtures shared by the attack tests: a tiny trained CNN and a held-out set it classifies well.
A test module that needs another setting defines its own fixture of the same name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from _toys import toy_data, toy_net
from torch import nn


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return toy_net(0)


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return toy_data(256, seed=1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Attack loops are many small ops: one thread is faster than two fighting for a busy CPU.

    Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the module's tests run with
    one torch thread, restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
