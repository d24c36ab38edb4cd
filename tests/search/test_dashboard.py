"""`searchprune study dashboard` serves the study: its HTTP API, and (slow) the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from _chromium import chromium_or_skip, render
from _pg import free_port
from optuna.distributions import FloatDistribution

from searchprune.config import StudyConfig, build, to_dict
from searchprune.search import CONFIG_ATTR, DIRECTIONS, OBJECTIVE_NAMES

STUDY = "dash_study"


def _make_study(tmp_path: Path) -> str:
    """A searchprune-shaped study (stored config, metric names, a few trials, pushed plots); no training."""
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url, directions=DIRECTIONS)
    study.set_metric_names(OBJECTIVE_NAMES["macs"])
    study.set_user_attr(CONFIG_ATTR, to_dict(build(StudyConfig, {"name": STUDY,
                                                                 "output_dir": str(tmp_path / "runs")})))
    for i, s in enumerate((0.3, 0.5, 0.7, 0.9)):
        study.add_trial(optuna.trial.create_trial(
            values=[0.9 - 0.2 * s, 0.5 - 0.3 * s, 1e6 * (1 - s)], params={"prune.sparsity": s},
            distributions={"prune.sparsity": FloatDistribution(0.0, 0.95)},
            constraints={"max_macs": (1e6 * (1 - s) - 4e5) / 4e5}, user_attrs={"baseline": i == 0}))
    from searchprune.search import write_plots

    write_plots(study, tmp_path / "plots", png=False)
    return url


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The CLI's dashboard on a free 127.0.0.1 port; yields (base URL, process) once /api/studies answers."""
    storage = _make_study(tmp_path)
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchprune.cli", "study", "dashboard", "--name", STUDY, "--storage", storage,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"dashboard exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if _get(f"{base}/api/studies")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("dashboard did not answer /api/studies within 60 s")
            time.sleep(0.3)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_dashboard_serves_the_study(dashboard):
    base, proc = dashboard
    status, body = _get(f"{base}/api/studies")
    assert status == 200
    studies = json.loads(body)["study_summaries"]
    (ours,) = [s for s in studies if s["study_name"] == STUDY]
    assert ours["directions"] == ["maximize", "maximize", "minimize"]
    status, body = _get(f"{base}/api/studies/{ours['study_id']}")
    detail = json.loads(body)
    assert len(detail["trials"]) == 4 and detail["objective_names"] == OBJECTIVE_NAMES["macs"]
    # the plots pushed by write_plots travel with the study
    pushed = {g["id"] for g in detail["plotly_graph_objects"]}
    assert {"pareto_3d", "hypervolume_history"} <= pushed
    status, body = _get(f"{base}/dashboard/studies/{ours['study_id']}")
    assert status == 200 and b"<html" in body.lower()
    assert proc.poll() is None  # still serving


@pytest.mark.slow
def test_dashboard_page_screenshot(dashboard, tmp_path):
    """Renders the study page in headless Chromium: the DOM names the study and the PNG is not blank."""
    browser = chromium_or_skip()
    from PIL import Image

    base, _ = dashboard
    study_id = next(s["study_id"] for s in json.loads(_get(f"{base}/api/studies")[1])["study_summaries"]
                    if s["study_name"] == STUDY)
    page = f"{base}/dashboard/studies/{study_id}"
    shot = tmp_path / "dashboard.png"
    dom = render(browser, page, page, shot, budget_ms=15000, timeout_s=120)
    assert STUDY in dom.stdout, f"study name not in the rendered page; chromium said: {dom.stderr[-2000:]}"
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 900)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "screenshot is (nearly) one colour"
    dominant = max(colors)[0] / (img.size[0] * img.size[1])
    assert dominant < 0.95, f"{dominant:.0%} of the screenshot is one colour"
    keep = os.environ.get("SEARCHPRUNE_KEEP_SCREENSHOT")
    if keep:  # for a human look: SEARCHPRUNE_KEEP_SCREENSHOT=/tmp/dash.png pytest -m slow ...
        shutil.copy(shot, keep)


def test_a_port_in_use_is_one_line_naming_it(tmp_path, capsys):
    import socket

    from searchprune.cli import main

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url, directions=DIRECTIONS)
    study.set_user_attr(CONFIG_ATTR, to_dict(build(StudyConfig, {"name": STUDY, "output_dir": str(tmp_path)})))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["study", "dashboard", "--name", STUDY, "--storage", url, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} on 127.0.0.1 is already in use; pick another with --port\n"
