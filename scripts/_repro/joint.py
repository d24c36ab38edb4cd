"""``--paper joint``: the joint search of ``studies/fmnist_full.yaml`` with every seed recipe enqueued,
its front re-measured on held-out test images, and which recipes the front dominates there.

The search selects on validation images; a claim that the front dominates a recipe is decided only
after every front trial and every recipe is replayed (same params, same seed, through ``run_trial``)
on test images the search never saw. Replays are written to ``DIR/results.jsonl`` as they finish and
skipped on a rerun; the study itself resumes from its SQLite storage.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from searchprune.config import StudyConfig, build, load_yaml, to_dict
from searchprune.errors import ConfigError
from searchprune.search import baseline_trials, build_context, create_study, load_study, optimize, prunable_layer_names
from searchprune.search.baselines import list_baselines
from searchprune.search.space import replay_params
from searchprune.trial import TrialContext, run_trial

from .core import append_result, dominates, load_results
from .papers import ROOT

__all__ = ["joint_config", "run_joint", "replay_context", "replay_on_test", "write_joint_report", "trial_states",
           "describe_states", "RECIPES"]

RECIPES = ("dense", "dense_aft", "shrinkbench", "gap", "adver_fine", "hydra", "mrpf", "in_train")


def joint_config(out: Path, *, quick: bool) -> tuple[StudyConfig, list[str]]:
    """The study config (fmnist_full.yaml with every recipe enqueued, outputs under ``out``) and the
    recipes it could not enqueue (``dense_aft`` until the honest-fronts baseline lands)."""
    raw: dict[str, Any] = dict(load_yaml(ROOT / "studies" / "fmnist_full.yaml"))
    have = set(list_baselines())
    missing = [r for r in RECIPES if r not in have]
    level = "@0.7" if quick else ""
    raw["baselines"] = [r if r.startswith("dense") else f"{r}{level}" for r in RECIPES if r in have]
    raw["name"] = "fmnist_full_repro"
    raw["output_dir"] = str(out)
    raw["storage"] = f"sqlite:///{(out / 'study.db').resolve()}"
    if quick:
        raw["data"] = {**raw["data"], "train_size": 2000, "val_size": 500, "test_size": 500}
        raw["model"] = {**raw["model"], "checkpoint": str(out / "base_cnn8_fmnist.pt"),
                        "train": {**raw["model"]["train"], "epochs": 1}}
        raw["eval"] = {**raw["eval"], "n_eval": 500, "n_stage_eval": 128, "check_apgd_steps": 20,
                       "check_square_queries": 100}
    cfg = build(StudyConfig, raw)
    if quick:
        cfg = dataclasses.replace(cfg, n_trials=len(baseline_trials(cfg)) + 8)
    return cfg, missing


def _label(trial: optuna.trial.FrozenTrial, cfg: StudyConfig) -> str:
    if not trial.user_attrs.get("baseline"):
        return f"search #{trial.number}"
    entries = [e for e in cfg.baselines for _ in (baseline_trials(dataclasses.replace(cfg, baselines=(e,))))]
    for entry, params in zip(entries, baseline_trials(cfg)):
        if all(trial.params.get(k) == v for k, v in params.items()):
            return entry
    return f"baseline #{trial.number}"


def replay_context(cfg: StudyConfig, *, device: str | None = None) -> TrialContext:
    """The search's trial context with its evaluation split swapped for the held-out test split, every
    test image measured (the statistics cache keys transfer examples by their data, so none crafted on
    validation images is reused)."""
    ctx = build_context(cfg, device=device, progress=False)
    return dataclasses.replace(ctx, splits=dataclasses.replace(ctx.splits, val=ctx.splits.test),
                               eval=dataclasses.replace(ctx.eval, n_eval=None))


def run_joint(out: Path, *, quick: bool, seeds: int, device: str | None, command: str) -> Path:
    """Creates (or resumes) the study, optimizes it, replays front + recipes on test, writes REPORT.md."""
    cfg, missing = joint_config(out, quick=quick)
    storage = cfg.storage
    assert storage is not None
    try:
        load_study(cfg.name, storage)
    except ConfigError:  # not created yet (a broken storage is not: its error goes to the user)
        create_study(cfg)
    study = optimize(cfg.name, storage, n_trials=cfg.n_trials, device=device, progress=False)
    replay_on_test(cfg, study, out, device=device)
    return write_joint_report(out, cfg, missing, states=trial_states(study), command=command, quick=quick,
                              seeds=seeds)


def trial_states(study: optuna.Study) -> dict[str, int]:
    """How the study's trials ended: ``complete``, ``pruned`` (stopped early by MO-ASHA at a rung),
    ``failed``; a trial still running or waiting counts nowhere."""
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    out = dict.fromkeys(names.values(), 0)
    for t in study.get_trials(deepcopy=False):
        if t.state in names:
            out[names[t.state]] += 1
    return out


def describe_states(states: Mapping[str, int]) -> str:
    """``10 complete, 6 pruned early by MO-ASHA, 0 failed``."""
    return (f"{states.get('complete', 0)} complete, {states.get('pruned', 0)} pruned early by MO-ASHA, "
            f"{states.get('failed', 0)} failed")


def replay_on_test(cfg: StudyConfig, study: optuna.Study, out: Path, *, device: str | None = None) -> int:
    """Replays every baseline and every trial of the feasible validation front (same params and seed,
    through ``run_trial``, in full) on the held-out test images, appending each to ``out/results.jsonl``
    as it finishes (a rerun skips the replayed ones). A baseline the search pruned (a study made before
    baselines were exempt from MO-ASHA) is replayed too: the recipes are what the front is judged
    against. Returns the number of COMPLETE trials of the study."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    front = {t.number for t in study.best_trials}
    picks = [t for t in trials if (t.user_attrs.get("baseline") and t.state in (TrialState.COMPLETE, TrialState.PRUNED))
             or (t.state == TrialState.COMPLETE and t.number in front)]
    ctx = replay_context(cfg, device=device)
    layers = prunable_layer_names(cfg, ctx)
    results = out / "results.jsonl"
    have = load_results(results)
    for t in picks:
        key = f"joint/trial{t.number}"
        if key in have:
            continue
        params = replay_params(t.params, cfg.space, cfg.defaults, seed=int(t.user_attrs["seed"]), layer_names=layers)
        t0 = time.perf_counter()
        r = run_trial(params, ctx)
        append_result(results, {
            "key": key, "trial": t.number, "label": _label(t, cfg), "baseline": bool(t.user_attrs.get("baseline")),
            "val_front": t.number in front, "pruned_in_search": t.state == TrialState.PRUNED,
            "val": None if t.values is None else {"clean_acc": t.values[0], "pgd_acc": t.values[1],
                                                  "macs": t.user_attrs.get("macs", t.values[2])},
            "metrics": r.metrics(), "flags": dict(r.flags), "params": to_dict(params),
            "seconds": time.perf_counter() - t0,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        print(f"replayed trial {t.number} on test: clean {r.clean_acc:.4f} PGD {r.robust_acc:.4f}", flush=True)
    return len(done)


def _val_pgd(r: Mapping[str, Any]) -> str:
    """The search's validation PGD of a replayed trial, or why it has none."""
    if r.get("val") is None:
        return "pruned in search" if r.get("pruned_in_search") else "-"
    return f"{100 * r['val']['pgd_acc']:.2f}"


def _pt(m: Mapping[str, Any]) -> dict[str, float]:
    return {"clean_acc": float(m["clean_acc"]), "pgd_acc": float(m["pgd_acc"]), "macs": float(m["macs"])}


def write_joint_report(out: Path, cfg: StudyConfig, missing: Sequence[str], *, states: Mapping[str, int],
                       command: str, quick: bool, seeds: int) -> Path:
    """REPORT.md and summary.json of a joint run from its replays (``out/results.jsonl``) and ``states``,
    how the search's trials ended (:func:`trial_states`)."""
    n_ended = sum(states.values())
    recs = sorted(load_results(out / "results.jsonl").values(), key=lambda r: r["trial"])
    test_pts = {r["trial"]: _pt(r["metrics"]) for r in recs}
    searched = [r for r in recs if not r["baseline"]]
    test_front = [r for r in recs if not any(dominates(test_pts[o["trial"]], test_pts[r["trial"]]) for o in recs)]
    lines = ["## Joint search: `studies/fmnist_full.yaml` with every seed recipe enqueued", "",
             f"Command: `{command}`", "",
             f"Mode: {'**--quick**' if quick else 'full'}; {n_ended} of {cfg.n_trials} trials ended "
             f"({describe_states(states)}); "
             f"{len(recs)} trials replayed on {cfg.data.test_size or 10000} test images: the recipes and the "
             f"{sum(r['val_front'] for r in recs)} trial(s) of the feasible validation front (constraints: "
             f"{to_dict(cfg.constraints)}).", "",
             f"- Recipes enqueued: {', '.join(cfg.baselines)}." + (
                 f" **Not enqueued (no such baseline yet): {', '.join(missing)}.**" if missing else ""),
             "- The search selects on validation images; every number below is the trial replayed (same params and "
             "seed, through `run_trial`) on held-out test images. A front trial *dominates* a recipe when it is at "
             "least as good in clean accuracy, PGD accuracy and MACs on test, and better in one.",
             "- Fine-tuning budgets are searched (1-3 epochs), so they differ between trials: each row states its "
             "params.", f"- One search seed (the sampler's; `--seeds {seeds}` does not apply to a study)."]
    if quick:
        lines.append("- **--quick**: base trained 1 epoch, 2,000 fine-tuning / 500 validation / 500 test images, "
                     "each recipe at sparsity 0.7, 8 sampled trials beyond the recipes.")
    lines += ["", "| trial | what | val front | test front | clean (test) | PGD (test) | MACs | PGD (val) | "
              "dominated on test by |", "|---|---|---|---|---|---|---|---|---|"]
    front_ids = {r["trial"] for r in test_front}
    for r in recs:
        by = [o["trial"] for o in searched if dominates(test_pts[o["trial"]], test_pts[r["trial"]])]
        lines.append(f"| {r['trial']} | {r['label']} | {'yes' if r['val_front'] else '-'} | "
                     f"{'yes' if r['trial'] in front_ids else '-'} | {100 * r['metrics']['clean_acc']:.2f} | "
                     f"{100 * r['metrics']['pgd_acc']:.2f} | {r['metrics']['mac_ratio']:.0%} | "
                     f"{_val_pgd(r)} | {', '.join(f'#{b}' for b in by) or '-'} |")
    recipes = [r for r in recs if r["baseline"]]
    beaten = [r for r in recipes if any(dominates(test_pts[o["trial"]], test_pts[r["trial"]]) for o in searched)]
    lines += ["", f"Searched trials dominate {len(beaten)} of {len(recipes)} recipes on test images"
              + (f": {', '.join(r['label'] for r in beaten)}." if beaten else "."), ""]
    if not searched:
        lines += [f"**Undecided**: no searched trial finished on the validation front ({describe_states(states)} "
                  f"of {cfg.n_trials} trials in the search, recipes included), so nothing searched was there to "
                  "dominate a recipe; the claim needs a longer search.", ""]
    png = _plot(recs, test_front, out / "joint.png")
    if png is not None:
        lines += [f"![joint front]({png.name})", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps({"paper": "joint", "quick": quick, "rows": cfg.n_trials,
                                                  "done": n_ended, "states": dict(states), "seeds": 1,
                                                  "command": command,
                                                  "finding": (f"searched trials dominate {len(beaten)} of "
                                                              f"{len(recipes)} recipes on test images"
                                                              if searched else "undecided: nothing searched "
                                                              "reached the validation front")}, indent=2))
    return path


def _plot(recs: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = [r for r in recs if not r["baseline"]]
    ax.scatter([r["metrics"]["mac_ratio"] for r in s], [100 * r["metrics"]["pgd_acc"] for r in s], c="C0",
               label="searched (test)")
    ax.scatter([r["metrics"]["mac_ratio"] for r in s], [100 * r["val"]["pgd_acc"] for r in s], c="C0", alpha=0.25,
               marker=".", label="searched (validation)")
    f = sorted(front, key=lambda r: r["metrics"]["mac_ratio"])
    ax.plot([r["metrics"]["mac_ratio"] for r in f], [100 * r["metrics"]["pgd_acc"] for r in f], "C0:",
            label="test front")
    for r in recs:
        if r["baseline"]:
            x, y = r["metrics"]["mac_ratio"], 100 * r["metrics"]["pgd_acc"]
            ax.scatter([x], [y], marker="*", s=120, c="C3")
            ax.annotate(r["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("MACs / dense MACs")
    ax.set_ylabel("PGD accuracy (%, test)")
    ax.set_title("fmnist_full: searched trials and seed recipes (stars), test images", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
