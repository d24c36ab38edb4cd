"""Fixtures of the data tests: no real dataset reachable, and a fake load_dataset for the splits."""

from __future__ import annotations

from pathlib import Path

import pytest
from _datafiles import indexed

from searchprune.data import DatasetInfo, core, idx


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real dataset can be found: HOME, cwd, $SEARCHPRUNE_DATA and the system dirs all point
    into tmp_path."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.delenv("SEARCHPRUNE_DATA", raising=False)
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {k: tmp_path / "system" / k for k in idx.SYSTEM_DIRS})
    return tmp_path


@pytest.fixture
def fake_load(monkeypatch: pytest.MonkeyPatch):
    """Replaces load_dataset inside make_splits with an index-encoding dataset."""
    state: dict = {"train": indexed(1000), "test": indexed(300)}

    def fake(name: str, *, data_dir=None, download=False):
        info = DatasetInfo(name, 10, 1, (2, 2), (0.5,), (0.5,))
        return state["train"], state["test"], info

    monkeypatch.setattr(core, "load_dataset", fake)
    return state
