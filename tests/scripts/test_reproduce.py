"""scripts/reproduce.py's bookkeeping (row keys, resume, tables, conversions, paper numbers) and one
real tiny row through ``run_trial`` on synthetic data."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from _repro import core, joint, masking, papers, report, runner  # noqa: E402

from searchprune.attacks import CheckBudget  # noqa: E402
from searchprune.config import (  # noqa: E402
    DataConfig,
    EvalConfig,
    ModelConfig,
    PruneConfig,
    ThreatModel,
    TrainConfig,
    TrialParams,
    load_study_config,  # noqa: E402
)
from searchprune.errors import ConfigError  # noqa: E402
from searchprune.search import validate_study  # noqa: E402
from searchprune.search.baselines import BASELINES, baseline_trials, list_baselines  # noqa: E402


def _setup(**data: object) -> core.Setup:
    base = core.Base("std", ModelConfig(arch="mnist_small"), TrainConfig(recipe="standard", epochs=1, lr=0.05,
                                                                         batch_size=64))
    return core.Setup(data=DataConfig(dataset="synthetic", val_size=0, **data),  # type: ignore[arg-type]
                      threat=ThreatModel(eps=0.02, alpha=0.01, steps=2),
                      eval=EvalConfig(n_eval=None, transfer=False, checks=False, stagewise=False),
                      bases={"std": base})


def _row(seed: int = 0, sparsity: float = 0.5, method: str = "magnitude 0.5") -> core.Row:
    return core.Row("009", "t", "std", method, "SFT", seed, TrialParams(prune=PruneConfig(sparsity=sparsity),
                                                                         seed=seed), x=sparsity, series="mag")


def test_row_key_names_the_cell_and_seed() -> None:
    r = _row(seed=3)
    assert r.key == "009/t/std/magnitude 0.5/SFT/seed3"
    assert r.cell == ("t", "std", "magnitude 0.5", "SFT")
    assert _row(seed=4).cell == r.cell and _row(seed=4).key != r.key


def test_fingerprint_follows_what_decides_the_numbers() -> None:
    s = _setup(train_size=100)
    assert core.row_fingerprint(_row(), s) == core.row_fingerprint(_row(), s)
    assert core.row_fingerprint(_row(sparsity=0.6), s) != core.row_fingerprint(_row(), s)
    assert core.row_fingerprint(_row(), _setup(train_size=200)) != core.row_fingerprint(_row(), s)


def test_resume_skips_finished_rows_and_refuses_other_settings(tmp_path: Path) -> None:
    s = _setup()
    rows = [_row(0), _row(1)]
    path = tmp_path / "results.jsonl"
    core.append_result(path, {"key": rows[0].key, "fingerprint": core.row_fingerprint(rows[0], s)})
    with path.open("a") as f:
        f.write('{"key": "truncated')  # a run killed while writing its last line
    done = core.load_results(path)
    assert list(done) == [rows[0].key]
    assert core.pending_rows(rows, s, done) == [rows[1]]
    with pytest.raises(ConfigError, match="other settings"):
        core.pending_rows(rows, _setup(train_size=50), done)


def _record(row: core.Row, clean: float, pgd: float, index: int = 0) -> dict:
    return {"key": row.key, "table": row.table, "base": row.base, "method": row.method, "finetune": row.finetune,
            "seed": row.seed, "x": row.x, "series": row.series, "index": index,
            "metrics": {"clean_acc": clean, "pgd_acc": pgd, "mac_ratio": 0.25, "transfer_acc": None}}


def test_aggregate_and_table_show_mean_spread_and_the_paper() -> None:
    cells = core.aggregate([_record(_row(0), 0.80, 0.40), _record(_row(1), 0.90, 0.50)],
                           ("clean_acc", "pgd_acc", "transfer_acc", "mac_ratio"))
    assert len(cells) == 1 and cells[0].n == 2
    assert cells[0].mean("clean_acc") == pytest.approx(0.85)
    assert core.format_mean_std(cells[0], "clean_acc") == "85.00 ± 7.07"
    assert core.format_mean_std(cells[0], "transfer_acc") == "-"  # not measured: no value
    refs = {("t", "*", "magnitude 0.5", "SFT"): core.Reference(84.0, 50.0, "test")}
    table = core.markdown_table(cells, refs)
    head, sep, line = table.splitlines()
    assert head.count("|") == sep.count("|") == line.count("|")
    cols = [c.strip() for c in line.strip("|").split("|")]
    assert cols[:5] == ["std", "magnitude 0.5", "SFT", "85.00 ± 7.07", "45.00 ± 7.07"]
    assert cols[5:9] == ["84.00", "50.00", "+1.00", "-5.00"]
    assert cols[-2:] == ["25%", "2"]


def test_paper_lookup_exact_before_any_base() -> None:
    cell = core.Cell("table3", "standard", "L1-filter 0.8", "AFT", 0.8, False)
    ref = core.lookup_reference(papers.REFS_001, cell)
    assert ref is not None and (ref.clean, ref.pgd) == (83.91, 76.74)
    assert core.lookup_reference(papers.REFS_001, dataclasses.replace(cell, base="other")) is None


def test_pixel_eps_converts_normalized_units() -> None:
    assert core.pixel_eps(8 / 255, [0.3530]) == pytest.approx(0.011074, abs=1e-6)
    assert core.pixel_eps(8 / 255, [0.247, 0.243, 0.261]) == pytest.approx(8 / 255 * 0.243)
    with pytest.raises(ConfigError):
        core.pixel_eps(0.1, [0.0])


def test_compression_sparsity_is_shrinkbench_formula() -> None:
    from searchprune.models import create_model

    m = create_model("mnist_small", num_classes=10, in_channels=1, image_size=(28, 28))
    total = sum(p.numel() for p in m.parameters())
    prunable = sum(mod.weight.numel() for n, mod in m.named_modules() if n in ("conv1", "conv2", "fc1"))
    for c in (2.0, 4.0, 8.0):
        want = 1 - (total / c - (total - prunable)) / prunable
        assert runner.compression_sparsity(m, c) == pytest.approx(want)


def test_match_mac_ratio_finds_the_sparsity() -> None:
    assert runner.match_mac_ratio(lambda s: (1 - s) ** 2, 0.25) == pytest.approx(0.5, abs=0.003)
    with pytest.raises(ValueError):
        runner.match_mac_ratio(lambda s: 0.9, 0.25)


def test_plan_001_uses_the_paper_threat_model_and_test_images() -> None:
    plan = papers.make_plan("001", quick=True, seeds=[0, 1])
    assert plan.setup.threat.clamp is False and plan.setup.threat.random_start is False
    assert plan.setup.data.val_size == 0
    keys = [r.key for r in plan.rows]
    assert len(keys) == len(set(keys))
    cells = {r.cell for r in plan.rows if r.table == "table3"}
    for b in ("standard", "pgd"):  # the control beside the compressed rows
        assert ("table3", b, "dense", "AFT") in cells
    aft = [r.params.finetune for r in plan.rows if r.finetune == "AFT" and r.table == "table3"]
    assert aft and all(f is not None and f.recipe == "pgd" and f.epochs == aft[0].epochs for f in aft)
    with pytest.raises(ConfigError, match="unknown paper"):
        papers.make_plan("777", quick=True, seeds=[0])


def test_one_real_row_through_run_trial_resumes(tmp_path: Path) -> None:
    setup = _setup(train_size=256, test_size=64, batch_size=64, eval_batch_size=64)
    base = dataclasses.replace(setup.bases["std"], train_size=256)
    setup = dataclasses.replace(setup, bases={"std": base})
    row = dataclasses.replace(_row(), params=dataclasses.replace(
        _row().params, finetune=TrainConfig(recipe="standard", epochs=0.5, lr=0.02, batch_size=64)))
    plan = papers.Plan("009", "tiny", setup, (row,), {}, (papers.TableSpec("t", "tiny table"),), ("a note",))
    out = tmp_path / "run"
    assert runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, log=lambda s: None) == 1
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["key"] == row.key and 0 <= rec["metrics"]["clean_acc"] <= 1
    assert rec["num_classes"] == 10  # what "at chance" is judged against in the report
    assert rec["metrics"]["n_eval"] == 64  # all test images, not a validation split
    assert rec["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, log=lambda s: None) == 0
    md = report.write_report(plan, out, command="python scripts/reproduce.py --paper 009", quick=True).read_text()
    assert "magnitude 0.5" in md and "complete" in md
    # the report names the machine the rows recorded, not the one writing it (a --report-only run)
    threads = torch.get_num_threads()
    assert rec["machine"].startswith(f"cpu, {threads} torch thread(s) of ")
    assert f"Machine: {rec['machine']}." in md
    torch.set_num_threads(threads + 1)
    try:
        assert f"Machine: {rec['machine']}." in report.write_report(plan, out, command="x", quick=True).read_text()
    finally:
        torch.set_num_threads(threads)
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.jsonl").write_text(json.dumps({k: v for k, v in rec.items() if k != "machine"}) + "\n")
    assert "1 row(s) from before rows recorded their machine" in report.write_report(
        plan, old, command="x", quick=True).read_text()
    dest = report.write_results_md([out], tmp_path / "docs" / "RESULTS.md")
    assert "| 009 | quick | 1 of 1 |" in dest.read_text()
    # the run is archived beside RESULTS.md, so the table can be rebuilt once runs/ is gone
    kept = tmp_path / "docs" / "results" / "run"
    assert (kept / "results.jsonl").read_text() == (out / "results.jsonl").read_text()
    import shutil
    shutil.rmtree(out)
    again = report.write_results_md([kept], tmp_path / "docs" / "RESULTS2.md")
    assert "| 009 | quick | 1 of 1 |" in again.read_text()


def test_a_base_trained_to_chance_is_refused_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base whose training ended at chance (a dead start) is kept aside and refused in one line, so no row
    measures a constant predictor and a rerun trains it again."""
    setup = _setup(train_size=64, test_size=32, batch_size=32, eval_batch_size=32)
    base = setup.bases["std"]

    def collapsed(model_cfg, train_cfg, splits, **kw):  # type: ignore[no-untyped-def]
        from searchprune.models import build_model
        return build_model(model_cfg, splits.info), {"model": {"arch": model_cfg.arch, "factory": None,
                                                               "kwargs": {}},
                                                     "dataset": {"name": "synthetic"},
                                                     "metrics": {"test_clean_acc": 0.1, "test_pgd_acc": 0.1}}

    monkeypatch.setattr(runner, "train_base_model", collapsed)
    path = tmp_path / "bases" / "std-x.pt"
    with pytest.raises(ConfigError, match=r"base 'std': training ended at chance \(test clean 0.1000"):
        runner.ensure_base(base, setup.data, setup.threat, path, device=torch.device("cpu"), log=lambda s: None)
    assert not path.exists() and (tmp_path / "bases" / "std-x.collapsed.pt").exists()


