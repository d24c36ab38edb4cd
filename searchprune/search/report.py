"""``searchprune study report``: one self-contained HTML page that says what a study found.

The page holds the figures (PNG as base64 ``data:`` URIs; the interactive plotly versions with
plotly's JavaScript inlined once), the Pareto table, the masking flags, the threat model, the data
and the budget, and the best trial under a few stated rules. Nothing is fetched when it opens: it
can be mailed, archived or opened on a machine without a network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from ..checkpoint import versions
from ..config import StudyConfig, to_dict
from ..errors import ConfigError
from .export import parse_rule, select_trial, trial_metric
from .plot_data import metric, trial_points
from .plots import figures
from .reports import certified_attrs, format_table, pareto_rows, study_summary
from .study import stored_config

__all__ = ["write_report", "default_rules", "report_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1250px;color:#222;
padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top} th{background:#f4f4f4} .muted{color:#777} .flag{color:#b00020;font-weight:600}
figure{display:inline-block;margin:.5rem;vertical-align:top} figure img{max-width:600px;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555} code{background:#f4f4f4;padding:0 .2rem} details{margin:.5rem 0}
"""

_FLAG_TEXT = {  # searchprune.attacks.masking.FLAG_NAMES, in words
    "zero_grad": "many correctly classified inputs have a zero input gradient (attacks cannot move them)",
    "strong_gap": "PGD accuracy exceeds the strong attacks' (APGD + Square) by more than the margin",
    "transfer_above_whitebox": "examples crafted on the dense model fool more inputs than white-box PGD",
    "steps_non_monotone": "more PGD steps give higher accuracy (the attack is not converging on the loss)",
    "steps_not_converged": "more PGD steps still lower accuracy a lot (the base attack is too weak)",
}


def default_rules(study: optuna.Study) -> list[str]:
    """The rules the report answers: best robust, best clean, cheapest, best robust at 1/2 and 1/4
    of the dense MACs, and the best certified when trials carry ``test_worst_acc``."""
    names = list(study.metric_names or ["clean_acc", "robust_acc", "macs"])
    rules = ["max robust_acc", "max clean_acc", f"min {names[2]}", "max robust_acc where mac_ratio <= 0.5",
             "max robust_acc where mac_ratio <= 0.25"]
    if any("test_worst_acc" in certified_attrs(study, t) for t in study.best_trials):
        rules.append("max test_worst_acc")
    return rules


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _kv_table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(v: Any, name: str) -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return "-" if v is None else _esc(v)
    m = metric(name)
    return f"{m.show(float(v)):.4g}{_esc(m.unit)}" if m.unit else f"{float(v):.4g}"


def _png(draw: Any) -> str:
    with plt.style.context("default"):  # as plots.write_plots: Optuna's views switch to ggplot globally
        ax = draw()
    first = ax.flat[0] if hasattr(ax, "flat") else ax
    fig = first if isinstance(first, matplotlib.figure.Figure) else first.figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close("all")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures_html(study: optuna.Study, interactive: bool) -> str:
    matplotlib.use("Agg")
    parts: list[str] = []
    live: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (fig, draw) in figures(study).items():
            if draw is not None:
                parts.append(f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{_png(draw)}">'
                             f"<figcaption>{_esc(name)}</figcaption></figure>")
            if interactive and not name.startswith("importance_"):
                live.append(fig.to_html(full_html=False, include_plotlyjs=not live,  # plotly's JS once, inlined
                                        default_width="100%", default_height="520px"))
    out = "".join(parts)
    if live:
        out += ("<details><summary>interactive figures (plotly, hover for each trial)</summary>"
                + "".join(live) + "</details>")
    return out


