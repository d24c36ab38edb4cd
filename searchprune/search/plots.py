"""Study figures a reader understands at a glance, as interactive HTML (plotly) and PNG (matplotlib).

* ``pareto_<x>_vs_<y>`` per objective pair: points coloured by pruning method, shaped by
  fine-tuning recipe, edged by weight bits (also in the hover text); the seed recipes
  (baselines, ``dense_aft`` among them when the study has it) as named stars; infeasible trials
  grey; the 2-D Pareto front *of that projection* as a step line; axes with units; the cost kind
  in the title.
* ``pareto_3d``: Optuna's 3-objective front (feasibility from ``Trial.set_constraint``).
* ``certified_front`` (when ``study certify`` stored ``test_*`` attributes): the certified test
  front beside the search (validation) front.
* ``hypervolume_history``: hypervolume against finished trials and against compute (summed
  ``time_s``).
* ``stagewise``: clean and PGD accuracy after prune / fine-tune / quantize for the Pareto set.
* ``importance_<objective>``: parameter importances.

HTML pages share one ``plotly.min.js`` written next to them (they open without a network); every
figure is pushed into optuna-dashboard with ``save_plotly_graph_object``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.figure
import matplotlib.pyplot as plt
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as mpl
from optuna_dashboard import save_plotly_graph_object
from plotly.subplots import make_subplots

from .plot_data import (
    STAGES,
    TrialPoint,
    certified_metric,
    compute_axis,
    cost_kind,
    hypervolume_history,
    maximized,
    metric,
    metric_names,
    pair_points,
    stage_rows,
    trial_groups,
    trial_points,
)
from .reports import reference_point

__all__ = ["write_plots", "figures", "PROJECTIONS", "Figures"]

# (x, y) objective indices of the 2-D projections: robust vs clean, cost vs robust, cost vs clean
PROJECTIONS: tuple[tuple[int, int], ...] = ((1, 0), (2, 1), (2, 0))

Figures = dict[str, tuple[Any, Callable[[], Any] | None]]

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]
_SHAPES = [("circle", "o"), ("square", "s"), ("diamond", "D"), ("triangle-up", "^"), ("pentagon", "p"),
           ("hexagon", "h"), ("triangle-down", "v"), ("cross", "P")]
# weight bits -> (edge colour, edge width): float models thin white, quantized ones a bold edge
_EDGES = {32: ("#ffffff", 0.6), 16: ("#555555", 1.5), 8: ("#000000", 2.2), 4: ("#d62728", 2.2)}
_OTHER_EDGE = ("#9467bd", 2.2)
_FRONT = "#222222"


def _edge(bits: int) -> tuple[str, float]:
    return _EDGES.get(bits, _OTHER_EDGE)


class _Style:
    """Stable colours per method and shapes per recipe across every figure of one study."""

    def __init__(self, points: Sequence[TrialPoint]) -> None:
        self.methods = sorted({p.method for p in points})
        self.recipes = sorted({p.recipe for p in points})

    def colour(self, method: str) -> str:
        return _COLOURS[self.methods.index(method) % len(_COLOURS)] if method in self.methods else "#7f7f7f"

    def shape(self, recipe: str) -> tuple[str, str]:
        return _SHAPES[self.recipes.index(recipe) % len(_SHAPES)] if recipe in self.recipes else _SHAPES[0]


# --------------------------------------------------------------------------------------------
# One objective pair
# --------------------------------------------------------------------------------------------


def _pair_title(names: Sequence[str], x: str, y: str, what: str = "") -> str:
    return f"{what}{metric(y).label} vs {metric(x).label} (cost: {cost_kind(names)})"


def _add_pair_plotly(fig: go.Figure, points: Sequence[TrialPoint], names: Sequence[str], x: str, y: str,
                     maximize: tuple[bool, bool], style: _Style, *, row: int | None = None, col: int | None = None,
                     legend: bool = True) -> None:
    mx, my = metric(x), metric(y)
    have, front = pair_points(points, names, x, y, maximize)
    where = {"row": row, "col": col} if row is not None else {}

    def xs(ps: Sequence[TrialPoint]) -> list[float]:
        return [mx.show(p.value(x, names) or 0.0) for p in ps]

    def ys(ps: Sequence[TrialPoint]) -> list[float]:
        return [my.show(p.value(y, names) or 0.0) for p in ps]

    for (method, recipe, bits), ps in trial_groups(have).items():
        edge, width = _edge(bits)
        fig.add_trace(go.Scatter(
            x=xs(ps), y=ys(ps), mode="markers", name=f"{method} · {recipe} · {bits}-bit", legendgroup=method,
            showlegend=legend, text=[p.hover(names) for p in ps], hovertemplate="%{text}<extra></extra>",
            marker={"color": style.colour(method), "symbol": style.shape(recipe)[0], "size": 10,
                    "line": {"color": edge, "width": width}}), **where)
    bad = [p for p in have if not p.feasible and p.baseline is None]
    if bad:
        fig.add_trace(go.Scatter(x=xs(bad), y=ys(bad), mode="markers", name="infeasible", showlegend=legend,
                                 text=[p.hover(names) for p in bad], hovertemplate="%{text}<extra></extra>",
                                 marker={"color": "#cccccc", "symbol": "x", "size": 8}), **where)
    for p in (p for p in have if p.baseline is not None):
        fig.add_trace(go.Scatter(
            x=xs([p]), y=ys([p]), mode="markers+text", name=f"baseline: {p.baseline}", showlegend=legend,
            text=[p.baseline], textposition="top center", hovertext=[p.hover(names)], hoverinfo="text",
            marker={"color": style.colour(p.method), "symbol": "star", "size": 16,
                    "line": {"color": "#000000", "width": 1.2}}), **where)
    if front:
        fig.add_trace(go.Scatter(x=[a for a, _ in front], y=[b for _, b in front], mode="lines",
                                 name="2-D Pareto front", showlegend=legend, hoverinfo="skip",
                                 line={"shape": "vh" if maximize[0] else "hv", "color": _FRONT, "width": 1.5,
                                       "dash": "dot"}), **where)
    fig.update_xaxes(title_text=mx.axis, **where)
    fig.update_yaxes(title_text=my.axis, **where)


def _draw_pair_mpl(ax: Any, points: Sequence[TrialPoint], names: Sequence[str], x: str, y: str,
                   maximize: tuple[bool, bool], style: _Style, *, legend: bool = True) -> None:
    mx, my = metric(x), metric(y)
    have, front = pair_points(points, names, x, y, maximize)

    def xy(ps: Sequence[TrialPoint]) -> tuple[list[float], list[float]]:
        return [mx.show(p.value(x, names) or 0.0) for p in ps], [my.show(p.value(y, names) or 0.0) for p in ps]

    for (method, recipe, bits), ps in trial_groups(have).items():
        edge, width = _edge(bits)
        ax.scatter(*xy(ps), c=style.colour(method), marker=style.shape(recipe)[1], s=55, zorder=3,
                   edgecolors="#444444" if bits == 32 else edge, linewidths=0.5 if bits == 32 else width,
                   label=f"{method} · {recipe} · {bits}-bit")
    bad = [p for p in have if not p.feasible and p.baseline is None]
    if bad:
        ax.scatter(*xy(bad), c="#bbbbbb", marker="x", s=30, zorder=2, label="infeasible")
    for p in (p for p in have if p.baseline is not None):
        (bx,), (by,) = xy([p])
        ax.scatter([bx], [by], c=style.colour(p.method), marker="*", s=220, edgecolors="black", linewidths=0.8,
                   zorder=4)
        ax.annotate(p.baseline, (bx, by), textcoords="offset points", xytext=(6, 6), fontsize=8, zorder=5)
    if front:
        ax.step([a for a, _ in front], [b for _, b in front], where="pre" if maximize[0] else "post",
                color=_FRONT, linestyle=":", linewidth=1.3, zorder=1, label="2-D Pareto front")
    ax.set_xlabel(mx.axis)
    ax.set_ylabel(my.axis)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)


def _pair_figures(study: optuna.Study, points: Sequence[TrialPoint], style: _Style) -> Figures:
    names, mx = metric_names(study), maximized(study)
    out: Figures = {}
    for i, j in PROJECTIONS:
        x, y, maximize = names[i], names[j], (mx[i], mx[j])
        fig = go.Figure()
        _add_pair_plotly(fig, points, names, x, y, maximize, style)
        fig.update_layout(title=_pair_title(names, x, y), template="plotly_white", legend={"font": {"size": 10}})

        def draw(x: str = x, y: str = y, maximize: tuple[bool, bool] = maximize) -> Any:
            f, ax = plt.subplots(figsize=(6.4, 4.6))
            _draw_pair_mpl(ax, points, names, x, y, maximize, style)
            ax.set_title(_pair_title(names, x, y), fontsize=10)
            return f

        out[f"pareto_{x}_vs_{y}"] = (fig, draw)
    return out


# --------------------------------------------------------------------------------------------
# Certified vs search front, hypervolume, stage-wise robustness
# --------------------------------------------------------------------------------------------


def _certified(study: optuna.Study, points: Sequence[TrialPoint], style: _Style) -> Figures:
    robust = certified_metric(points)
    if robust is None:
        return {}
    names, mx = metric_names(study), maximized(study)
    cost = names[2]
    certified = [p for p in points if p.value(robust, names) is not None]
    label = metric(robust.removeprefix("test_")).label
    panels = [("search (validation)", points, names[1]), (f"certified (test split, {label})", certified, robust)]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=[t for t, _, _ in panels])
    for k, (_, ps, y) in enumerate(panels):
        _add_pair_plotly(fig, ps, names, cost, y, (mx[2], True), style, row=1, col=k + 1, legend=k == 0)
    title = f"certified front beside the search front (cost: {cost_kind(names)})"
    fig.update_layout(title=title, template="plotly_white", legend={"font": {"size": 10}})

    def draw() -> Any:
        f, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        for k, (ax, (sub, ps, y)) in enumerate(zip(axes, panels)):
            _draw_pair_mpl(ax, ps, names, cost, y, (mx[2], True), style, legend=k == 1)
            ax.set_title(sub, fontsize=10)
        f.suptitle(title, fontsize=11)
        return f

    return {"certified_front": (fig, draw)}


def _hypervolume(study: optuna.Study) -> Figures:
    h = hypervolume_history(study)
    comp, comp_label = compute_axis(h["compute_s"])
    names = metric_names(study)
    title = f"hypervolume (clean, robust, {cost_kind(names)} / dense; feasible trials)"
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=["vs trials", "vs compute"])
    fig.add_trace(go.Scatter(x=h["trials"], y=h["hypervolume"], mode="lines+markers", line={"shape": "hv"},
                             name="vs trials"), row=1, col=1)
    fig.add_trace(go.Scatter(x=comp, y=h["hypervolume"], mode="lines+markers", line={"shape": "hv"},
                             name="vs compute"), row=1, col=2)
    fig.update_xaxes(title_text="finished trials", row=1, col=1)
    fig.update_xaxes(title_text=comp_label, row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", showlegend=False)

    def draw() -> Any:
        f, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        a.step(h["trials"], h["hypervolume"], where="post", marker="o", ms=3)
        b.step(comp, h["hypervolume"], where="post", marker="o", ms=3, color="#ff7f0e")
        a.set_xlabel("finished trials")
        b.set_xlabel(comp_label)
        a.set_ylabel("hypervolume")
        for ax in (a, b):
            ax.grid(alpha=0.3)
        f.suptitle(title, fontsize=11)
        return f

    return {"hypervolume_history": (fig, draw)}


def _stage_label(p: TrialPoint) -> str:
    return f"trial {p.number} ({p.method}, {p.recipe}, {p.bits}-bit)" + (f" [{p.baseline}]" if p.baseline else "")


def _stagewise(study: optuna.Study, points: Sequence[TrialPoint], style: _Style) -> Figures:
    rows = stage_rows(study, points)
    if not rows:
        return {}
    kinds = (("pgd_acc", "PGD accuracy (%)"), ("clean_acc", "clean accuracy (%)"))
    title = "stage-wise accuracy of the Pareto set (after prune / fine-tune / quantize)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=[k[1] for k in kinds])
    for c, (key, label) in enumerate(kinds):
        for k, (p, stages) in enumerate(rows):  # one colour per trial: the lines are told apart
            fig.add_trace(go.Scatter(
                x=stages, y=[100 * float(p.attrs.get(f"stage_{s}_{key}", float("nan"))) for s in stages],
                mode="lines+markers", name=_stage_label(p), legendgroup=str(p.number), showlegend=c == 0,
                line={"color": _COLOURS[k % len(_COLOURS)]},
                marker={"color": _COLOURS[k % len(_COLOURS)], "symbol": style.shape(p.recipe)[0], "size": 9}),
                row=1, col=c + 1)
        fig.update_yaxes(title_text=label, row=1, col=c + 1)
    fig.update_xaxes(categoryorder="array", categoryarray=list(STAGES))
    fig.update_layout(title=title, template="plotly_white")

    def draw() -> Any:
        f, axes = plt.subplots(1, 2, figsize=(12, 4))
        order = {s: i for i, s in enumerate(STAGES)}
        for ax, (key, label) in zip(axes, kinds):
            for k, (p, stages) in enumerate(rows):
                ax.plot([order[s] for s in stages], [100 * float(p.attrs[f"stage_{s}_{key}"]) for s in stages],
                        marker=style.shape(p.recipe)[1], color=_COLOURS[k % len(_COLOURS)], label=_stage_label(p))
            ax.set_xticks(range(len(STAGES)), list(STAGES))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        f.suptitle(title, fontsize=11)
        return f

    return {"stagewise": (fig, draw)}


# --------------------------------------------------------------------------------------------
# Optuna's own views: the 3-D front and the importances
# --------------------------------------------------------------------------------------------


def _optuna_views(study: optuna.Study) -> Figures:
    names = metric_names(study)
    vis = optuna.visualization
    out: Figures = {"pareto_3d": (vis.plot_pareto_front(study, target_names=names),
                                  lambda: mpl.plot_pareto_front(study, target_names=names))}
    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_done < 3:
        return out
    for i, (n, d) in enumerate(zip(names, study.directions)):
        # PED-ANOVA (Optuna 5's default) scores what drives a target *low*: flip maximized ones
        sign = -1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0

        def target(t: FrozenTrial, i: int = i, sign: float = sign) -> float:
            return sign * t.values[i]

        try:
            fig = _importances(vis.plot_param_importances, study, target, n)
        except (RuntimeError, ValueError, ZeroDivisionError) as e:  # too few or constant params
            warnings.warn(f"param importances for {n} skipped: {e}", stacklevel=2)
            continue
        out[f"importance_{n}"] = (fig, functools.partial(_importances, mpl.plot_param_importances, study, target, n))
    return out


def _importances(plot: Callable[..., Any], study: optuna.Study, target: Callable[[FrozenTrial], float],
                 name: str) -> Any:
    with warnings.catch_warnings():
        # a custom target always triggers PED-ANOVA's "importances for low values" reminder;
        # figures() flips maximized objectives, so the reminder is already handled
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
        return plot(study, target=target, target_name=name)


def figures(study: optuna.Study) -> Figures:
    """The study's figures by name: name -> (plotly figure, factory of the matplotlib drawing).

    Always ``pareto_3d``, ``pareto_<x>_vs_<y>`` per :data:`PROJECTIONS` and ``hypervolume_history``;
    ``certified_front`` when trials carry ``test_*`` attributes, ``stagewise`` when Pareto trials
    carry ``stage_*`` ones, ``importance_<objective>`` with at least 3 completed trials.
    """
    points = trial_points(study)
    style = _Style(points)
    reference_point(study)  # fails early and clearly on a study without objectives
    out: Figures = {}
    views = _optuna_views(study)
    out["pareto_3d"] = views.pop("pareto_3d")
    out.update(_pair_figures(study, points, style))
    out.update(_certified(study, points, style))
    out.update(_hypervolume(study))
    out.update(_stagewise(study, points, style))
    out.update(views)
    return out


def _save_png(draw: Callable[[], Any], path: Path) -> None:
    with plt.style.context("default"):  # Optuna's matplotlib views switch the global style to ggplot
        ax = draw()
    # a Figure from our drawings; Axes (or an array of them) from Optuna's
    first = ax.flat[0] if hasattr(ax, "flat") else ax
    figure = first.figure if hasattr(first, "figure") and not isinstance(first, matplotlib.figure.Figure) else first
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close("all")


def write_plots(study: optuna.Study, out_dir: str | Path, *, push_to_dashboard: bool = True,
                png: bool = True) -> list[Path]:
    """Writes every figure of :func:`figures` as HTML (and PNG) and pushes them to the dashboard.

    Args:
        study: the study (any storage; pushing stores the figures as study system attributes).
        out_dir: directory for ``<name>.html``, ``<name>.png`` and one shared ``plotly.min.js``.
        push_to_dashboard: store each figure with ``save_plotly_graph_object`` under its name, so
            optuna-dashboard shows it on the study page (re-running overwrites, never duplicates).
        png: also draw each figure with matplotlib.

    Returns:
        The HTML and PNG files written, in figure order.
    """
    matplotlib.use("Agg")  # files only, never a window
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (fig, draw) in figures(study).items():
            html = out / f"{name}.html"
            fig.write_html(str(html), include_plotlyjs="directory")
            written.append(html)
            if push_to_dashboard:
                save_plotly_graph_object(study, fig, graph_object_id=name)
            if png and draw is not None:
                _save_png(draw, out / f"{name}.png")
                written.append(out / f"{name}.png")
    return written
