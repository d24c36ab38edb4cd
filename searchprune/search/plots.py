"""Study figures: the 3-objective Pareto front with feasibility, its 2-D projections, the
hypervolume history and parameter importances per objective.

Each figure is written as HTML (plotly; ``plotly.min.js`` is written once next to them, so the
pages open without a network) and PNG (matplotlib, no browser needed), and pushed into
optuna-dashboard with ``save_plotly_graph_object``.

Feasibility: Optuna 5's ``plot_pareto_front`` and ``plot_hypervolume_history`` read the values
stored by ``Trial.set_constraint`` themselves (``FrozenTrial.constraints``): infeasible trials are
drawn as their own grey "Infeasible Trial" series and left out of the Pareto set and the
hypervolume. optuna-dashboard 0.21's own views do not read them (it looks for the pre-5.0
``constraints`` list), so the figures pushed here are where the dashboard shows feasibility. The
deprecated ``constraints_func`` argument is not used.

The 2-D projections colour a trial as "best" when it is on the 3-objective Pareto front, so the
same trials are highlighted in every view.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as mpl
from optuna_dashboard import save_plotly_graph_object

from .reports import reference_point

__all__ = ["write_plots", "figures", "PROJECTIONS"]

# (x, y) objective indices of the 2-D projections: robust vs clean, cost vs robust, cost vs clean
PROJECTIONS: tuple[tuple[int, int], ...] = ((1, 0), (2, 1), (2, 0))

Figures = dict[str, tuple[Any, Callable[[], Any] | None]]


def has_constraints(study: optuna.Study) -> bool:
    """Whether any completed trial stored a constraint value (``Trial.set_constraint``)."""
    return any(t.constraints for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def figures(study: optuna.Study) -> Figures:
    """The study's figures by name.

    Returns:
        name -> (plotly figure, factory of the same figure drawn with matplotlib). Names:
        ``pareto_3d``, ``pareto_<x>_vs_<y>`` per projection, ``hypervolume_history`` and
        ``importance_<objective>`` (only with at least 3 completed trials and a varying parameter).
    """
    names = list(study.metric_names or ["clean_acc", "robust_acc", "cost"])
    vis = optuna.visualization
    out: Figures = {}
    out["pareto_3d"] = (vis.plot_pareto_front(study, target_names=names),
                        lambda: mpl.plot_pareto_front(study, target_names=names))
    for i, j in PROJECTIONS:
        pair = [names[i], names[j]]

        def targets(t: FrozenTrial, i: int = i, j: int = j) -> Sequence[float]:
            return [t.values[i], t.values[j]]

        out[f"pareto_{names[i]}_vs_{names[j]}"] = (  # x vs y
            vis.plot_pareto_front(study, target_names=pair, targets=targets),
            functools.partial(mpl.plot_pareto_front, study, target_names=pair, targets=targets),
        )
    ref = reference_point(study)
    out["hypervolume_history"] = (vis.plot_hypervolume_history(study, reference_point=ref),
                                  lambda: mpl.plot_hypervolume_history(study, reference_point=ref))
    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_done >= 3:  # importances do not depend on feasibility
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
            out[f"importance_{n}"] = (fig, functools.partial(_importances, mpl.plot_param_importances, study,
                                                              target, n))
    return out


def _importances(plot: Callable[..., Any], study: optuna.Study, target: Callable[[FrozenTrial], float],
                 name: str) -> Any:
    with warnings.catch_warnings():
        # a custom target always triggers PED-ANOVA's "importances for low values" reminder;
        # figures() flips maximized objectives, so the reminder is already handled
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes",
                                category=UserWarning)
        return plot(study, target=target, target_name=name)


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
        for name, (fig, mpl_fig) in figures(study).items():
            html = out / f"{name}.html"
            fig.write_html(str(html), include_plotlyjs="directory")
            written.append(html)
            if push_to_dashboard:
                save_plotly_graph_object(study, fig, graph_object_id=name)
            if png and mpl_fig is not None:
                ax = mpl_fig()
                # Axes for most plots; an array of Axes for some; the Figure owns them all
                first = ax.flat[0] if hasattr(ax, "flat") else ax
                figure = first.figure if hasattr(first, "figure") else first
                figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close("all")
                written.append(out / f"{name}.png")
    return written