def _pareto_html(study: optuna.Study) -> str:
    rows = pareto_rows(study)
    if not rows:
        return "<p class='muted'>no completed feasible trial yet</p>"
    by_number = {p.number: p for p in trial_points(study)}
    test_keys = sorted({k for t in study.best_trials for k, v in certified_attrs(study, t).items()
                        if k.startswith("test_") and isinstance(v, int | float) and not isinstance(v, bool)})
    cols = ["trial", "method", "recipe", "bits", "sparsity", "clean_acc", "robust_acc", "transfer_acc", "macs",
            "mac_ratio", "bitops", *test_keys, "flags"]
    out = []
    for r in rows:
        p = by_number.get(r["trial"])
        ua = p.attrs if p is not None else {}
        cells = [str(r["trial"]) + (f" <span class='muted'>({_esc(p.baseline)})</span>" if p and p.baseline else ""),
                 _esc(p.method if p else "?"), _esc(p.recipe if p else "?"), _esc(p.bits if p else "?"),
                 _num(r["sparsity"], "sparsity"), _num(r["clean_acc"], "clean_acc"),
                 _num(r["robust_acc"], "robust_acc"),
                 _num(r["transfer_acc"], "clean_acc"), _num(r["macs"], "macs"), _num(r["mac_ratio"], "mac_ratio"),
                 _num(r["bitops"], "bitops"), *(_num(ua.get(k), k) for k in test_keys),
                 f"<span class='flag'>{_esc(r['flags'])}</span>" if r["flags"] != "-" else "-"]
        out.append(cells)
    return _table(cols, out) + f"<details><summary>as text (<code>study pareto</code>)</summary><pre>" \
        f"{_esc(format_table(rows))}</pre></details>"


def _flags_html(study: optuna.Study) -> str:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts: dict[str, int] = {}
    for t in done:
        for k, v in t.user_attrs.items():
            if k.startswith("flag_") and k != "flag_any":
                counts[k.removeprefix("flag_")] = counts.get(k.removeprefix("flag_"), 0) + bool(v)
    if not counts:
        return "<p class='muted'>no trial stored masking checks (eval.checks off, or no completed trial)</p>"
    pareto = {t.number for t in study.best_trials}
    rows = []
    for k, n in sorted(counts.items()):
        on_front = [t.number for t in done if t.user_attrs.get(f"flag_{k}") and t.number in pareto]
        rows.append([_esc(k), _esc(_FLAG_TEXT.get(k, "")), str(n), _esc(", ".join(map(str, on_front)) or "-")])
    return _table(["flag", "meaning", f"trials flagged (of {len(done)})", "Pareto trials flagged"], rows)


def _rules_html(study: optuna.Study, cfg: StudyConfig | None, rules: Sequence[str]) -> str:
    names = list(study.metric_names or [])
    by_number = {p.number: p for p in trial_points(study)}
    rows = []
    for text in rules:
        try:
            t = select_trial(study, parse_rule(text))
        except ConfigError as e:
            rows.append([f"<code>{_esc(text)}</code>", "-", f"<span class='muted'>{_esc(e)}</span>", "", ""])
            continue
        p = by_number.get(t.number)
        what = f"{p.method} / {p.recipe} / {p.bits}-bit" if p else ""
        vals = ", ".join(f"{n} {_num(trial_metric(t, n, names), n)}" for n in [*names, "mac_ratio"]
                         if trial_metric(t, n, names) is not None)
        cmd = (f"searchprune study export --name {cfg.name if cfg else study.study_name} --rule '{text}' "
               f"--out export_{t.number}")
        rows.append([f"<code>{_esc(text)}</code>", str(t.number), _esc(what), _esc(vals), f"<code>{_esc(cmd)}</code>"])
    return _table(["rule", "trial", "method / recipe / bits", "values", "export it"], rows)