def test_saved_row_models_are_export_dirs_that_eval_remeasures(tmp_path: Path) -> None:
    from searchprune.search.export import evaluate_export

    setup = _setup(train_size=256, test_size=64, batch_size=64, eval_batch_size=64)
    rows = (_row(), dataclasses.replace(_row(), method="L1-filter 0.5", params=TrialParams(
        prune=PruneConfig(method="l1_filter", granularity="channel", sparsity=0.5), seed=0)))
    plan = papers.Plan("009", "tiny", setup, rows, {}, (papers.TableSpec("t", "tiny table"),), ())
    out, models = tmp_path / "run", tmp_path / "models"
    assert runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, log=lambda s: None,
                           save_models=models) == 2
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    dirs = sorted(models.iterdir())
    assert [d.name for d in dirs] == sorted(r["key"].replace("/", "__").replace(" ", "_") for r in recs)
    for rec in recs:
        d = models / rec["key"].replace("/", "__").replace(" ", "_")
        assert json.loads((d / "metadata.json").read_text())["row"] == rec["key"]
        got = evaluate_export(d, attacks=("pgd",), device="cpu")["measured"]
        # the same model on the same test images: the table's clean accuracy, to the image
        assert got["n"] == rec["metrics"]["n_eval"] == 64
        assert got["clean_acc"] == pytest.approx(rec["metrics"]["clean_acc"], abs=1e-9)


