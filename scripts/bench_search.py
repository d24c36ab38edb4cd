"""Benchmark the search: hypervolume vs trials for TPE, NSGA-II and random search, the seed papers'
recipes (baselines) as reference points, and trials per hour with one and two workers on PostgreSQL.

Every study is Fashion-MNIST CNN-8 with the search space of ``studies/fmnist_full.yaml`` (every
move the library has, so each seed recipe is a point of the space and "does the search find a
point that dominates it" is a fair question), the same base checkpoint
``runs/base/cnn8_fmnist_standard.pt`` (trained here with the config's recipe when missing), and a
cheaper per-trial measurement: a training subset, fewer validation images and a PGD with fewer
steps (eps unchanged). Each sampler gets the same sampler seeds and the same trial budget; trials
use the same per-trial seeds in every study. The seed recipes run once, with their papers'
hyperparameters (e.g. HYDRA's 20 score epochs), in a study of their own.

Throughput uses ``studies/fmnist_quick.yaml`` with only the sparsity searched (every trial does the
same work) in three settings on the same machine: one worker on all cores, one worker on half of
them, and two workers on half of them each. "Two workers vs one" is reported against both
single-worker settings, with the machine's own limit (two bare training processes vs one) beside.

Hypervolume: of the feasible Pareto front in (clean acc, PGD acc, MACs / dense MACs), reference
point (0, 0, 1), the same as ``searchprune study show``.

Outputs in ``--out`` (default ``runs/bench_search``): ``hv_vs_trials.png``, ``pareto.png`` (PGD
accuracy vs MACs: each sampler's front for the first seed and the baselines), ``results.md``
(tables), ``results.json`` (everything, including the per-trial hypervolume curves).

    python scripts/bench_search.py --quick           # smoke run, a few minutes
    python scripts/bench_search.py --trials 40 --seeds 0 1 2   # the full comparison

Studies are resumed, so an interrupted run continues where it stopped; ``results.json`` and the
report are rewritten after every study.
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

SAMPLERS = ("tpe", "nsga2", "random")
FULL_BASELINES = ("dense", "shrinkbench@0.5", "shrinkbench@0.8", "adver_fine@0.5", "hydra@0.8", "mrpf@0.8",
                  "gap@0.8", "in_train@0.5")
QUICK_BASELINES = ("dense", "shrinkbench@0.8")


# ---- configs --------------------------------------------------------------------------------


def bench_config(base_cfg: StudyConfig, *, name: str, out: Path, quick: bool, n_trials: int,
                 sampler: dict[str, Any], pgd_steps: int, baselines: Sequence[str] = (),
                 space: dict[str, Any] | None = None) -> StudyConfig:
    """``fmnist_quick`` with a cheap measurement, the given sampler and budget, outputs in ``out``."""
    raw = to_dict(base_cfg)
    raw.update(name=name, output_dir=str(out / "studies" / "{name}"), n_trials=n_trials, sampler=sampler,
               baselines=list(baselines), storage=None)
    raw["model"]["checkpoint"] = str(_base_path(base_cfg))
    # a training subset; the validation split stays the study's (carved apart from the base model's data)
    raw["data"].update(train_size=512 if quick else 2000)
    raw["eval"].update(n_eval=100 if quick else 250, n_stage_eval=64, transfer=False, checks=False,
                       stagewise=False)
    eps = raw["threat"]["eps"]
    raw["threat"].update(steps=pgd_steps, alpha=round(2.5 * eps / pgd_steps, 6))  # Madry's 2.5 eps / steps
    if space is not None:
        raw["space"] = space
    return build(StudyConfig, raw)


def _base_path(cfg: StudyConfig) -> Path:
    p = Path(cfg.model.checkpoint or "runs/base/cnn8_fmnist_standard.pt")
    return p if p.is_absolute() else ROOT / p


def baseline_space(cfg: StudyConfig) -> dict[str, Any]:
    """A space in which every seed recipe is expressible. The baselines study runs only its enqueued
    trials, so the width costs nothing; fine-tuning epochs and learning rate stay at the defaults."""
    sparsity = to_dict(cfg.space).get("prune.sparsity", {"low": 0.3, "high": 0.95})
    return {
        "prune.method": ["magnitude", "gradient", "taylor", "l1_filter", "gap", "hydra", "in_train"],
        "prune.granularity": ["weight", "channel"],
        "prune.allocation": ["global", "uniform", "mrs", "learned"],
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


# ---- runs ---------------------------------------------------------------------------------------


def run_study(cfg: StudyConfig, storage: str, *, workers: int = 1) -> tuple[optuna.Study, float]:
    """Creates (or resumes) and optimizes a study; returns it and the wall-clock seconds of optimize."""
    store = make_storage(storage)
    if cfg.name not in optuna.get_all_study_names(store):
        create_study(cfg, storage=storage)
    t0 = time.perf_counter()
    study = optimize(cfg.name, storage, n_trials=cfg.n_trials, workers=workers, quiet=True)
    return study, time.perf_counter() - t0


def _dense_macs(trials: Sequence[FrozenTrial]) -> float:
    for t in trials:
        if "dense_macs" in t.user_attrs:
            return float(t.user_attrs["dense_macs"])
    raise RuntimeError("no completed trial recorded dense_macs")


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
            if entry.partition("@")[0] == "dense":
                # sparsity 0 prunes nothing, but pin the method so the sampler does not pick, say, in_train
                params = {"prune.method": "magnitude", "prune.granularity": "weight",
                          "prune.allocation": "global", **params}
            label = entry if "@" in entry or entry == "dense" else f"{entry}@{params['prune.sparsity']:g}"
            queue.append((label, params))
    # no multi-fidelity gate: each recipe is measured in full (the study's constraints still apply)
    cfg = build(StudyConfig, {**to_dict(cfg), "n_trials": len(queue), "gate": {"enabled": False}})
    storage = f"sqlite:///{out / 'baselines.db'}"
    if cfg.name not in optuna.get_all_study_names(make_storage(storage)):
        study = create_study(cfg, storage=storage)
        for label, params in queue:
            study.enqueue_trial(params, user_attrs={"baseline": True, "recipe": label})
    study, _ = run_study(cfg, storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[: len(queue)]
    done = [t for t in trials if "dense_macs" in t.user_attrs]
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


def write_report(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[list[float]]] = results["curves"]
    budget = results["trials"]
    colors = {"tpe": "tab:blue", "nsga2": "tab:orange", "random": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler, runs in curves.items():
        if not runs:  # not reached yet in an interrupted or running benchmark
            continue
        runs = [r + [r[-1]] * (budget - len(r)) if r else [0.0] * budget for r in runs]
        xs = list(range(1, budget + 1))
        mean = [statistics.mean(r[i] for r in runs) for i in range(budget)]
        ax.plot(xs, mean, label=f"{sampler} (mean of {len(runs)} seed(s))", color=colors.get(sampler))
        if len(runs) > 1:
            ax.fill_between(xs, [min(r[i] for r in runs) for i in range(budget)],
                            [max(r[i] for r in runs) for i in range(budget)], alpha=0.2,
                            color=colors.get(sampler))
    if results["baselines"].get("hypervolume") is not None:
        ax.axhline(results["baselines"]["hypervolume"], ls="--", color="grey",
                   label="seed recipes (baselines) only")
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume (clean, PGD, MACs/dense)")
    ax.set_title(f"Fashion-MNIST CNN-8: hypervolume vs trials (budget {budget})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out / "hv_vs_trials.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

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
    ax.legend(fontsize=8)
    fig.savefig(out / "pareto.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    lines = [f"# Search benchmark: Fashion-MNIST CNN-8, {budget} trials per study, "
             f"seeds {results['seeds']}", "",
             f"Per trial: {results['setting']}", "",
             "| sampler | final HV mean | std | min | max | HV @25% | HV @50% | complete | pruned | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for sampler, runs in curves.items():
        if not runs:
            continue
        finals = [r[-1] if r else 0.0 for r in runs]
        at = {q: statistics.mean(r[min(len(r), max(1, round(budget * q))) - 1] if r else 0.0 for r in runs)
              for q in (0.25, 0.5)}
        states = results["states"][sampler]
        lines.append(f"| {sampler} | {_fmt(statistics.mean(finals))} | "
                     f"{_fmt(statistics.stdev(finals) if len(finals) > 1 else 0.0)} | {_fmt(min(finals))} | "
                     f"{_fmt(max(finals))} | {_fmt(at[0.25])} | {_fmt(at[0.5])} | {states['complete']} | "
                     f"{states['pruned']} | {states['fail']} |")
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
                   help="study whose space, base model, constraints and gate the samplers search")
    p.add_argument("--throughput-config", default=str(ROOT / "studies" / "fmnist_quick.yaml"),
                   help="study for the 1-vs-2 worker throughput (only its sparsity is searched: equal trials)")
    p.add_argument("--trials", type=int, default=None, help="trial budget per study (default 40; --quick 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="sampler seeds (default 0 1 2; --quick 0)")
    p.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=SAMPLERS,
                   help="samplers to compare (default: all three; none: baselines and throughput only)")
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
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 trials, 1 seed, 2 baselines, 512 training images, PGD-3, "
                        "4 throughput trials")
    args = p.parse_args(argv)
    # unset options take the --quick or the full default
    args.trials = args.trials or (4 if args.quick else 40)
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
    # The base model exactly as fmnist_quick trains it (full recipe and data), shared with that study.
    from searchprune._torch import get_device
    from searchprune.data import make_splits

    model = {**to_dict(base_cfg.model), "checkpoint": str(_base_path(base_cfg))}
    ensure_base_model(build(StudyConfig, {**to_dict(base_cfg), "model": model}), make_splits(base_cfg.data),
                      get_device("cpu"))

    sampler_opts = {"tpe": {"n_startup_trials": max(2, args.trials // 4)},
                    "nsga2": {"population_size": population}, "random": {}}
    results: dict[str, Any] = {
        "trials": args.trials, "seeds": args.seeds, "quick": args.quick, "sampler_options": sampler_opts,
        "setting": "", "curves": {}, "states": {}, "fronts": {}, "studies": {}, "points": {},
    }
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

    # seeds outermost: an interrupted run still compares every sampler on the seeds it finished
    for sampler in args.samplers:
        results["curves"][sampler], results["studies"][sampler], results["points"][sampler] = [], [], []
        results["states"][sampler] = {"complete": 0, "pruned": 0, "fail": 0}
    for seed in args.seeds:
        for sampler in args.samplers:
            name = f"{sampler}_s{seed}"
            cfg = bench_config(base_cfg, name=name, out=out, quick=args.quick, n_trials=args.trials,
                               sampler={"name": sampler, "seed": seed, "options": sampler_opts[sampler]},
                               pgd_steps=args.pgd_steps)
            storage = f"sqlite:///{out / f'{name}.db'}"
            study, wall = run_study(cfg, storage)
            trials = study.get_trials(deepcopy=False)
            dense = _dense_macs(trials)
            curve = hv_curve(trials, dense)
            results["curves"][sampler].append(curve)
            key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}
            for t in trials:
                if t.state in key:
                    results["states"][sampler][key[t.state]] += 1
            results["studies"][sampler].append({"seed": seed, "storage": storage, "wall_s": round(wall, 1),
                                                "final_hv": curve[-1] if curve else 0.0})
            results["points"][sampler] += [
                {"seed": seed, "trial": t.number, "clean_acc": t.values[0], "robust_acc": t.values[1],
                 "mac_ratio": t.values[2] / dense, "params": t.params} for t in trials if _feasible(t)]
            if seed == args.seeds[0]:
                results["fronts"][sampler] = [
                    {"trial": t.number, "clean_acc": t.values[0], "robust_acc": t.values[1],
                     "mac_ratio": t.values[2] / dense} for t in study.best_trials]
            print(f"[bench] {name}: {len(trials)} trials in {wall:.0f} s, "
                  f"final HV {curve[-1] if curve else 0:.4f}", flush=True)
            save()

    print((out / "results.md").read_text())
    print(f"[bench] wrote {out / 'hv_vs_trials.png'}, {out / 'pareto.png'}, {out / 'results.md'}, "
          f"{out / 'results.json'} in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
