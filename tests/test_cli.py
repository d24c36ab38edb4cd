"""End to end through the CLI on the synthetic dataset: create, optimize, pareto, export, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from searchprune.cli import main


def write_study(tmp_path: Path, **overrides) -> Path:
    cfg = {
        "name": "e2e",
        "output_dir": str(tmp_path / "runs" / "{name}"),
        "n_trials": 2,
        "data": {"dataset": "synthetic", "train_size": 512, "val_size": 200, "test_size": 200,
                 "batch_size": 64, "eval_batch_size": 100},
        "model": {"arch": "mnist_small", "checkpoint": str(tmp_path / "base.pt"),
                  "train": {"recipe": "standard", "epochs": 2, "lr": 0.05}},
        "threat": {"eps": 0.1, "alpha": 0.02, "steps": 5, "random_start": False},
        # PGD-5 is weak enough that APGD beats it by > 5 points (strong_gap): record the flags, so the
        # CLI path under test keeps a feasible front (what flags do is tested in search/test_certify.py)
        "eval": {"n_eval": 100, "n_stage_eval": 64, "export_attacks": ["pgd"], "on_flag": "record", "latency": False},
        "defaults": {"prune": {"method": "magnitude", "sparsity": 0.5},
                     "finetune": {"recipe": "fast", "epochs": 1, "lr": 0.02}},
        "space": {"prune.sparsity": {"low": 0.3, "high": 0.8},
                  "finetune.recipe": ["none", "fast"]},
        "sampler": {"name": "random", "seed": 0},
    }
    cfg.update(overrides)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_create_optimize_pareto_export_eval(tmp_path, capsys):
    cfg = write_study(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["study", "create", "--config", str(cfg), "--storage", storage]) == 0
    # creating it twice is refused, and nothing stored is touched
    assert main(["study", "create", "--config", str(cfg), "--storage", storage]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["study", "optimize", "--name", "e2e", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert '"complete": 2' in out

    assert main(["study", "pareto", "--name", "e2e", "--storage", storage]) == 0
    table = capsys.readouterr().out
    assert "robust_acc" in table and "clean_acc" in table

    # resuming with a higher target runs only the missing trial
    assert main(["study", "optimize", "--name", "e2e", "--storage", storage, "--n-trials", "3"]) == 0
    assert '"complete": 3' in capsys.readouterr().out

    export = tmp_path / "export"
    assert main(["study", "export", "--name", "e2e", "--storage", storage,
                 "--rule", "max robust_acc", "--out", str(export)]) == 0
    meta = json.loads((export / "metadata.json").read_text())
    assert (export / "model.pt").is_file()
    assert meta["verification"]["clean_acc"]["export"] == pytest.approx(meta["verification"]["clean_acc"]["trial"],
                                                                         abs=meta["verification"]["clean_acc"]["tolerance"])
    capsys.readouterr()
    assert main(["eval", str(export)]) == 0
    out = capsys.readouterr().out
    assert "clean_acc" in out and "recorded" in out

    # the plain-PyTorch artifact loads without searchprune and gives the same predictions
    import torch

    from searchprune import load

    model = load(export)
    x = torch.rand(4, 1, 28, 28)
    if (export / "model_plain.pt2").exists():
        plain = torch.export.load(str(export / "model_plain.pt2")).module()
    else:
        plain = torch.jit.load(str(export / "model_plain.ts"))
    torch.testing.assert_close(plain(x), model(x))
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed")
    proto = onnx.load(str(export / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # any batch size


def test_user_errors_print_one_line(tmp_path, capsys):
    assert main(["study", "create", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = write_study(tmp_path, threat={"eps": "lots"})
    assert main(["study", "create", "--config", str(bad)]) == 2
    assert "threat.eps: expected a number, got 'lots'" in capsys.readouterr().err
    bad = write_study(tmp_path, space={"prune.method": ["magnitude", "nonsense"]})
    assert main(["study", "create", "--config", str(bad), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "space.prune.method: unknown value 'nonsense'" in capsys.readouterr().err
    assert main(["study", "show", "--name", "nope", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