def test_masking_checks_of_saved_models_are_resumable_and_reported(tmp_path: Path) -> None:
    setup = _setup(train_size=256, test_size=64, batch_size=64, eval_batch_size=64)
    rows = (_row(), _row(method="magnitude 0.7", sparsity=0.7))
    plan = papers.Plan("009", "tiny", setup, rows, {}, (papers.TableSpec("t", "tiny table"),), ())
    out, models = tmp_path / "run", tmp_path / "models"
    with pytest.raises(ConfigError, match="holds no saved row model"):
        masking.check_saved_models(models, out, budget=CheckBudget(n_images=8), log=lambda s: None)
    runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, log=lambda s: None, save_models=models)
    budget = CheckBudget(n_images=16, apgd_steps=3, square_queries=10)
    only = ["*magnitude 0.7*"]
    assert masking.check_saved_models(models, out, budget=budget, only=only, command="c", log=lambda s: None) == 1
    assert masking.check_saved_models(models, out, budget=budget, log=lambda s: None) == 1  # only the other one
    assert masking.check_saved_models(models, out, budget=budget, log=lambda s: None) == 0  # both done
    recs = [json.loads(line) for line in (out / masking.MASKING_FILE).read_text().splitlines()]
    assert sorted(r["row"] for r in recs) == sorted(r.key for r in rows)
    for r in recs:
        m = r["report"]
        assert m["n_images"] == 16 and r["threat"]["eps"] == pytest.approx(0.02)
        # an image counted robust by every attack is robust to each: the worst case bounds them all
        assert m["worst_acc"] <= min(m["pgd_subset_acc"], m["pgd_more_acc"], m["apgd_acc"], m["square_acc"])
        assert m["pgd_subset_acc"] <= m["clean_acc"]
    md = report.write_report(plan, out, command="x", quick=True).read_text()
    table = [line for line in md.splitlines() if line.startswith("| 009/t/std/")]
    assert [line.split(" | ")[0][2:] for line in table] == [r.key for r in rows]  # the plan's order
    assert "Gradient-masking checks" in md and "`c`" in md
    assert (report.archive_run(out, tmp_path / "archive") / masking.MASKING_FILE).exists()


def test_report_lists_cells_in_plan_order_not_run_order(tmp_path: Path) -> None:
    """A row added to a plan after others ran (recorded later, with a stale index) sits where the plan puts it."""
    first, added, last = _row(method="magnitude 0.5"), _row(method="magnitude 0.6"), _row(method="magnitude 0.7")
    plan = papers.Plan("009", "tiny", _setup(), (first, added, last), {}, (papers.TableSpec("t", "tiny table"),), ())
    out = tmp_path / "run"
    for i, row in enumerate((first, last, added)):  # the run order: "added" came last, with index 2
        core.append_result(out / "results.jsonl", {**_record(row, 0.8, 0.4, index=i), "seconds": 1.0})
    md = report.write_report(plan, out, command="x", quick=True).read_text()
    rows = [line for line in md.splitlines() if line.startswith("| std | magnitude")]
    assert [r.split(" | ")[1] for r in rows] == ["magnitude 0.5", "magnitude 0.6", "magnitude 0.7"]


