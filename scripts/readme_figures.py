"""Regenerates the README figures (docs/img/*.png) from a finished study.

    searchprune study create   --config docs/img/demo_study.yaml --storage sqlite:///runs/readme_demo.db
    searchprune study optimize --name readme_demo --storage sqlite:///runs/readme_demo.db
    python scripts/readme_figures.py --name readme_demo --storage sqlite:///runs/readme_demo.db --out docs/img

For the certified-front figure the script measures each Pareto trial on the study's test split
(clean, and every attack in ``eval.export_attacks`` with the study's threat model) the way
``study certify`` does, and draws the figures from an in-memory copy of the study that carries
those ``test_*`` attributes; the stored study is not changed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

from searchprune._torch import get_device
from searchprune.attacks import evaluate
from searchprune.checkpoint import load_checkpoint
from searchprune.data import BatchLoader, make_splits
from searchprune.search import load_study, write_plots

KINDS = ("pareto_macs_vs_robust_acc", "certified_front", "hypervolume_history", "stagewise")


def with_test_metrics(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of ``study`` whose Pareto trials carry measured ``test_*`` attributes."""
    from searchprune.search import stored_config

    cfg = stored_config(study)
    splits = make_splits(cfg.data)
    dev = get_device("cpu")
    loader = BatchLoader(splits.test, cfg.data.eval_batch_size, device=dev)
    pareto = {t.number for t in study.best_trials}
    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    copy.set_metric_names(study.metric_names or [])
    for k, v in study.user_attrs.items():
        copy.set_user_attr(k, v)
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        attrs = dict(t.user_attrs)
        if t.number in pareto:
            model, _ = load_checkpoint(attrs["checkpoint"])
            res = evaluate(model.to(dev).eval(), loader, cfg.threat, attacks=tuple(cfg.eval.export_attacks),
                           progress=True, desc=f"test trial {t.number}")
            attrs.update({"test_clean_acc": res.clean, "test_worst_acc": res.worst, "test_n": res.n,
                          **{f"test_acc_{a}": v for a, v in res.robust.items()}})
            print(f"trial {t.number}: test clean {res.clean:.3f}, worst {res.worst:.3f} on {res.n} images")
        copy.add_trial(optuna.trial.create_trial(
            state=t.state, values=t.values if t.state == TrialState.COMPLETE else None, params=t.params,
            distributions=_widened(t), user_attrs=attrs, system_attrs=t.system_attrs))
    return copy


def _widened(t: optuna.trial.FrozenTrial) -> dict[str, optuna.distributions.BaseDistribution]:
    """The trial's distributions, float ranges widened to hold an enqueued baseline's value (the
    dense model's sparsity 0 sits below the searched range on purpose)."""
    out = dict(t.distributions)
    for k, d in out.items():
        v = t.params[k]
        if isinstance(d, optuna.distributions.FloatDistribution) and not d.low <= v <= d.high:
            out[k] = optuna.distributions.FloatDistribution(min(d.low, v), max(d.high, v), log=d.log)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--out", default="docs/img")
    a = ap.parse_args()
    study, _ = load_study(a.name, a.storage)
    copy = with_test_metrics(study)
    tmp = Path(tempfile.mkdtemp())
    write_plots(copy, tmp, push_to_dashboard=False)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        src = tmp / f"{kind}.png"
        shutil.copyfile(src, out / src.name)
        print(f"{out / src.name}: {src.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
