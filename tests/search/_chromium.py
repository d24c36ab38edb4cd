"""Headless Chromium for the page-rendering tests (dashboard, report): find it, dump a DOM, take a screenshot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["chromium_or_skip", "render"]


def chromium_or_skip() -> str:
    """The Chromium executable; skips the test when none is installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium; scripts/test.sh does it)")
    return browser


def render(browser: str, dom_url: str, shot_url: str, shot: Path, *, budget_ms: int,
           timeout_s: float) -> subprocess.CompletedProcess[str]:
    """The ``--dump-dom`` run on ``dom_url``, after a 1400x900 ``--screenshot`` of ``shot_url`` is written to ``shot``.

    Both runs use one throwaway profile (removed afterwards), no network services and a virtual
    time budget of ``budget_ms`` for the page's scripts.
    """
    profile = tempfile.mkdtemp(prefix="chromium-")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,900",
             f"--virtual-time-budget={budget_ms}"]
    try:
        dom = subprocess.run([browser, *flags, "--dump-dom", dom_url], capture_output=True, text=True,
                             timeout=timeout_s)
        subprocess.run([browser, *flags, f"--screenshot={shot}", shot_url], capture_output=True, timeout=timeout_s)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return dom