def test_results_md_opens_with_the_targets_counted_from_each_summary(tmp_path: Path) -> None:
    def run(name: str, summary: dict[str, object], seeds: tuple[int, ...] = ()) -> Path:
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "REPORT.md").write_text(f"## {name}\n")
        (d / "summary.json").write_text(json.dumps(summary))
        for s in seeds:
            core.append_result(d / "results.jsonl", {"key": f"{name}/t/b/m/r/seed{s}", "seed": s})
        return d

    def t(claim: str, met: bool | None) -> dict[str, object]:
        return {"claim": claim, "met": met, "detail": f"{claim} measured"}

    full = run("007", {"paper": "007", "quick": False, "rows": 9, "done": 4,
                       "targets": [t("a", True), t("b", False), t("c", None), t("d", False)]}, seeds=(0, 1, 1))
    quick = run("007-quick", {"paper": "007", "quick": True, "rows": 3, "done": 3, "targets": [t("q", False)]})
    joint = run("joint", {"paper": "joint", "quick": True, "rows": 16, "done": 10,
                          "finding": "searched trials dominate 1 of 8 recipes on test images"})
    md = report.write_results_md([full, quick, joint], tmp_path / "docs" / "RESULTS.md").read_text()
    glance = md.split("## Targets at a glance", 1)[1].split("## What was run", 1)[0]
    assert "| 007 | full | 4 of 9 | 2 | 1 / 2 / 1 |" in glance
    assert "| 007 | quick | 3 of 3 | - | 0 / 1 / 0 |" in glance  # no row file kept: seeds unknown
    assert "| joint | quick | 10 of 16 | - | searched trials dominate 1 of 8 recipes on test images |" in glance
    # a second seed for some cells only: the column says so instead of counting the seeds seen anywhere
    core.append_result(full / "results.jsonl", {"key": "007/t/b/other/r/seed0", "seed": 0})
    assert "| 007 | full | 4 of 9 | 1-2 | 1 / 2 / 1 |" in "\n".join(report.glance([full]))
    # every target missed at full settings is listed with its detail; quick misses are not
    assert "- 007: b (b measured)" in glance and "- 007: d (d measured)" in glance and "q measured" not in glance
    assert md.index("## Targets at a glance") < md.index("## What was run")


def test_mrpf_baseline_is_structured_and_fits_the_joint_study() -> None:
    b = BASELINES.get("mrpf")
    assert (b.granularity, b.allocation, b.recipe) == ("channel", "mrs", "trades")
    cfg = load_study_config(ROOT / "studies" / "fmnist_full.yaml")
    trials = [t for t in baseline_trials(cfg) if t.get("prune.allocation@scored") == "mrs"]
    assert trials and all(t["prune.granularity@scored"] == "channel" for t in trials)


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_validates(path: Path) -> None:
    validate_study(load_study_config(path))  # raises ConfigError on an impossible trial or baseline


def test_dominates_needs_one_strict_improvement() -> None:
    a = {"clean_acc": 0.8, "pgd_acc": 0.5, "macs": 10.0}
    assert core.dominates(a, {**a, "macs": 11.0})
    assert not core.dominates(a, a)
    assert not core.dominates(a, {**a, "pgd_acc": 0.6, "macs": 5.0})


def test_joint_config_enqueues_every_recipe_it_has(tmp_path: Path) -> None:
    cfg, missing = joint.joint_config(tmp_path, quick=True)
    names = {b.partition("@")[0] for b in cfg.baselines}
    assert names == set(joint.RECIPES) - set(missing)
    assert set(missing) == set(joint.RECIPES) - set(list_baselines())
    assert cfg.data.test_size == 500 and cfg.n_trials > len(cfg.baselines)


def test_plot_needs_two_points_of_a_series(tmp_path: Path) -> None:
    plan = papers.make_plan("001", quick=True, seeds=[0])
    one = core.Cell("sweep", "standard", "L1-filter 0.5", "AFT", 0.5, False, {"clean_acc": (0.8,), "pgd_acc": (0.7,)},
                    series="standard base, L1-filter + AFT")
    assert report.plot_plan(plan, [one], tmp_path / "a.png") is None
    two = dataclasses.replace(one, method="L1-filter 0.9", x=0.9)
    path = report.plot_plan(plan, [one, two], tmp_path / "b.png")
    assert path is not None and path.stat().st_size > 1000


