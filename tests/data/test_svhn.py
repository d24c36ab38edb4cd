"""searchprune.data.svhn: a clear error when torchvision is missing."""

from __future__ import annotations

import sys

import pytest

from searchprune.data import (
    load_dataset,
)
from searchprune.errors import ConfigError


def test_svhn_without_torchvision_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ConfigError, match=r"pip install searchprune\[vision\]"):
        load_dataset("svhn")
