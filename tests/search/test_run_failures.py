"""No silent wrong result from `study optimize`: bad run arguments, diverged trials, trials at chance level.

A trial whose fine-tuning diverges fails with the reason; a run in which every trial failed exits
non-zero saying how many and why; a trial at chance level completes flagged and infeasible, so it
never reaches the Pareto front or an export.
"""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_config, trials_of, write_yaml
from optuna.trial import TrialState

from searchprune.checkpoint import save_checkpoint
from searchprune.cli import main
from searchprune.config import ModelConfig
from searchprune.data import load_dataset
from searchprune.models import create_model
from searchprune.train import model_record

pytestmark = pytest.mark.usefixtures("one_thread")


def _create(tmp_path, base, **overrides) -> tuple[str, str]:
    cfg = tiny_config(tmp_path, base, **overrides)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["study", "create", "--config", str(write_yaml(tmp_path / "s.yaml", cfg)), "--storage", storage]) == 0
    return cfg["name"], storage


@pytest.mark.parametrize(("args", "message"), [
    (["--n-trials", "-1"], "--n-trials: expected a number of trials >= 0, got -1"),
    (["--workers", "0"], "--workers: expected at least 1 worker process, got 0"),
    (["--timeout", "-5"], "--timeout: expected seconds > 0, got -5.0"),
])
def test_bad_run_arguments_are_one_line_errors(tmp_path, base, capsys, args, message):
    name, storage = _create(tmp_path, base)
    capsys.readouterr()
    assert main(["study", "optimize", "--name", name, "--storage", storage, *args]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert trials_of(storage, name) == []  # nothing ran


def test_a_diverging_trial_fails_with_the_reason_and_the_run_exits_non_zero(tmp_path, base, capsys):
    # a learning rate of 1e12 sends the fine-tuning loss to inf/NaN within 8 batches
    name, storage = _create(tmp_path, base, space={"prune.sparsity": {"low": 0.3, "high": 0.6}},
                            defaults={"prune": {"method": "magnitude", "sparsity": 0.5},
                                      "finetune": {"recipe": "standard", "epochs": 2, "lr": 1e12}})
    capsys.readouterr()
    assert main(["study", "optimize", "--name", name, "--storage", storage]) == 1
    out = capsys.readouterr()
    assert ("error: all 2 trial(s) of this run failed; the most common reason (2x): TrialDiverged: "
            "fine-tuning diverged: train_: the loss became ") in out.err
    assert '"fail": 2' in out.out  # the summary still shows what is stored
    trials = trials_of(storage, name)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["fail_reason"].startswith("TrialDiverged: fine-tuning diverged") for t in trials)


def _chance_base(path) -> None:
    """A base model whose classifier is all zeros: constant logits, every image gets class 0."""
    _, _, info = load_dataset("synthetic")
    model = create_model("mnist_small", num_classes=info.num_classes, in_channels=info.in_channels,
                         image_size=info.image_size, mean=info.mean, std=info.std)
    classifier = [m for m in model.modules() if getattr(m, "is_classifier", False)][-1]
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
    save_checkpoint(path, model, {**model_record(ModelConfig(arch="mnist_small"), info), "metrics": {}})


def test_a_trial_at_chance_level_is_flagged_and_kept_off_the_front(tmp_path, capsys):
    base = tmp_path / "chance.pt"
    _chance_base(base)
    cfg = tiny_config(tmp_path, base, space={"prune.sparsity": {"low": 0.1, "high": 0.2}})
    cfg["model"] = {"arch": "mnist_small", "checkpoint": str(base)}  # no recipe: the file is the base
    cfg["defaults"] = {"prune": {"method": "magnitude", "sparsity": 0.1}, "finetune": None}
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["study", "create", "--config", str(write_yaml(tmp_path / "s.yaml", cfg)), "--storage", storage]) == 0
    assert main(["study", "optimize", "--name", "tiny", "--storage", storage]) == 0
    trials = trials_of(storage, "tiny")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs["clean_acc"] <= t.user_attrs["check_chance_threshold"]
        assert t.user_attrs["flag_chance"] is True and t.user_attrs["flag_any"] is True
        assert t.constraints["above_chance"] > 0 and t.user_attrs["feasible"] is False
    capsys.readouterr()
    assert main(["study", "pareto", "--name", "tiny", "--storage", storage]) == 0
    assert "0 trial(s)" in capsys.readouterr().out
    assert main(["study", "export", "--name", "tiny", "--storage", storage, "--rule", "max robust_acc",
                 "--out", str(tmp_path / "export")]) == 2
    assert "no completed feasible trials" in capsys.readouterr().err


def test_trials_above_chance_stay_feasible(tmp_path, base):
    name, storage = _create(tmp_path, base)
    assert main(["study", "optimize", "--name", name, "--storage", storage]) == 0
    for t in trials_of(storage, name):
        assert t.user_attrs["flag_chance"] is False and t.constraints["above_chance"] < 0