def test_mac_ratio_prunes_channels_of_a_real_context(tmp_path: Path) -> None:
    """Rows matched to a MAC ratio (002's L1-filter comparison) prune the base through the context's cache."""
    from searchprune.data import make_splits
    from searchprune.models import build_model

    setup = _setup(train_size=128, test_size=64, batch_size=64, eval_batch_size=64)
    model = build_model(ModelConfig(arch="mnist_small"), make_splits(setup.data).info)
    meta = {"model": {"arch": "mnist_small"}, "dataset": {"name": "synthetic"}}
    ctx = runner.make_context(setup, model, meta, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    cfg = PruneConfig(method="l1_filter", granularity="channel", allocation="uniform", sparsity=0.5)
    assert runner.mac_ratio(ctx, cfg) < 0.5  # half the channels of every conv: about a quarter of the MACs
    s = runner.match_mac_ratio(lambda s: runner.mac_ratio(ctx, dataclasses.replace(cfg, sparsity=s)), 0.5, tol=0.05)
    assert 0 < s < 0.5


def test_a_row_at_chance_is_named_in_its_cell_and_the_report(tmp_path: Path) -> None:
    """One seed of two at chance is averaged into its cell, so the table marks the cell and the report names
    the row; chance follows the row's recorded class count (0.10 with 100 classes is a live model)."""
    dead, alive, other, unattacked = _row(0), _row(1), _row(0, method="magnitude 0.6"), _row(1, method="magnitude 0.6")
    recs = [_record(dead, 0.10, 0.10), _record(alive, 0.85, 0.40),
            {**_record(other, 0.10, 0.05, index=1), "num_classes": 100},
            {**_record(unattacked, 0.01, 0.0, index=1), "metrics": {"clean_acc": 0.01, "pgd_acc": None},
             "num_classes": 100}]
    cells = core.aggregate(recs, ("clean_acc", "pgd_acc", "mac_ratio"))
    assert [c.collapsed for c in cells] == [(0,), (1,)]
    assert core.collapsed_text(cells[0]) == "seed 0 of 2 at chance"
    assert core.collapsed_text(core.Cell("t", "std", "m", "SFT", x=None, control=False)) == ""
    line = core.markdown_table(cells, {}).splitlines()[2]
    assert line.split(" | ")[1] == "magnitude 0.5 (seed 0 of 2 at chance)"
    plan = papers.Plan("009", "tiny", _setup(), (dead, alive, other, unattacked), {},
                       (papers.TableSpec("t", "tiny table"),), ())
    out = tmp_path / "run"
    for r in recs:
        core.append_result(out / "results.jsonl", {**r, "seconds": 1.0})
    md = report.write_report(plan, out, command="x", quick=True).read_text()
    section = md.split("### Rows at chance", 1)[1]
    assert f"- `{dead.key}`: clean 10.00, PGD 10.00 with 10 classes" in section
    assert f"- `{unattacked.key}`: clean 1.00, PGD - with 100 classes" in section  # PGD not measured
    assert alive.key not in section and other.key not in section


def test_002_does_not_call_a_mac_ratio_met_by_models_at_chance_a_success() -> None:
    plan = papers.make_plan("002", quick=True, seeds=[0, 1])
    rows = [r for r in plan.rows if r.method == "in-train scratch fixed @0.3"]
    assert [r.seed for r in rows] == [0, 1]

    def target(clean: tuple[float, float]) -> core.Target:
        recs = [{**_record(r, c, c, index=0), "metrics": {"clean_acc": c, "pgd_acc": c, "mac_ratio": 0.295}}
                for r, c in zip(rows, clean, strict=True)]
        cells = core.aggregate(recs, ("clean_acc", "pgd_acc", "mac_ratio"))
        (t,) = [t for t in plan.targets(cells) if t.claim.startswith("in-train scratch fixed @0.3: achieved MAC")]
        return t

    assert target((0.88, 0.89)).met is True and "chance" not in target((0.88, 0.89)).detail
    one = target((0.10, 0.89))
    assert one.met is True and "seed 0 of 2 at chance: a constant predictor meets any MAC ratio" in one.detail
    both = target((0.10, 0.10))
    assert both.met is None and "seeds 0, 1 of 2 at chance" in both.detail


def test_a_tie_of_collapsed_models_decides_no_target() -> None:
    """HYDRA and LWM both at chance are not "HYDRA >= LWM: met"; one alive model is compared as usual,
    against LWM and against the equal-epoch LWM control alike."""
    plan = papers.make_plan("003", quick=True, seeds=[0])
    assert {r.method for r in plan.rows} >= {"LWM 0.9 (4 ep)", "LWM 0.99 (4 ep)"}

    def cells(hydra_clean: float) -> list[core.Cell]:
        recs = []
        for i, row in enumerate(r for r in plan.rows if r.method != "dense"):
            alive = row.method.startswith("HYDRA") and hydra_clean > 0.5
            recs.append(_record(row, hydra_clean if alive else 0.10, 0.40 if alive else 0.10, index=i))
        return core.aggregate(recs, ("clean_acc", "pgd_acc", "transfer_acc", "mac_ratio"))

    collapsed = plan.targets(cells(0.10))
    assert [t.met for t in collapsed] == [None] * 7  # (vs LWM, vs LWM at equal epochs) x 3 + the gap's growth
    assert "at chance" in collapsed[0].detail
    alive = plan.targets(cells(0.80))
    assert [t.met for t in alive][:6] == [True] * 6
    assert alive[1].claim == "90%: HYDRA >= LWM (4 ep) in PGD accuracy"


def test_000_decides_an_ordering_only_where_unrun_methods_cannot_change_it() -> None:
    """With a method still to run at a compression, "GAP has the highest transfer accuracy" is missed
    once every GAP variant has finished behind a finished baseline, met once every baseline has
    finished behind GAP, and not decided otherwise; likewise "GAP's PGD stays low" with a GAP variant
    still to run."""
    plan = papers.make_plan("000", quick=True, seeds=[0])
    x2 = [r for r in plan.rows if r.table == "fp32" and r.x == 2.0 and r.seed == 0]
    assert {r.series for r in x2} == set(papers.GAP_METHODS)

    def judge(transfer: dict[str, float], pgd: float = 0.10) -> dict[str, core.Target]:
        recs = []
        for i, row in enumerate(r for r in x2 if r.series in transfer):
            rec = _record(row, 0.85, pgd if row.series in papers.GAP_LABELS else 0.05, index=i)
            rec["metrics"]["transfer_acc"] = transfer[row.series]
            recs.append(rec)
        cells = core.aggregate(recs, ("clean_acc", "pgd_acc", "transfer_acc", "mac_ratio"))
        return {t.claim.split(": ", 1)[1]: t for t in plan.targets(cells) if t.claim.startswith("fp32, x2:")}

    best, low = "a GAP variant has the highest transfer accuracy", "GAP's white-box PGD accuracy stays low (< 30%)"
    every = dict.fromkeys(papers.GAP_METHODS, 0.50)
    assert judge({**every, "GAP global (signed)": 0.60})[best].met is True
    leads_without_random = judge({k: v for k, v in {**every, "GAP global (signed)": 0.60}.items() if k != "random"})
    assert leads_without_random[best].met is None and "not run yet: random" in leads_without_random[best].detail
    trails = judge({k: v for k, v in {**every, "layer gradient": 0.70}.items() if k != "random"})
    assert trails[best].met is False
    trails_one_gap = judge({k: v for k, v in {**every, "layer gradient": 0.70}.items() if k != "GAP layerwise (abs)"})
    assert trails_one_gap[best].met is None and "not run yet: GAP layerwise (abs)" in trails_one_gap[best].detail
    leads_one_gap = judge({k: v for k, v in {**every, "GAP global (signed)": 0.60}.items()
                           if k != "GAP layerwise (abs)"})
    assert leads_one_gap[best].met is True
    one_gap = {k: v for k, v in every.items() if k != "GAP layerwise (abs)"}
    assert judge(one_gap, pgd=0.10)[low].met is None and "GAP layerwise (abs)" in judge(one_gap)[low].detail
    assert judge(one_gap, pgd=0.50)[low].met is False
    assert judge(every, pgd=0.10)[low].met is True


def test_004_spread_across_criteria_waits_for_the_criteria_still_to_run() -> None:
    """Two of four criteria within 3 pp decide nothing (the others can only widen the spread); two
    already 5 pp apart miss; all four within 3 pp meet."""
    plan = papers.make_plan("004", quick=True, seeds=[0])
    mrs = [r for r in plan.rows if r.table == "mrpf" and r.method.split(" ")[1:2] == ["MRS"]]
    assert {r.method.split(" ")[0] for r in mrs} == set(papers.MRPF_CRITERIA)

    def spread(pgd: dict[str, float]) -> core.Target:
        recs = [_record(r, 0.85, pgd[r.method.split(" ")[0]], index=i)
                for i, r in enumerate(r for r in mrs if r.method.split(" ")[0] in pgd)]
        cells = core.aggregate(recs, ("clean_acc", "pgd_acc", "transfer_acc", "mac_ratio"))
        (t,) = [t for t in plan.targets(cells) if "spread" in t.claim and "MRS rows" in t.claim]
        return t

    partial = spread({"random": 0.70, "magnitude": 0.71})
    assert partial.met is None and "not run yet: hessian, taylor" in partial.detail
    assert spread({"random": 0.70, "magnitude": 0.75}).met is False
    assert spread({"random": 0.70, "magnitude": 0.71, "taylor": 0.72, "hessian": 0.695}).met is True


def test_001_judges_the_robust_bases_table3_cells_within_2_pp() -> None:
    """Every Table-3 cell of the robust base is a target of its own, met within 2 pp in both metrics,
    missed beyond, "not run yet" without a row; the claim names the base's short training."""
    plan = papers.make_plan("001", quick=False, seeds=[0])
    rows = {(r.table, r.base, r.method, r.finetune): r for r in plan.rows}
    near = rows[("table3", "pgd", "L1-filter 0.8", "AFT")]  # paper 84.53 / 78.84
    far = rows[("table3", "pgd", "INT8", "SFT")]  # paper 89.54 / 25.66
    cells = core.aggregate([_record(near, 0.8553, 0.7704, index=0), _record(far, 0.8964, 0.2266, index=1)],
                           ("clean_acc", "pgd_acc", "transfer_acc", "mac_ratio"))
    robust = {t.claim: t for t in plan.targets(cells) if t.claim.startswith("robust base")}
    refs = [k for k in papers.REFS_001 if k[:2] == ("table3", "pgd")]
    assert len(robust) == len(refs) == 7
    epochs = "robust base (2 of the paper's 20 training epochs)"
    met = robust[f"{epochs}, L1-filter 0.8 / AFT within 2 pp of 84.53 / 78.84"]
    assert met.met is True and "+1.00 / -1.80" in met.detail
    missed = robust[f"{epochs}, INT8 / SFT within 2 pp of 89.54 / 25.66"]
    assert missed.met is False and "+0.10 / -3.00" in missed.detail  # clean within, PGD 3 pp off
    rest = [t for t in robust.values() if t not in (met, missed)]
    assert [t.met for t in rest] == [None] * 5 and all(t.detail == "not run yet" for t in rest)


def test_only_runs_the_matching_rows_and_rejects_a_pattern_matching_none(tmp_path: Path) -> None:
    setup = _setup(train_size=128, test_size=32, batch_size=32, eval_batch_size=32)
    setup = dataclasses.replace(setup, bases={"std": dataclasses.replace(setup.bases["std"], train_size=128)})
    first = _row()
    second = dataclasses.replace(first, seed=1, params=dataclasses.replace(first.params, seed=1))
    plan = papers.Plan("009", "tiny", setup, (first, second), {}, (papers.TableSpec("t", "tiny table"),), ())
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="matches no row"):
        runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, only=["009/nothing*"], log=lambda s: None)
    assert runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, only=["*/seed1"],
                           log=lambda s: None) == 1
    done = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert done == [second.key]
    # the pattern matches a finished row only: nothing to run, no error
    assert runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, only=["*/seed1"],
                           log=lambda s: None) == 0
    assert runner.run_rows(plan, out, bases_dir=tmp_path / "bases", quick=True, log=lambda s: None) == 1


