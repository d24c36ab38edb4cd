"""A hand-made study shaped like a real one (for the figure and report tests): baselines, methods,
recipes, 8-bit trials, constraints, stage-wise and certified (test_*) attributes; no training."""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from searchprune.config import StudyConfig, build, to_dict
from searchprune.search import CONFIG_ATTR, DIRECTIONS, OBJECTIVE_NAMES

DENSE_MACS = 1_000_000.0
MAX_MACS = 600_000.0
DISTS = {"prune.sparsity": FloatDistribution(0.0, 0.9),
         "prune.method": CategoricalDistribution(["magnitude", "lamp", "l1_filter"]),
         "prune.granularity": CategoricalDistribution(["weight", "channel"]),
         "finetune.recipe": CategoricalDistribution(["none", "standard", "fast"]),
         "quant.mode": CategoricalDistribution(["none", "ptq"]),
         "quant.weight_bits": IntDistribution(4, 8, step=4)}


def handmade_study(*, certified: bool = True, constraints: bool = True, n: int = 14, storage: str | None = None,
                   name: str = "handmade") -> optuna.Study:
    """A study of made-up trials shaped like real ones, with two baselines and certified test numbers."""
    rng = random.Random(0)
    study = optuna.create_study(directions=DIRECTIONS, study_name=name, storage=storage)  # default in memory: fast
    study.set_metric_names(OBJECTIVE_NAMES["macs"])
    study.set_user_attr(CONFIG_ATTR, to_dict(build(StudyConfig, {"name": name, "n_trials": 20})))

    def add(params: dict, clean: float, robust: float, macs: float, **attrs) -> None:
        stages = {"stage_prune_clean_acc": clean - 0.2, "stage_prune_pgd_acc": robust - 0.2,
                  "stage_finetune_clean_acc": clean, "stage_finetune_pgd_acc": robust}
        if params.get("quant.mode") == "ptq":
            stages |= {"stage_quantize_clean_acc": clean - 0.01, "stage_quantize_pgd_acc": robust - 0.01}
        test = {"test_clean_acc": clean - 0.02, "test_worst_acc": robust - 0.05} if certified else {}
        cons = {"max_macs": (macs - MAX_MACS) / MAX_MACS} if constraints else None
        study.add_trial(optuna.trial.create_trial(
            values=[clean, robust, macs], params=params, distributions={k: DISTS[k] for k in params},
            user_attrs={"dense_macs": DENSE_MACS, "macs": macs, "time_s": 10.0, **stages, **test, **attrs},
            constraints=cons))

    # baselines first, as create_study enqueues them: the dense model and a named one
    add({"prune.sparsity": 0.0, "prune.method": "magnitude", "prune.granularity": "weight",
         "finetune.recipe": "none", "quant.mode": "none"}, 0.92, 0.30, DENSE_MACS, baseline=True)
    add({"prune.sparsity": 0.5, "prune.method": "l1_filter", "prune.granularity": "channel",
         "finetune.recipe": "fast", "quant.mode": "none"}, 0.85, 0.45, 0.5 * DENSE_MACS, baseline=True,
        baseline_name="dense_aft")
    for k in range(n):
        s = rng.uniform(0.3, 0.9)
        method = rng.choice(["magnitude", "lamp", "l1_filter"])
        recipe = rng.choice(["none", "standard", "fast"])
        qmode = rng.choice(["none", "ptq"])
        params = {"prune.sparsity": s, "prune.method": method, "finetune.recipe": recipe, "quant.mode": qmode,
                  "prune.granularity": "channel" if method == "l1_filter" else "weight"}
        if qmode == "ptq":
            params["quant.weight_bits"] = 8
        clean = 0.9 - 0.3 * s**2 + rng.uniform(-0.02, 0.02)
        robust = 0.5 - 0.2 * s + (0.1 if recipe == "fast" else 0.0) + rng.uniform(-0.02, 0.02)
        # the masking checks' flags, as the objective stores them: one trial flagged
        add(params, clean, robust, DENSE_MACS * (1 - s), flag_strong_gap=k == 3, flag_zero_grad=False)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"time_s": 3.0}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study
