"""A small real study on Fashion-MNIST (slow; skipped when the data is not installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from searchprune.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FMNIST.exists(),
                       reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist"),
]


def test_real_study_end_to_end(tmp_path, capsys):
    cfg = {
        "name": "fmnist_ci",
        "output_dir": str(tmp_path / "runs" / "{name}"),
        "n_trials": 2,
        "data": {"dataset": "fashion-mnist", "train_size": 2000, "val_size": 500, "test_size": 500},
        "model": {"arch": "cnn8", "checkpoint": str(tmp_path / "base.pt"),
                  "train": {"recipe": "standard", "epochs": 1, "lr": 0.02, "momentum": 0.9, "max_batches": 150}},
        "threat": {"eps": 0.05, "alpha": 0.005, "steps": 10, "random_start": False},
        "eval": {"n_eval": 200, "n_stage_eval": 100, "check_apgd_steps": 10, "check_square_queries": 20,
                 "export_attacks": ["pgd", "apgd"]},
        "defaults": {"prune": {"method": "magnitude", "sparsity": 0.5},
                     "finetune": {"recipe": "fast", "epochs": 1, "lr": 0.01}},
        "space": {"prune.sparsity": {"low": 0.5, "high": 0.9}},  # the recipe stays the default: fast AT
        "baselines": [],  # the standard base is the yardstick (its PGD is printed at optimize)
        "sampler": {"name": "tpe", "seed": 0},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["study", "create", "--config", str(path), "--storage", storage]) == 0
    assert main(["study", "optimize", "--name", "fmnist_ci", "--storage", storage, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "base model: val clean" in out
    base_clean = float(out.split("base model: val clean ")[1].split(",")[0])
    base_pgd = float(out.split("base model: val clean ")[1].split("PGD ")[1].split()[0])
    assert base_clean > 0.75, "a CNN-8 trained on real Fashion-MNIST for ~19k images is far above chance"

    import optuna

    study = optuna.load_study(study_name="fmnist_ci", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    pruned = max(done, key=lambda t: t.values[1])
    assert set(pruned.params) == {"prune.sparsity"}  # fine-tuned with the default recipe: fast AT
    assert pruned.user_attrs["mac_ratio"] < 0.6
    assert 0.5 < pruned.values[0] <= 1.0 and 0.0 <= pruned.values[1] <= pruned.values[0]
    # fast adversarial fine-tuning makes the pruned model more robust than the standard base
    assert pruned.values[1] > base_pgd

    assert main(["study", "export", "--name", "fmnist_ci", "--storage", storage, "--trial", str(pruned.number),
                 "--out", str(tmp_path / "export")]) == 0
    meta = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert meta["test_metrics"]["n"] == 500 and "acc_apgd" in meta["test_metrics"]