def test_joint_replays_the_front_and_baselines_on_test_images(tmp_path: Path) -> None:
    """The joint mode's post-search path on a tiny study: every baseline and validation-front trial is
    replayed on the test split (all its images), resumably, and the report decides dominance there."""
    import optuna
    from _tiny import tiny_study_config

    from searchprune.search import create_study, optimize

    cfg = tiny_study_config(tmp_path, tmp_path / "base.pt", name="joint_tiny", n_trials=3, baselines=["dense"],
                            storage=f"sqlite:///{tmp_path / 'j.db'}")
    create_study(cfg)
    assert cfg.storage is not None
    study = optimize(cfg.name, cfg.storage, n_trials=3, quiet=True, progress=False)
    out = tmp_path / "joint"
    out.mkdir()
    assert joint.replay_on_test(cfg, study, out) == 3
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    front = {t.number for t in study.best_trials}
    assert {r["trial"] for r in recs} == front | {0}  # trial 0 is the enqueued baseline
    assert all(r["metrics"]["n_eval"] == cfg.data.test_size for r in recs)  # test images, every one
    assert joint.replay_on_test(cfg, study, out) == 3
    assert len((out / "results.jsonl").read_text().splitlines()) == len(recs)  # nothing replayed twice
    states = joint.trial_states(study)
    assert sum(states.values()) == 3 and states["complete"] == len(study.get_trials(states=(
        optuna.trial.TrialState.COMPLETE,)))
    md = joint.write_joint_report(out, cfg, [], states=states, command="cmd", quick=True, seeds=1).read_text()
    assert "recipes on test images" in md and "| 0 | dense |" in md
    assert f"3 of 3 trials ended ({states['complete']} complete, {states['pruned']} pruned early by MO-ASHA" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 3 and summary["states"] == states
    assert f"| joint | quick | 3 of 3 ({states['complete']} complete" in "\n".join(report.glance([out]))
    assert f"{states['failed']} failed) | 1 | " in "\n".join(report.glance([out]))  # one search seed

    # a baseline the search pruned (studies made before baselines were exempt from MO-ASHA) is replayed too
    import copy
    from types import SimpleNamespace

    trials = copy.deepcopy(study.get_trials())
    trials[0].state, trials[0].values = optuna.trial.TrialState.PRUNED, None
    pruned_study = SimpleNamespace(get_trials=lambda deepcopy=False: trials,
                                   best_trials=[t for t in study.best_trials if t.number != 0])
    out2 = tmp_path / "joint2"
    out2.mkdir()
    assert joint.replay_on_test(cfg, pruned_study, out2) == 2  # type: ignore[arg-type]
    recs2 = {r["trial"]: r for r in map(json.loads, (out2 / "results.jsonl").read_text().splitlines())}
    assert 0 in recs2 and recs2[0]["pruned_in_search"] is True and recs2[0]["val"] is None
    first = next(r for r in recs if r["trial"] == 0)["metrics"]
    assert {k: v for k, v in recs2[0]["metrics"].items() if k != "time_s"} == {
        k: v for k, v in first.items() if k != "time_s"}  # the same replay
    md2 = joint.write_joint_report(out2, cfg, [], states={"complete": 2, "pruned": 1, "failed": 0}, command="cmd",
                                   quick=True, seeds=1).read_text()
    assert "| 0 | dense |" in md2 and "pruned in search" in md2
    # only recipes replayed (every searched trial pruned): the report says the claim is undecided
    out3 = tmp_path / "joint3"
    out3.mkdir()
    (out3 / "results.jsonl").write_text(json.dumps(recs2[0]) + "\n")
    md3 = joint.write_joint_report(out3, cfg, [], states={"complete": 1, "pruned": 2, "failed": 0}, command="cmd",
                                   quick=True, seeds=1).read_text()
    assert "**Undecided**" in md3 and "0 of 1 recipes" in md3 and "1 complete, 2 pruned early" in md3


