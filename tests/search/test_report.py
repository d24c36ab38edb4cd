"""`searchprune study report`: one self-contained HTML page (issue 14); slow: rendered in headless Chromium."""

from __future__ import annotations

import base64
import re

import pytest
from _chromium import chromium_or_skip, render
from _handmade import handmade_study

from searchprune.cli import main
from searchprune.search import figures, write_report
from searchprune.search.report import default_rules, report_html


def _no_external_resources(page: str) -> None:
    # offline: no element loads anything from elsewhere; scripts are inline (plotly's own bundle
    # mentions URLs in its code, which load nothing, so script bodies are left out of the check)
    assert not re.search(r"<script[^>]+src=", page)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup), "the page loads something remote"
    assert "<link" not in markup and "@import" not in markup


def test_report_has_every_section_and_only_inline_resources():
    study = handmade_study()
    page = report_html(study, interactive=False)
    _no_external_resources(page)
    for heading in ("Best trial per rule", "Figures", "Pareto set", "Flags", "Threat model", "Data", "Budget"):
        assert f">{heading}<" in page, heading
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    n_figs = sum(1 for _, draw in figures(study).values() if draw is not None)
    assert len(pngs) == n_figs >= 8
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # the Pareto table: one row per Pareto trial, with its method and the certified column
    table = page.split(">Pareto set<", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == len(study.best_trials) + 1
    assert "<th>test_worst_acc</th>" in table
    # the threat model and budget as stored
    assert "eps (pixel scale [0, 1])</th><td>0.05 (= 12.8/255)" in page
    assert "<th>trials planned</th><td>20</td>" in page
    assert "<th>compute spent (sum of trial time)</th><td>163 s</td>" in page
    # every default rule answered, with the trial it picks and how to export it
    rules = default_rules(study)
    assert "max test_worst_acc" in rules and "max robust_acc where mac_ratio &lt;= 0.5" in page
    best = max(study.best_trials, key=lambda t: t.values[1])
    assert f"<td><code>max robust_acc</code></td><td>{best.number}</td>" in page
    assert f"--rule &#x27;max robust_acc&#x27; --out export_{best.number}" in page


def test_rule_nobody_meets_says_so_and_flags_are_counted():
    study = handmade_study()
    page = report_html(study, rules=["max robust_acc where macs <= 1"], interactive=False)
    assert "none of the" in page and "satisfies the conditions" in page
    flags = page.split(">Flags<", 1)[1].split("</table>", 1)[0]
    assert "<td>strong_gap</td>" in flags and "<td>zero_grad</td>" in flags
    counts = re.findall(r"<td>(strong_gap|zero_grad)</td><td>[^<]*</td><td>(\d+)</td>", flags)
    assert dict(counts) == {"strong_gap": "1", "zero_grad": "0"}


def test_cli_writes_the_report_with_interactive_figures(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    handmade_study(storage=url, name="rep")
    assert main(["study", "report", "--name", "rep", "--storage", url, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "self-contained" in capsys.readouterr().out
    _no_external_resources(page)
    assert page.count('class="plotly-graph-div"') >= 6 and "Plotly.newPlot" in page
    assert len(page) > 3_000_000  # plotly's JS is inlined, once
    assert page.count("plotly.js v") <= 2


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    """The page opens from a file with the network off: a screenshot is made and every figure decoded."""
    browser = chromium_or_skip()
    from PIL import Image

    path = write_report(handmade_study(), tmp_path / "rep")
    # a tiny script writes each image's decoded width into the DOM, which --dump-dom prints
    probe = tmp_path / "rep" / "probe.html"
    script = ("<script>window.addEventListener('load',function(){var w=[];for(var i of document.images)"
              "{w.push(i.complete?i.naturalWidth:-1)}document.body.setAttribute('data-widths',w.join(','));"
              "document.body.setAttribute('data-plots',document.querySelectorAll('.js-plotly-plot .main-svg')"
              ".length)});</script>")
    probe.write_text(path.read_text().replace("</body>", script + "</body>"))
    shot = tmp_path / "report.png"
    dom = render(browser, probe.as_uri(), path.as_uri(), shot, budget_ms=20000, timeout_s=180)
    m = re.search(r'data-widths="([-0-9,]*)"', dom.stdout)
    assert m, f"the probe did not run; chromium said: {dom.stderr[-2000:]}"
    widths = [int(w) for w in m.group(1).split(",") if w]
    assert len(widths) >= 8 and all(w > 200 for w in widths), widths  # every PNG decoded, none broken
    plots = re.search(r'data-plots="(\d+)"', dom.stdout)
    assert plots and int(plots.group(1)) >= 6  # plotly drew its figures from the inlined JS
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 900)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "screenshot is (nearly) one colour"