def _setup_html(study: optuna.Study, cfg: StudyConfig | None) -> str:
    if cfg is None:
        return "<p class='muted'>the study has no stored searchprune config</p>"
    th = cfg.threat
    eps255 = f" (= {th.eps * 255:.3g}/255)" if th.norm == "linf" else ""
    threat = {"norm": th.norm, "eps (pixel scale [0, 1])": f"{th.eps:g}{eps255}", "PGD step alpha": th.alpha,
              "PGD steps": th.steps, "restarts": th.restarts, "random start": th.random_start,
              "attacks per trial": ", ".join(cfg.eval.attacks), "robust objective": cfg.eval.objective,
              "strong ensemble at export / certification": ", ".join(cfg.eval.export_attacks),
              "transfer check": cfg.eval.transfer, "gradient-masking checks": cfg.eval.checks}
    d = cfg.data
    data = {"dataset": d.dataset, "train images": d.train_size or "all", "validation images": d.val_size,
            "test images": d.test_size or "all", "images attacked per trial (validation)": cfg.eval.n_eval or "all",
            "images per stage-wise measurement": cfg.eval.n_stage_eval, "split seed": d.seed}
    spent = sum(float(t.user_attrs.get("time_s", 0.0)) for t in study.get_trials(deepcopy=False)
                if isinstance(t.user_attrs.get("time_s"), int | float))
    ft = cfg.defaults.finetune
    budget = {"trials planned": cfg.n_trials, "timeout": f"{cfg.timeout_s:g} s" if cfg.timeout_s else "none",
              "trials run": len(study.get_trials(deepcopy=False)),
              "compute spent (sum of trial time)": f"{spent:.0f} s",
              "default fine-tuning": f"{ft.recipe}, {ft.epochs:g} epochs" if ft else "none",
              "sampler": cfg.sampler.name, "cost objective": cfg.cost,
              "constraints": ", ".join(f"{k}={v}" for k, v in to_dict(cfg.constraints).items() if v is not None)
              or "none",
              "model": cfg.model.arch or cfg.model.factory}
    return ("<h3>Threat model</h3>" + _kv_table(threat) + "<h3>Data</h3>" + _kv_table(data)
            + "<h3>Budget</h3>" + _kv_table(budget))


def report_html(study: optuna.Study, *, rules: Sequence[str] | None = None, interactive: bool = True) -> str:
    """The report page as one HTML string (see :func:`write_report`)."""
    try:
        cfg: StudyConfig | None = stored_config(study)
    except ConfigError:
        cfg = None
    summary = study_summary(study)
    hv = summary.get("hypervolume")
    states = ", ".join(f"{v} {k}" for k, v in summary["by_state"].items()) or "none"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    body = [
        f"<h1>Study {_esc(study.study_name)}</h1>",
        f"<p class='muted'>written {stamp}; {vers}</p>",
        f"<p>{summary['trials']} trials ({_esc(states)}); {summary['pareto_size']} on the feasible Pareto front; "
        f"hypervolume {hv:.4f}</p>" if hv is not None else f"<p>{summary['trials']} trials ({_esc(states)})</p>",
        "<h2>Best trial per rule</h2>", _rules_html(study, cfg, rules or default_rules(study)),
        "<h2>Figures</h2>", _figures_html(study, interactive),
        "<h2>Pareto set</h2>", _pareto_html(study),
        "<h2>Flags</h2>", _flags_html(study),
        "<h2>Threat model, data and budget</h2>", _setup_html(study, cfg),
    ]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>searchprune study "
            f"{_esc(study.study_name)}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def write_report(study: optuna.Study, out_dir: str | Path, *, rules: Sequence[str] | None = None,
                 interactive: bool = True) -> Path:
    """Writes ``<out_dir>/report.html``: one self-contained page (opens offline) and returns its path.

    Args:
        study: the study.
        out_dir: the directory (created).
        rules: export rules to answer (default :func:`default_rules`); a rule no trial meets says so.
        interactive: also embed the plotly figures, with plotly's JavaScript inlined (~4 MB).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(report_html(study, rules=rules, interactive=interactive), encoding="utf-8")
    return path