def test_plan_004_pairs_both_mrs_maps_with_uniform_and_matches_macs_with_the_map(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = papers.make_plan("004", quick=True, seeds=[0])
    by_method = {r.method: r for r in plan.rows}
    for crit in papers.MRPF_CRITERIA:
        inv, lin, uni = (by_method[f"{crit} {label} @0.5"] for label in ("MRS", "MRS-lin", "uniform"))
        assert inv.params.prune.allocation == lin.params.prune.allocation == "mrs"
        assert lin.params.prune.options["mrs_map"] == "linear" and "mrs_map" not in inv.params.prune.options
        assert uni.params.prune.allocation == "uniform"
    # the MAC-matching probe prunes with the row's own map (else MRS-lin rows would get MRS's sparsity)
    seen: list[PruneConfig] = []
    monkeypatch.setattr(runner, "mac_ratio", lambda ctx, cfg, seed=0: seen.append(cfg) or (1 - cfg.sparsity))
    lin = by_method["taylor MRS-lin @0.5"]
    resolved = runner.resolve_row(lin, None, 0.5)  # type: ignore[arg-type]
    assert seen and all(c.options.get("mrs_map") == "linear" and c.method == "magnitude" for c in seen)
    assert resolved.params.prune.sparsity == pytest.approx(0.5, abs=0.01)
    assert resolved.params.prune.options == lin.params.prune.options


@pytest.mark.parametrize("extra, message", [
    (["--n-check", "0"], "--n-check: expected >= 1, got 0"),
    (["--square-queries", "-1"], "--square-queries: expected >= 1, got -1"),
    ([], "holds no saved row model"),
])
def test_check_masking_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     extra: list[str], message: str) -> None:
    import reproduce

    argv = ["--paper", "000", "--out", str(tmp_path / "run"), "--check-masking", str(tmp_path / "none"), *extra]
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "masking.jsonl").exists()


