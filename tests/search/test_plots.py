"""Study figures on a hand-made study: labelled fronts, 2-D Pareto steps, baselines, certified front,
hypervolume vs trials and compute, stage-wise robustness, files and the dashboard push (issue 14)."""

from __future__ import annotations

import optuna
import pytest
from _handmade import handmade_study as _study
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from searchprune.search import DIRECTIONS, OBJECTIVE_NAMES, PROJECTIONS, figures, write_plots
from searchprune.search.plot_data import front_2d, hypervolume_history, metric, trial_points
from searchprune.search.reports import study_hypervolume


def _traces(fig, prefix: str = "") -> list:
    return [tr for tr in fig.data if (tr.name or "").startswith(prefix)]


def test_front_2d_is_the_projections_own_pareto_set():
    xy = [(1.0, 5.0), (2.0, 6.0), (3.0, 4.0), (2.0, 6.0), (4.0, 9.0)]
    # x minimized, y maximized: (1,5), (2,6), (4,9); the duplicate counts once, (3,4) is dominated
    assert front_2d(xy, (False, True)) == [0, 1, 4]
    # both maximized: only (4, 9)
    assert front_2d(xy, (True, True)) == [4]
    assert front_2d([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)], (True, True)) == [0, 1, 2]


def test_pair_figures_are_labelled_and_draw_the_2d_front():
    study = _study()
    figs = figures(study)
    points = {p.number: p for p in trial_points(study)}
    names = OBJECTIVE_NAMES["macs"]
    three_d = {t.number for t in study.best_trials}
    some_3d_member_off_a_2d_front = False
    for i, j in PROJECTIONS:
        fig = figs[f"pareto_{names[i]}_vs_{names[j]}"][0]
        assert "cost: macs" in fig.layout.title.text
        assert fig.layout.xaxis.title.text.endswith("(%)" if names[i].endswith("acc") else "(M)")
        assert fig.layout.yaxis.title.text.endswith("(%)")
        # one trace per (method, recipe, bits): colour = method, symbol = recipe, edge = bits
        groups = [tr for tr in fig.data if tr.name.count(" · ") == 2]
        colours = {tr.name.split(" · ")[0]: tr.marker.color for tr in groups}
        assert len(set(colours.values())) == len(colours) >= 3
        for tr in groups:
            method, recipe, bits = tr.name.split(" · ")
            assert tr.marker.color == colours[method]
            assert all(f"{method} / fine-tune {recipe} / {bits}" in t for t in tr.text)
            assert tr.marker.line.width == (2.2 if bits == "8-bit" else 0.6)
        symbols = {tr.name.split(" · ")[1]: tr.marker.symbol for tr in groups}
        assert len(set(symbols.values())) == len(symbols) == 3
        # the baselines are named stars: dense (inferred from the table) and dense_aft (stored name)
        stars = {tr.name: tr for tr in _traces(fig, "baseline: ")}
        assert set(stars) == {"baseline: dense", "baseline: dense_aft"}
        assert all(tr.marker.symbol == "star" and tr.mode == "markers+text" for tr in stars.values())
        # infeasible trials grey, apart
        (grey,) = _traces(fig, "infeasible")
        infeasible = {n for n, p in points.items() if not p.feasible and p.baseline is None}
        assert len(grey.x) == len(infeasible) > 0
        # the step line is this projection's own front over the feasible trials (in shown units)
        (front,) = _traces(fig, "2-D Pareto front")
        mx, my = metric(names[i]), metric(names[j])
        maximize = (i != 2, True)
        feas = [p for p in points.values() if p.feasible]
        xy = [(mx.show(p.values[i]), my.show(p.values[j])) for p in feas]
        want = [xy[k] for k in front_2d(xy, maximize)]
        assert [(float(a), float(b)) for a, b in zip(front.x, front.y)] == want
        assert front.line.shape == ("vh" if maximize[0] else "hv")
        on_front = {p.number for p, q in zip(feas, xy) if q in want}
        some_3d_member_off_a_2d_front |= bool(three_d - on_front)
    assert some_3d_member_off_a_2d_front, "the made-up study must show why 3-D 'best' is not the 2-D front"


