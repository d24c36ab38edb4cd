"""Fixtures shared by the search tests that run real (tiny) studies."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread per process (the CPU is shared); workers inherit it.

    Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    monkeypatch.setenv("SEARCHPRUNE_THREADS", "1")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Path of the module's base checkpoint (the first optimize trains it, later ones load it)."""
    return tmp_path_factory.mktemp("base") / "mnist_small_synthetic.pt"