def _fake_rows(monkeypatch: pytest.MonkeyPatch, before_row: Callable[[Path], object] = lambda out: None,
               rows: int = 1) -> list[str]:
    """reproduce.main with rows that run nothing (``before_row`` first, then on_row per row); returns the
    command each report was written with."""
    import reproduce

    reports: list[str] = []

    def fake_rows(plan: object, out_: Path, *, on_row: Callable[[], object], **kw: object) -> int:
        for _ in range(rows):
            before_row(out_)
            on_row()
        return rows

    monkeypatch.setattr(reproduce, "run_rows", fake_rows)
    monkeypatch.setattr(reproduce, "write_report", lambda plan, out_, *, command, quick: reports.append(command)
                        or out_ / "REPORT.md")
    return reports


def test_runs_sharing_a_directory_keep_each_others_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs into one directory (e.g. two --only parts side by side) both stay in command.txt: a run
    re-reads the file when it records itself, instead of writing back the list it read at its start."""
    import reproduce

    out = tmp_path / "run"
    other = "python scripts/reproduce.py --paper 001 --only 'the other part'"

    def other_run_finishes_a_row(out_: Path) -> None:
        with open(out_ / "command.txt", "a") as f:
            f.write(other + "\n")

    reports = _fake_rows(monkeypatch, other_run_finishes_a_row)
    assert reproduce.main(["--paper", "001", "--quick", "--out", str(out), "--only", "001/x"]) == 0
    lines = (out / "command.txt").read_text().splitlines()
    assert lines[0] == other and len(lines) == 2 and "--only 001/x" in lines[1]
    assert reports[-1].splitlines() == lines


def test_a_fresh_directory_records_the_command_that_ran_its_rows(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run into a new directory writes command.txt, so a later --report-only names the run's
    command, not its own (a fresh --quick run left no command.txt and its report named --report-only)."""
    import reproduce

    out = tmp_path / "run"
    reports = _fake_rows(monkeypatch, rows=2)
    assert reproduce.main(["--paper", "001", "--quick", "--out", str(out), "--threads", "1"]) == 0
    ran = "python scripts/reproduce.py --paper 001 --quick --out " + str(out) + " --threads 1"
    assert (out / "command.txt").read_text().splitlines() == [ran]
    assert reproduce.main(["--paper", "001", "--quick", "--out", str(out), "--report-only"]) == 0
    assert reports[-1] == ran
