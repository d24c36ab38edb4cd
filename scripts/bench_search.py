"""Benchmark the search at equal compute: hypervolume vs CPU seconds for random search, TPE and
NSGA-II without successive halving against TPE and random search with MO-ASHA; the seed papers'
recipes (baselines) as reference points; trials per hour with one and two workers on PostgreSQL.

Every study is Fashion-MNIST CNN-8 with the search space of ``studies/fmnist_full.yaml`` (every
move the library has, so each seed recipe is a point of the space), the same base checkpoint
``runs/base/cnn8_fmnist_standard.pt`` (trained here with the config's recipe when missing), and a
cheaper per-trial measurement: a training subset, fewer validation images and a PGD with fewer
steps (eps unchanged).

Equal compute: each arm (sampler x successive halving) and seed runs trials until the CPU seconds
its trials used (``cpu_s``, recorded by the objective for complete, pruned and failed trials alike)
reach ``--budget-s``; the comparison then cuts every study at exactly that budget (a trial that
would cross it does not count) and reports:

* ``hv_vs_compute.png``: hypervolume of the feasible front vs cumulative trial CPU seconds (mean over
  seeds, min-max band);
* a table: final hypervolume at the budget, mean +- std over seeds, on validation and re-measured on
  held-out *test* images for the final fronts (their checkpoints, ``--n-test`` images, the study's
  PGD); the compute each arm needs to reach random search's final hypervolume, and the targets
  (successive halving reaches it in at most half the compute; beats it by >= 1.2x at equal compute).

Hypervolume: of the feasible Pareto front in (clean acc, PGD acc, MACs / dense MACs), reference
point (0, 0, 1), the same as ``searchprune study show``.

Outputs in ``--out`` (default ``runs/bench_search``): ``hv_vs_compute.png``, ``pareto.png``,
``results.md``, ``results.json`` (everything, including the curves).

    python scripts/bench_search.py --quick          # 1 seed, 30 CPU-s per arm, mnist_small: < 20 min on 2 cores
    python scripts/bench_search.py --budget-s 900 --seeds 0 1 2   # the full comparison

Studies are resumed (each its own SQLite file; a study continues until its budget is spent), test
measurements are kept in ``results.json``, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from searchprune.config import StudyConfig, build, load_study_config, to_dict  # noqa: E402
from searchprune.search import (  # noqa: E402
    baseline_trials,
    create_study,
    ensure_base_model,
    make_storage,
    optimize,
    reports,
)

# (label, sampler, successive halving, per-layer allocation or None): the equal-compute arms. The last two
# compare per-layer allocations a sampler can search (opt in with --arms): one ratio per layer against
# the 2-number skewed schedule, both on the score-based methods (those that take every allocation).
ARMS: tuple[tuple[str, str, bool, str | None], ...] = (
    ("random", "random", False, None), ("tpe", "tpe", False, None), ("nsga2", "nsga2", False, None),
    ("tpe+asha", "tpe", True, None), ("random+asha", "random", True, None),
    ("tpe+asha/per_layer", "tpe", True, "per_layer"), ("tpe+asha/skewed", "tpe", True, "skewed"))
DEFAULT_ARMS = ("random", "tpe", "nsga2", "tpe+asha", "random+asha")
SCORED_METHODS = ["magnitude", "random", "gradient", "taylor", "hessian", "gap"]
FULL_BASELINES = ("dense", "shrinkbench@0.5", "shrinkbench@0.8", "adver_fine@0.5", "hydra@0.8", "mrpf@0.8",
                  "gap@0.8", "in_train@0.5")
QUICK_BASELINES = ("dense", "shrinkbench@0.8")
PRUNER_FULL = {"name": "mo_asha", "min_epochs": 0.25, "eta": 3, "max_epochs": 3, "rung_n_eval": 128,
               "rung_pgd_steps": 2, "floors": {"clean_acc": 0.5}}
PRUNER_QUICK = {**PRUNER_FULL, "rung_n_eval": 64}


# ---- configs --------------------------------------------------------------------------------


def bench_config(base_cfg: StudyConfig, *, name: str, out: Path, quick: bool, n_trials: int,
                 sampler: dict[str, Any], pgd_steps: int, baselines: Sequence[str] = (),
                 space: dict[str, Any] | None = None, asha: bool = False,
                 allocation: str | None = None) -> StudyConfig:
    """The study with a cheap measurement, the given sampler and budget, outputs in ``out``; with ``asha``
    MO-ASHA over fine-tuning rungs (cheaper rung measurements), else every trial runs in full."""
    raw = to_dict(base_cfg)
    raw.update(name=name, output_dir=str(out / "studies" / "{name}"), n_trials=n_trials, sampler=sampler,
               baselines=list(baselines), storage=None)
    raw["pruner"] = (PRUNER_QUICK if quick else PRUNER_FULL) if asha else {"name": "none"}
    raw["model"]["checkpoint"] = str(_base_path(base_cfg))
    # a training subset; the validation split stays the study's (carved apart from the base model's data)
    raw["data"].update(train_size=512 if quick else 2000)
    raw["eval"].update(n_eval=100 if quick else 250, n_stage_eval=64, transfer=False, checks=False,
                       stagewise=False)
    eps = raw["threat"]["eps"]
    raw["threat"].update(steps=pgd_steps, alpha=round(2.5 * eps / pgd_steps, 6))  # Madry's 2.5 eps / steps
    if space is not None:
        raw["space"] = space
    if allocation is not None:  # one per-layer parameterization, on the methods that take every allocation
        raw["space"] = allocation_space(raw["space"], allocation)
    return build(StudyConfig, raw)


def allocation_space(space: dict[str, Any], allocation: str) -> dict[str, Any]:
    """``space`` with the score-based methods only and their allocation pinned to ``allocation``."""
    out = dict(space)
    out["prune.method"] = {"choices": SCORED_METHODS}
    key = "prune.allocation@scored"
    if key not in out:
        raise SystemExit(f"bench: the space has no {key} to pin to {allocation!r}")
    out[key] = {"value": allocation, "when": out[key].get("when", {})}
    def reachable(v: Any) -> bool:  # a parameter only other methods have is dropped
        methods = v.get("when", {}).get("prune.method") if isinstance(v, dict) else None
        return methods is None or any(m in SCORED_METHODS for m in methods)

    return {k: v for k, v in out.items() if reachable(v)}


def small_model_config(cfg: StudyConfig) -> StudyConfig:
    """The study on ``mnist_small`` with a base model of its own, 150 batches of training (``--small-model``,
    ``--quick``)."""
    raw = to_dict(cfg)
    train = {**(raw["model"].get("train") or {}), "epochs": 1, "max_batches": 150}  # 19200 images, ~80% clean
    raw["model"] = {**raw["model"], "arch": "mnist_small", "train": train,
                    "checkpoint": "runs/base/mnist_small_fmnist_quick.pt"}
    return build(StudyConfig, raw)


def _base_path(cfg: StudyConfig) -> Path:
    p = Path(cfg.model.checkpoint or "runs/base/cnn8_fmnist_standard.pt")
    return p if p.is_absolute() else ROOT / p


def baseline_space(cfg: StudyConfig) -> dict[str, Any]:
    """A space in which every seed recipe is expressible. The baselines study runs only its enqueued
    trials, so the width costs nothing; fine-tuning epochs and learning rate stay at the defaults."""
    sparsity = to_dict(cfg.space).get("prune.sparsity", {"low": 0.3, "high": 0.95})
    scored = ["magnitude", "gradient", "taylor", "gap"]
    return {  # each method only with what it takes (validate_study refuses impossible combinations)
        "prune.method": ["magnitude", "gradient", "taylor", "l1_filter", "gap", "hydra", "in_train"],
        "prune.granularity@scored": {"choices": ["weight", "channel"], "when": {"prune.method": [*scored, "in_train"]}},
        "prune.granularity@filter": {"value": "channel", "when": {"prune.method": ["l1_filter"]}},
        "prune.granularity@hydra": {"value": "weight", "when": {"prune.method": ["hydra"]}},
        "prune.allocation@scored": {"choices": ["global", "uniform", "mrs"],
                                    "when": {"prune.method": [*scored, "l1_filter"]}},
        "prune.allocation@learned": {"value": "learned", "when": {"prune.method": ["hydra", "in_train"]}},
        "prune.sparsity": sparsity,
        "finetune.recipe": ["none", "standard", "fast", "pgd", "trades"],
        "quant.mode": ["none"],
    }


# ---- hypervolume ------------------------------------------------------------------------------


def _feasible(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())


def hypervolume(trials: Sequence[FrozenTrial], dense_macs: float) -> float:
    """Hypervolume of the feasible points in (-clean, -robust, macs / dense) w.r.t. (0, 0, 1)."""
    pts = [[-t.values[0], -t.values[1], t.values[2] / dense_macs] for t in trials if _feasible(t)]
    pts = [p for p in pts if p[2] < 1.0]  # at or beyond the reference: no volume
    return reports.hypervolume(pts, [0.0, 0.0, 1.0])


def hv_curve(trials: Sequence[FrozenTrial], dense_macs: float) -> list[float]:
    """Hypervolume after each finished trial, in trial order (pruned/failed trials repeat the last value)."""
    done = sorted((t for t in trials if t.state.is_finished()), key=lambda t: t.number)
    return [hypervolume(done[: k + 1], dense_macs) for k in range(len(done))]


def trial_cpu_s(t: FrozenTrial) -> float:
    """CPU seconds a finished trial used (``cpu_s``; wall seconds for trials recorded without it)."""
    if "cpu_s" in t.user_attrs:
        return float(t.user_attrs["cpu_s"])
    if t.datetime_start is not None and t.datetime_complete is not None:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return 0.0


def cut_at_budget(trials: Sequence[FrozenTrial], budget_s: float) -> list[FrozenTrial]:
    """The finished trials, in trial order, whose cumulative CPU seconds stay within ``budget_s`` (the
    first trial that would cross the budget and every later one are left out)."""
    done = sorted((t for t in trials if t.state.is_finished()), key=lambda t: t.number)
    out, spent = [], 0.0
    for t in done:
        spent += trial_cpu_s(t)
        if spent > budget_s:
            break
        out.append(t)
    return out


def compute_curve(trials: Sequence[FrozenTrial], dense_macs: float) -> list[tuple[float, float]]:
    """``(cumulative CPU seconds, hypervolume)`` after each finished trial, in trial order."""
    done = sorted((t for t in trials if t.state.is_finished()), key=lambda t: t.number)
    out, spent = [], 0.0
    for k, t in enumerate(done):
        spent += trial_cpu_s(t)
        out.append((spent, hypervolume(done[: k + 1], dense_macs)))
    return out


def hv_at(curve: Sequence[Sequence[float]], x: float) -> float:
    """Hypervolume reached within ``x`` CPU seconds (0 before the first trial ends)."""
    hv = 0.0
    for spent, value in curve:
        if spent > x:
            break
        hv = value
    return hv


def compute_to_reach(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """CPU seconds after which the curve first reaches ``target`` (None: never)."""
    for spent, value in curve:
        if value >= target - 1e-12:
            return float(spent)
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def arm_summary(curves: Sequence[Sequence[Sequence[float]]], budget_s: float,
                reference: float | None = None) -> dict[str, Any]:
    """Final hypervolume at the budget over seeds, and the compute needed to reach ``reference``."""
    finals = [hv_at(c, budget_s) for c in curves]
    m, sd = mean_std(finals)
    out: dict[str, Any] = {"final_hv": finals, "mean": m, "std": sd}
    if reference is not None:
        reach = [compute_to_reach(c, reference) for c in curves]
        out["to_reach_reference_s"] = reach
        out["reached"] = sum(r is not None and r <= budget_s for r in reach)
    return out


# ---- runs ---------------------------------------------------------------------------------------


def run_study(cfg: StudyConfig, storage: str, *, workers: int = 1) -> tuple[optuna.Study, float]:
    """Creates (or resumes) and optimizes a study; returns it and the wall-clock seconds of optimize."""
    store = make_storage(storage)
    if cfg.name not in optuna.get_all_study_names(store):
        create_study(cfg, storage=storage)
    t0 = time.perf_counter()
    study = optimize(cfg.name, storage, n_trials=cfg.n_trials, workers=workers, quiet=True)
    return study, time.perf_counter() - t0


def run_until_budget(cfg: StudyConfig, storage: str, budget_s: float, *, step: int = 2,
                     max_trials: int = 10_000) -> optuna.Study:
    """Creates (or resumes) a study and runs trials, ``step`` at a time, until the CPU seconds of its
    finished trials reach ``budget_s`` (or ``max_trials`` trials finished)."""
    store = make_storage(storage)
    if cfg.name not in optuna.get_all_study_names(store):
        create_study(cfg, storage=storage)
    study = optuna.load_study(study_name=cfg.name, storage=store)
    while True:
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        if sum(trial_cpu_s(t) for t in done) >= budget_s or len(done) >= max_trials:
            return study
        study = optimize(cfg.name, storage, n_trials=len(done) + step, quiet=True)


def front_on_test(trials: Sequence[FrozenTrial], dense_macs: float, cfg: StudyConfig, n_test: int,
               memo: dict[str, Any]) -> list[dict[str, Any]]:
    """The feasible Pareto set of ``trials`` re-measured on the first ``n_test`` test images (clean and the
    study's PGD; MACs do not change); ``memo`` keeps what was measured (by checkpoint path) across runs."""
    from searchprune.attacks import evaluate
    from searchprune.checkpoint import load_checkpoint
    from searchprune.data import BatchLoader, make_splits

    feasible = [t for t in trials if _feasible(t)]
    front_numbers = {t.number for t in _pareto(feasible)}
    rows = []
    splits = None
    for t in feasible:
        if t.number not in front_numbers or "checkpoint" not in t.user_attrs:
            continue
        path = t.user_attrs["checkpoint"]
        if path not in memo:
            splits = splits or make_splits(cfg.data)
            model, _ = load_checkpoint(path)
            res = evaluate(model.eval(), BatchLoader(splits.test, 250, max_images=n_test), cfg.threat,
                           attacks=("pgd",))
            memo[path] = {"clean_acc": res.clean, "robust_acc": res.robust["pgd"], "n": res.n}
        rows.append({"trial": t.number, "mac_ratio": t.values[2] / dense_macs, **memo[path],
                     "val_clean_acc": t.values[0], "val_robust_acc": t.values[1]})
    return rows


def _pareto(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Non-dominated trials (maximize clean, robust; minimize cost)."""
    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        va, vb = (a.values[0], a.values[1], -a.values[2]), (b.values[0], b.values[1], -b.values[2])
        return all(x >= y for x, y in zip(va, vb)) and va != vb
    return [t for t in trials if not any(dominates(o, t) for o in trials)]


def hypervolume_of_rows(rows: Sequence[dict[str, Any]]) -> float:
    """Hypervolume of test-set points (clean, PGD, MACs/dense) w.r.t. (0, 0, 1)."""
    pts = [[-r["clean_acc"], -r["robust_acc"], r["mac_ratio"]] for r in rows if r["mac_ratio"] < 1.0]
    return reports.hypervolume(pts, [0.0, 0.0, 1.0])


def _dense_macs(trials: Sequence[FrozenTrial]) -> float:
    """The dense base model's MACs: ``base_macs`` (issue 9: ``dense_macs`` is now what a dense kernel
    executes for the trial itself); studies from before it stored the base's in ``dense_macs``."""
    for key in ("base_macs", "dense_macs"):
        for t in trials:
            if key in t.user_attrs:
                return float(t.user_attrs[key])
    raise RuntimeError("no completed trial recorded base_macs or dense_macs")


def _ceiling_worker(checkpoint: str, steps: int) -> None:
    """``steps`` SGD steps of the base model on one thread: the unit of work of the ceiling check."""
    import torch

    from searchprune.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    model, meta = load_checkpoint(checkpoint)
    model.train()
    shape = (meta["dataset"]["in_channels"], *meta["dataset"]["image_size"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((128, *shape), generator=gen)
    y = torch.randint(0, meta["dataset"]["num_classes"], (128,), generator=gen)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def hardware_ceiling(checkpoint: Path, steps: int = 150) -> dict[str, Any]:
    """How much two independent single-thread processes gain over one on this machine, with no
    Optuna, storage or data loading: the most any two-worker setup can reach here."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    walls = {}
    for n in (1, 2):
        procs = [ctx.Process(target=_ceiling_worker, args=(str(checkpoint), steps)) for _ in range(n)]
        t0 = time.perf_counter()
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        walls[n] = time.perf_counter() - t0
    ratio = 2 * walls[1] / walls[2]
    print(f"[bench] ceiling: 1 process {walls[1]:.1f} s, 2 processes {walls[2]:.1f} s for twice the work "
          f"= {ratio:.2f}x", flush=True)
    return {"steps": steps, "wall_1_s": round(walls[1], 1), "wall_2_s": round(walls[2], 1),
            "ratio": round(ratio, 2)}


# Every trial does the same work (the defaults' weight-magnitude pruning, one epoch of fast
# adversarial fine-tuning, no quantization; masked weights cost the same at any sparsity): the
# settings then differ only in how the trials are run, not in which trials the sampler proposes.
THROUGHPUT_SPACE = {"prune.sparsity": {"low": 0.5, "high": 0.9}}

def throughput_settings() -> list[tuple[str, int, int]]:
    """(label, workers, threads per worker): one worker on all cores, one worker on the share of
    the cores each of two workers gets (``optimize`` gives each ``cores // workers``), two workers."""
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    return [(f"1 worker, {cores} threads", 1, cores), (f"1 worker, {half} thread(s)", 1, half),
            (f"2 workers, {half} thread(s) each", 2, half)]


def throughput(base_cfg: StudyConfig, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Trials per hour of worker processes sharing a PostgreSQL study (``throughput_settings``)."""
    if args.no_pg:
        return {"skipped": "--no-pg"}
    sys.path.insert(0, str(ROOT / "tests"))
    from _pg import PostgresUnavailable, postgres_server

    from searchprune._torch import set_cpu_threads

    def measure(url: str) -> dict[str, Any]:
        res: dict[str, Any] = {"storage": url.split("@")[-1], "trials": args.throughput_trials,
                               "cpu_count": os.cpu_count(), "settings": []}
        for i, (label, workers, threads) in enumerate(throughput_settings()):
            stamp = f"_{int(time.time())}" if args.pg_url else ""  # a long-lived server keeps old studies
            cfg = bench_config(base_cfg, name=f"throughput_{i}{stamp}", out=out, quick=args.quick,
                               n_trials=args.throughput_trials, sampler={"name": "tpe", "seed": 0},
                               pgd_steps=args.pgd_steps, space=THROUGHPUT_SPACE)
            # one worker runs in this process and takes its threads from $SEARCHPRUNE_THREADS;
            # several workers get cores // workers threads each from `optimize`
            if workers == 1:
                os.environ["SEARCHPRUNE_THREADS"] = str(threads)
            try:
                study, wall = run_study(cfg, url, workers=workers)
            finally:
                os.environ.pop("SEARCHPRUNE_THREADS", None)
                set_cpu_threads()
            trials = [t for t in study.get_trials(deepcopy=False)
                      if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_start
                      and t.datetime_complete]
            n = len(trials)
            # steady state: first trial start to last trial end (no process start-up, data loading)
            spans = [(t.datetime_start, t.datetime_complete) for t in trials
                     if t.datetime_start is not None and t.datetime_complete is not None]
            span = (max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds()
            trial_s = [(e - s).total_seconds() for s, e in spans]
            row = {"label": label, "workers": workers, "threads": threads,
                   "wall_s": round(wall, 1), "finished": n, "trials_per_hour": round(n / wall * 3600, 1),
                   "steady_s": round(span, 1), "steady_trials_per_hour": round(n / max(span, 1e-9) * 3600, 1),
                   "mean_trial_s": round(statistics.mean(trial_s), 1) if trial_s else None}
            res["settings"].append(row)
            print(f"[bench] {label}: {n} trials in {wall:.0f} s = {row['trials_per_hour']:.0f} trials/h "
                  f"({row['steady_trials_per_hour']:.0f} once running)", flush=True)
        res["ceiling"] = hardware_ceiling(_base_path(base_cfg))
        two = res["settings"][2]
        for base in res["settings"][:2]:
            for key in ("trials_per_hour", "steady_trials_per_hour"):
                res.setdefault("speedups", []).append(
                    {"vs": base["label"], "measure": key, "ratio": round(two[key] / base[key], 2)})
        return res

    if args.pg_url:
        return measure(args.pg_url)
    try:
        with postgres_server() as url:
            return measure(url)
    except PostgresUnavailable as e:
        print(f"[bench] throughput skipped: PostgreSQL unavailable: {e}", file=sys.stderr)
        return {"skipped": f"PostgreSQL unavailable: {e}"}


def run_baselines(base_cfg: StudyConfig, out: Path, entries: Sequence[str],
                  args: argparse.Namespace) -> dict[str, Any]:
    """Runs each seed recipe once (enqueued trials of one study) and returns their points and HV."""
    cfg = bench_config(base_cfg, name="baselines", out=out, quick=args.quick, n_trials=0,
                       sampler={"name": "random", "seed": 0}, pgd_steps=args.pgd_steps,
                       space=baseline_space(base_cfg))
    queue: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        for params in baseline_trials(build(StudyConfig, {**to_dict(cfg), "baselines": [entry]})):
            label = entry if "@" in entry or entry == "dense" else f"{entry}@{params['prune.sparsity']:g}"
            queue.append((label, params))
    # no successive halving: each recipe is measured in full (the study's constraints still apply)
    cfg = build(StudyConfig, {**to_dict(cfg), "n_trials": len(queue), "pruner": {"name": "none"}})
    storage = f"sqlite:///{out / 'baselines.db'}"
    if cfg.name not in optuna.get_all_study_names(make_storage(storage)):
        study = create_study(cfg, storage=storage)
        for label, params in queue:
            study.enqueue_trial(params, user_attrs={"baseline": True, "recipe": label})
    study, _ = run_study(cfg, storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[: len(queue)]
    done = [t for t in trials if "base_macs" in t.user_attrs or "dense_macs" in t.user_attrs]
    dense = _dense_macs(done) if done else float("nan")
    points = []
    for t in trials:
        ok = t.state == TrialState.COMPLETE
        points.append({
            "name": t.user_attrs.get("recipe", f"trial {t.number}"), "trial": t.number,
            "state": t.state.name.lower(),
            "clean_acc": t.values[0] if ok else None, "robust_acc": t.values[1] if ok else None,
            "mac_ratio": t.values[2] / dense if ok else None,
            "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason")})
        print(f"[bench] baseline {points[-1]['name']}: {points[-1]['state']}", flush=True)
    return {"points": points, "hypervolume": hypervolume(trials, dense) if done else None}


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at least as good as ``b`` in clean, PGD and MACs, and better in one."""
    ge = (a["clean_acc"] >= b["clean_acc"], a["robust_acc"] >= b["robust_acc"], a["mac_ratio"] <= b["mac_ratio"])
    gt = (a["clean_acc"] > b["clean_acc"], a["robust_acc"] > b["robust_acc"], a["mac_ratio"] < b["mac_ratio"])
    return all(ge) and any(gt)


def domination(results: dict[str, Any]) -> list[dict[str, Any]]:
    """For each completed seed recipe: the feasible searched trials (any sampler, any seed) that
    dominate it, with the one of highest PGD accuracy as the example."""
    rows = []
    for b in results["baselines"]["points"]:
        if b["robust_acc"] is None:
            continue
        hits = [{"sampler": s, **p} for s, pts in results["points"].items() for p in pts if _dominates(p, b)]
        by_sampler = {s: sum(h["sampler"] == s for h in hits) for s in results["points"]}
        best = max(hits, key=lambda h: (h["robust_acc"], h["clean_acc"])) if hits else None
        rows.append({"baseline": b["name"], "n_dominating": len(hits), "by_sampler": by_sampler,
                     "example": best})
    return rows


# ---- report -------------------------------------------------------------------------------------


def _fmt(x: float | None, nd: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def compute_table(results: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The equal-compute table (markdown lines) and its numbers: final HV on validation and test
    (mean +- std over seeds), compute to reach random search's final HV, the two targets."""
    budget = float(results["budget_s"])
    curves: dict[str, list[list[list[float]]]] = results["compute"]
    ref_curves = curves.get("random") or []
    reference = arm_summary(ref_curves, budget)["mean"] if ref_curves else None
    summary: dict[str, Any] = {"reference_hv": reference, "arms": {}}
    lines = ["| arm | seeds | final HV (val) | final HV (test) | trials: complete / pruned / failed | "
             "CPU-s to reach random's final HV (mean; reached) |", "|---|---|---|---|---|---|"]
    for label, runs in curves.items():
        if not runs:
            continue
        arm = arm_summary(runs, budget, reference)
        tests = [r["hv"] for r in results["test"].get(label, [])]
        tm, tsd = mean_std(tests) if tests else (float("nan"), 0.0)
        arm.update(test_mean=tm, test_std=tsd, test_hv=tests)
        summary["arms"][label] = arm
        reach = [r for r in arm.get("to_reach_reference_s", []) if r is not None]
        reach_s = f"{statistics.mean(reach):.0f} ({arm['reached']}/{len(runs)})" if reach else f"never (0/{len(runs)})"
        st = results["states"][label]
        lines.append(f"| {label} | {len(runs)} | {arm['mean']:.4f} +- {arm['std']:.4f} | {tm:.4f} +- {tsd:.4f} | "
                     f"{st['complete']} / {st['pruned']} / {st['fail']} | {reach_s} |")
    if reference is not None and "tpe+asha" in summary["arms"]:
        arm = summary["arms"]["tpe+asha"]
        reach = arm.get("to_reach_reference_s", [])
        half = [r is not None and r <= budget / 2 for r in reach]
        ratio = arm["mean"] / reference if reference > 0 else float("inf") if arm["mean"] > 0 else float("nan")
        summary["targets"] = {"reaches_random_in_half": all(half) and bool(half), "hv_ratio_vs_random": ratio}
        lines += ["", f"Targets (TPE + successive halving vs random search, {len(reach)} seed(s)): reaches random's "
                  f"final HV {reference:.4f} within half the budget in {sum(half)}/{len(half)} seed(s) "
                  f"({'met' if all(half) and half else 'not met'}); final HV ratio at equal compute "
                  f"{ratio:.2f}x (target >= 1.2x: {'met' if ratio >= 1.2 else 'not met'})."]
    return lines, summary


def write_compute_plot(out: Path, results: dict[str, Any], plt: Any, colors: dict[str, str]) -> list[str]:
    """``hv_vs_compute.png`` (mean over seeds on a grid, min-max band) and the table's lines."""
    budget = float(results["budget_s"])
    grid = [budget * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in results["compute"].items():
        if not runs:
            continue
        ys = [[hv_at(c, x) for x in grid] for c in runs]
        mean = [statistics.mean(col) for col in zip(*ys)]
        ax.plot(grid, mean, label=f"{label} (mean of {len(runs)} seed(s))", color=colors.get(label))
        if len(runs) > 1:
            ax.fill_between(grid, [min(col) for col in zip(*ys)], [max(col) for col in zip(*ys)], alpha=0.15,
                            color=colors.get(label))
    ax.set_xlabel("CPU seconds of trials")
    ax.set_ylabel("hypervolume (clean, PGD, MACs/dense), validation")
    ax.set_title(f"Fashion-MNIST {results.get('arch', 'cnn8')}: hypervolume vs compute (budget {budget:g} CPU-s)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.savefig(out / "hv_vs_compute.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    lines, summary = compute_table(results)
    results["compute_summary"] = summary
    return lines


def write_report(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tpe": "tab:blue", "nsga2": "tab:orange", "random": "tab:green", "tpe+asha": "tab:red",
              "random+asha": "tab:purple", "tpe+asha/per_layer": "tab:brown", "tpe+asha/skewed": "tab:pink"}
    compute_lines = write_compute_plot(out, results, plt, colors)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler, pts in results["fronts"].items():
        if not pts:
            continue
        # dots: the 3-objective Pareto set; steps: its trade-off in this (MACs, PGD) projection
        pts = sorted(pts, key=lambda p: (p["mac_ratio"], -p["robust_acc"]))
        ax.scatter([p["mac_ratio"] for p in pts], [p["robust_acc"] for p in pts], s=16, alpha=0.8,
                   color=colors.get(sampler), label=f"{sampler} Pareto set (seed {results['seeds'][0]})")
        front, best = [], -1.0
        for p in pts:
            if p["robust_acc"] > best:
                front.append(p)
                best = p["robust_acc"]
        ax.step([p["mac_ratio"] for p in front], [p["robust_acc"] for p in front], where="post", alpha=0.6,
                color=colors.get(sampler))
    for b in results["baselines"]["points"]:
        if b["robust_acc"] is not None:
            ax.scatter([b["mac_ratio"]], [b["robust_acc"]], marker="*", s=120, color="black", zorder=5)
            ax.annotate(b["name"], (b["mac_ratio"], b["robust_acc"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xlabel("MACs / dense MACs")
    ax.set_ylabel("PGD accuracy (validation)")
    ax.set_title("Pareto sets projected on (MACs, PGD accuracy) and seed recipes (*)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.savefig(out / "pareto.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    lines = [f"# Search benchmark at equal compute: Fashion-MNIST {results.get('arch', 'cnn8')}, "
             f"{results['budget_s']:g} CPU seconds of "
             f"trials per arm, seeds {results['seeds']}", "", f"Per trial: {results['setting']}", "",
             *compute_lines]
    lines += ["", "Seed recipes (enqueued baselines, one study):", "",
              "| baseline | state | clean | PGD | MACs/dense |", "|---|---|---|---|---|"]
    for b in results["baselines"]["points"]:
        lines.append(f"| {b['name']} | {b['state']} | {_fmt(b['clean_acc'])} | {_fmt(b['robust_acc'])} | "
                     f"{_fmt(b['mac_ratio'], 3)} |")
    lines.append(f"\nBaselines-only hypervolume: {_fmt(results['baselines'].get('hypervolume'))}")
    if results.get("domination"):
        lines += ["", "Searched points (feasible, any sampler and seed) that dominate each seed recipe "
                  "(clean >=, PGD >=, MACs <=, one strictly):", "",
                  "| baseline | dominated by | per sampler | example (sampler seed/trial: clean, PGD, MACs/dense) |",
                  "|---|---|---|---|"]
        for d in results["domination"]:
            ex = d["example"]
            example = (f"{ex['sampler']} s{ex['seed']}/#{ex['trial']}: {_fmt(ex['clean_acc'])}, "
                       f"{_fmt(ex['robust_acc'])}, {_fmt(ex['mac_ratio'], 3)}" if ex else "none")
            per = ", ".join(f"{k} {v}" for k, v in d["by_sampler"].items())
            lines.append(f"| {d['baseline']} | {d['n_dominating']} | {per} | {example} |")
    tp = results.get("throughput", {"skipped": "not run yet"})
    lines += ["", f"Throughput on PostgreSQL ({tp.get('trials', '?')} TPE trials per setting, each the same "
              "work: magnitude pruning at a searched sparsity, one epoch of fast AT, "
              f"{os.cpu_count()} CPU cores):", ""]
    if "skipped" in tp:
        lines.append(f"skipped: {tp['skipped']}")
    else:
        lines += ["| setting | trials | wall s | trials/hour (wall) | steady s | trials/hour (steady) | "
                  "mean trial s |", "|---|---|---|---|---|---|---|"]
        for r in tp["settings"]:
            lines.append(f"| {r['label']} | {r['finished']} | {r['wall_s']} | {r['trials_per_hour']} | "
                         f"{r['steady_s']} | {r['steady_trials_per_hour']} | {r['mean_trial_s']} |")
        lines += ["", "Two workers vs one (wall clock includes each worker's start-up; steady state is "
                  "first trial start to last trial end):", ""]
        for sp in tp["speedups"]:
            lines.append(f"- vs {sp['vs']}, {sp['measure'].replace('_', ' ')}: {sp['ratio']}x")
        if "ceiling" in tp:
            c = tp["ceiling"]
            lines.append(f"- machine ceiling: two independent single-thread training processes (no Optuna, "
                         f"no storage) do {c['ratio']}x the work of one in the same time "
                         f"({c['steps']} SGD steps each, {c['wall_1_s']} s alone, {c['wall_2_s']} s side by side)")
    (out / "results.md").write_text("\n".join(lines) + "\n")


# ---- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "studies" / "fmnist_full.yaml"),
                   help="study whose space, base model and constraints the samplers search")
    p.add_argument("--throughput-config", default=str(ROOT / "studies" / "fmnist_quick.yaml"),
                   help="study for the 1-vs-2 worker throughput (only its sparsity is searched: equal trials)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="CPU seconds of trials per arm and seed (default 900; --quick 30)")
    p.add_argument("--arms", nargs="*", default=list(DEFAULT_ARMS), choices=[a[0] for a in ARMS],
                   help=f"arms to compare (default: {' '.join(DEFAULT_ARMS)}; none: baselines and throughput "
                        "only; tpe+asha/per_layer and tpe+asha/skewed compare per-layer allocations)")
    p.add_argument("--n-test", type=int, default=None,
                   help="held-out test images the final fronts are re-measured on (default 2000; --quick 500)")
    p.add_argument("--trials", type=int, default=None, help="(unused by the equal-compute comparison; "
                   "sets the TPE start-up and NSGA-II population, default 40; --quick 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="sampler seeds (default 0 1 2; --quick 0)")
    p.add_argument("--baselines", nargs="*", default=None,
                   help=f"seed recipes as 'name[@sparsity]' (default: {' '.join(FULL_BASELINES)})")
    p.add_argument("--pgd-steps", type=int, default=None, help="PGD steps per trial (default 5; --quick 3)")
    p.add_argument("--population", type=int, default=None, help="NSGA-II population (default budget/4, >= 2)")
    p.add_argument("--throughput-trials", type=int, default=None,
                   help="trials per throughput run (default 16; --quick 4)")
    p.add_argument("--pg-url", help="use this PostgreSQL server instead of starting a throw-away one")
    p.add_argument("--only-throughput", action="store_true",
                   help="re-measure the throughput (e.g. on a quiet machine) and update the report in --out")
    p.add_argument("--no-pg", action="store_true", help="skip the 1-vs-2 worker throughput measurement")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_search"))
    p.add_argument("--small-model", action="store_true",
                   help="compress mnist_small (base: 150 batches) instead of the study's CNN-8 (implied by --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (< 20 min on 2 cores): 30 CPU-s per arm, 1 seed, 2 baselines, 512 training "
                        "images, PGD-3, 500 test images, mnist_small instead of CNN-8 (its base model trains in "
                        "seconds, CNN-8's takes over an hour on 2 shared cores), no throughput (add --pg-url)")
    args = p.parse_args(argv)
    # unset options take the --quick or the full default
    args.trials = args.trials or (8 if args.quick else 40)
    args.budget_s = args.budget_s or (30.0 if args.quick else 900.0)
    args.n_test = args.n_test or (500 if args.quick else 2000)
    if args.quick and not args.pg_url:
        args.no_pg = True
    args.small_model = args.small_model or args.quick
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.throughput_trials = args.throughput_trials or (4 if args.quick else 16)
    args.pgd_steps = args.pgd_steps or (3 if args.quick else 5)
    baselines = args.baselines if args.baselines is not None else (
        QUICK_BASELINES if args.quick else FULL_BASELINES)
    population = args.population or max(2, args.trials // 4)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = load_study_config(args.config)
    if args.small_model:
        base_cfg = small_model_config(base_cfg)
    # The base model exactly as the study trains it (full recipe and data), shared with that study.
    from searchprune._torch import get_device
    from searchprune.data import make_splits

    model = {**to_dict(base_cfg.model), "checkpoint": str(_base_path(base_cfg))}
    ensure_base_model(build(StudyConfig, {**to_dict(base_cfg), "model": model}), make_splits(base_cfg.data),
                      get_device("cpu"))

    sampler_opts = {"tpe": {"n_startup_trials": max(2, args.trials // 4)},
                    "nsga2": {"population_size": population}, "random": {}}
    results: dict[str, Any] = {
        "trials": args.trials, "seeds": args.seeds, "quick": args.quick, "sampler_options": sampler_opts,
        "budget_s": args.budget_s, "n_test": args.n_test, "arch": base_cfg.model.arch, "setting": "",
        "curves": {}, "states": {}, "fronts": {}, "studies": {}, "points": {}, "compute": {}, "test": {},
    }
    old = out / "results.json"
    if old.exists():  # resume: keep the test measurements already paid for
        results["test_memo"] = json.loads(old.read_text()).get("test_memo", {})
    results.setdefault("test_memo", {})
    probe = bench_config(base_cfg, name="probe", out=out, quick=args.quick, n_trials=0,
                         sampler={"name": "random", "seed": 0}, pgd_steps=args.pgd_steps)
    results["setting"] = (f"{probe.data.train_size} training images, PGD-{probe.threat.steps} "
                          f"(eps {probe.threat.eps:g}, step {probe.threat.alpha:g}) on {probe.eval.n_eval} "
                          "validation images, no transfer / masking checks")
    t_start = time.perf_counter()

    def save(timed: bool = True) -> None:
        if timed:
            results["total_s"] = round(time.perf_counter() - t_start, 1)
        results["domination"] = domination(results)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        write_report(out, results)

    if args.only_throughput:
        results = json.loads((out / "results.json").read_text())
        results["throughput"] = throughput(load_study_config(args.throughput_config), out, args)
        save(timed=False)
        print((out / "results.md").read_text())
        return 0

    # the seed recipes, once, in a study whose space can express them all
    results["baselines"] = {"points": [], "hypervolume": None}
    if baselines:
        results["baselines"] = run_baselines(base_cfg, out, baselines, args)
    results["throughput"] = throughput(load_study_config(args.throughput_config), out, args)
    save()

    # seeds outermost: an interrupted run still compares every arm on the seeds it finished
    arms = [a for a in ARMS if a[0] in args.arms]
    for label, *_ in arms:
        results["compute"][label], results["studies"][label], results["points"][label] = [], [], []
        results["test"][label] = []
        results["states"][label] = {"complete": 0, "pruned": 0, "fail": 0}
    key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}
    for seed in args.seeds:
        for label, sampler, asha, allocation in arms:
            name = f"{label.replace('+', '_').replace('/', '_')}_s{seed}"
            cfg = bench_config(base_cfg, name=name, out=out, quick=args.quick, n_trials=0,
                               sampler={"name": sampler, "seed": seed, "options": sampler_opts[sampler]},
                               pgd_steps=args.pgd_steps, asha=asha, allocation=allocation)
            storage = f"sqlite:///{out / f'{name}.db'}"
            t0 = time.perf_counter()
            study = run_until_budget(cfg, storage, args.budget_s)
            wall = time.perf_counter() - t0
            trials = cut_at_budget(study.get_trials(deepcopy=False), args.budget_s)
            dense = _dense_macs(study.get_trials(deepcopy=False))
            curve = compute_curve(trials, dense)
            results["compute"][label].append(curve)
            for t in trials:
                if t.state in key:
                    results["states"][label][key[t.state]] += 1
            rows = front_on_test(trials, dense, cfg, args.n_test, results["test_memo"])
            results["test"][label].append({"seed": seed, "hv": hypervolume_of_rows(rows), "front": rows})
            results["studies"][label].append({"seed": seed, "storage": storage, "wall_s": round(wall, 1),
                                              "trials": len(trials), "final_hv": curve[-1][1] if curve else 0.0})
            results["points"][label] += [
                {"seed": seed, "trial": t.number, "clean_acc": t.values[0], "robust_acc": t.values[1],
                 "mac_ratio": t.values[2] / dense, "params": t.params} for t in trials if _feasible(t)]
            if seed == args.seeds[0]:
                results["fronts"][label] = [
                    {"trial": t.number, "clean_acc": t.values[0], "robust_acc": t.values[1],
                     "mac_ratio": t.values[2] / dense} for t in _pareto([t for t in trials if _feasible(t)])]
            print(f"[bench] {name}: {len(trials)} trials within {args.budget_s:g} CPU-s ({wall:.0f} s wall), "
                  f"final HV {curve[-1][1] if curve else 0:.4f}, test HV {results['test'][label][-1]['hv']:.4f}",
                  flush=True)
            save()

    print((out / "results.md").read_text())
    print(f"[bench] wrote {out / 'hv_vs_compute.png'}, {out / 'pareto.png'}, {out / 'results.md'}, "
          f"{out / 'results.json'} in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