def test_certified_front_only_with_test_attrs():
    figs = figures(_study())
    fig = figs["certified_front"][0]
    panels = [a.text for a in fig.layout.annotations]
    assert panels[0] == "search (validation)" and panels[1].startswith("certified (test")
    y2 = [tr for tr in fig.data if tr.yaxis == "y2" and tr.name == "2-D Pareto front"]
    assert len(y2) == 1
    assert "certified_front" not in figures(_study(certified=False))


def test_hypervolume_vs_trials_and_compute():
    study = _study()
    h = hypervolume_history(study)
    n_finished = 14 + 2 + 2  # completed + pruned + failed
    assert h["trials"] == list(range(1, n_finished + 1))
    assert h["compute_s"][:16] == [10.0 * (k + 1) for k in range(16)]
    assert h["compute_s"][16] == 163.0  # the pruned trial's 3 s count as compute spent
    assert h["hypervolume"] == sorted(h["hypervolume"]) and h["hypervolume"][-1] > 0
    assert h["hypervolume"][-1] == pytest.approx(study_hypervolume(study))
    fig = figures(study)["hypervolume_history"][0]
    assert list(fig.data[0].y) == h["hypervolume"] and list(fig.data[1].x) == h["compute_s"]
    assert fig.layout.xaxis2.title.text == "compute (trial time, s)"
    # infeasible trials add nothing
    unconstrained = hypervolume_history(_study(constraints=False))
    assert unconstrained["hypervolume"][-1] > h["hypervolume"][-1]


def test_stagewise_is_the_pareto_set():
    study = _study()
    fig = figures(study)["stagewise"][0]
    pareto = {t.number for t in study.best_trials}
    drawn = {int(tr.name.split()[1]) for tr in fig.data if tr.showlegend}
    assert drawn == pareto
    for tr in fig.data:
        assert set(tr.x) <= {"prune", "finetune", "quantize"} and tr.x[0] == "prune"
        t = study.trials[int(tr.name.split()[1])]
        key = "pgd_acc" if tr.xaxis == "x" else "clean_acc"
        assert list(tr.y) == pytest.approx([100 * t.user_attrs[f"stage_{s}_{key}"] for s in tr.x])


def test_write_plots_files_and_dashboard(tmp_path):
    study = _study()
    out = tmp_path / "plots"
    written = write_plots(study, out)
    expected = {"pareto_3d", "pareto_robust_acc_vs_clean_acc", "pareto_macs_vs_robust_acc", "pareto_macs_vs_clean_acc",
                "certified_front", "hypervolume_history", "stagewise",
                "importance_clean_acc", "importance_robust_acc", "importance_macs"}
    assert {p.stem for p in written} == expected
    for stem in expected:
        html, png = out / f"{stem}.html", out / f"{stem}.png"
        assert html.stat().st_size > 1000 and "plotly.min.js" in html.read_text()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, stem
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # offline: no CDN needed

    def pushed() -> dict[str, str]:
        return get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))

    assert set(pushed()) == expected
    write_plots(study, out, png=False)  # pushing again overwrites, never duplicates
    assert set(pushed()) == expected


def test_pareto_3d_keeps_infeasible_apart_and_empty_study_plots(tmp_path):
    study = _study()
    fig = figures(study)["pareto_3d"][0]
    grey = [tr for tr in fig.data if "Infeasible Trial" in (tr.hovertemplate or "")]
    assert len(grey) == 1 and fig.data[0].type == "scatter3d"
    empty = optuna.create_study(directions=DIRECTIONS, study_name="empty",
                                storage=f"sqlite:///{tmp_path / 'plots.db'}")
    empty.set_metric_names(OBJECTIVE_NAMES["macs"])
    empty.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    written = write_plots(empty, tmp_path / "empty", push_to_dashboard=False)
    assert {p.stem for p in written} >= {"pareto_3d", "hypervolume_history"}
