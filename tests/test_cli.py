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
    n_all = int(out.split("test (")[1].split()[0])
    assert main(["eval", str(export), "--n-test", "7", "--quiet"]) == 0  # the first 7 test images only
    assert "test (7 images)" in capsys.readouterr().out and n_all > 7
    assert main(["eval", str(export), "--n-test", "0"]) == 2
    assert "--n-test: expected >= 1, got 0" in capsys.readouterr().err

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
    assert not (tmp_path / "x.db").exists()  # the refused create stored nothing
    import optuna

    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["study", "show", "--name", "nope", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "no study named 'nope' in sqlite:///" in capsys.readouterr().err


# ---- untrusted files run no code; a misspelled storage path creates nothing ------------------------------


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint free of pickled objects whose metadata names ``os:system`` with a shell command."""
    from _evil import evil_meta

    from searchprune.checkpoint import save_checkpoint
    from searchprune.models import create_model

    marker = tmp_path / "marker"
    model = create_model("mnist_small", in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.5,))
    path = save_checkpoint(tmp_path / "evil.pt", model, evil_meta("os:system", {"command": f"touch {marker}"}))
    return path, marker


def test_eval_of_an_export_naming_a_factory_runs_nothing(tmp_path, capsys):
    path, marker = _evil_checkpoint(tmp_path)
    export = tmp_path / "export"
    export.mkdir()
    path.rename(export / "model.pt")
    (export / "metadata.json").write_text(json.dumps({
        "data": {"dataset": "synthetic", "val_size": 64, "test_size": 32}, "threat": {"eps": 0.05},
        "eval_attacks": ["pgd"]}))
    assert main(["eval", str(export)]) == 2
    err = capsys.readouterr().err
    assert "names model.factory 'os:system'" in err and "--trust-factory os:system" in err
    assert err.count("\n") == 1 and not marker.exists()


def test_export_of_a_trial_whose_checkpoint_names_a_factory_runs_nothing(tmp_path, capsys):
    import optuna

    path, marker = _evil_checkpoint(tmp_path)
    cfg = write_study(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["study", "create", "--config", str(cfg), "--storage", storage]) == 0
    study = optuna.load_study(study_name="e2e", storage=storage)
    study.add_trial(optuna.trial.create_trial(
        values=[0.9, 0.5, 1e5], params={"prune.sparsity": 0.5},
        distributions={"prune.sparsity": optuna.distributions.FloatDistribution(0.3, 0.8)},
        user_attrs={"checkpoint": str(path), "seed": 0, "clean_acc": 0.9, "pgd_acc": 0.5}))
    capsys.readouterr()
    for trust in ([], ["--trust-factory", "somewhere:else"]):
        assert main(["study", "export", "--name", "e2e", "--storage", storage, "--trial", "0",
                     "--out", str(tmp_path / "export"), *trust]) == 2
        err = capsys.readouterr().err
        assert "names model.factory 'os:system'" in err and err.count("\n") == 1
    assert not marker.exists()


def test_a_misspelled_sqlite_path_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no_such_dir" / "study.db"
    for cmd in (["show"], ["pareto"], ["export", "--rule", "max robust_acc", "--out", str(tmp_path / "out")]):
        assert main(["study", *cmd, "--name", "x", "--storage", f"sqlite:///{missing}"]) == 2
        err = capsys.readouterr().err
        assert "no such file" in err and err.count("\n") == 1
    assert not missing.parent.exists()
    journal = tmp_path / "typo.log"
    assert main(["study", "show", "--name", "x", "--storage", str(journal)]) == 2
    assert "no such file" in capsys.readouterr().err and not journal.exists()
    # --config of a study never created: its output directory is not made either
    cfg = write_study(tmp_path, output_dir=str(tmp_path / "never" / "{name}"))
    assert main(["study", "show", "--config", str(cfg)]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "never").exists()


def _idx_files(folder: Path, seed: int) -> Path:
    """The four MNIST-format files of a tiny Fashion-MNIST look-alike (30 train, 20 test images)."""
    import struct

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", 30), ("t10k", 20)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)),
                          ("labels-idx1", (np.arange(n) % 10).astype(np.uint8))):
            header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (folder / f"{split}-{kind}-ubyte").write_bytes(header + arr.tobytes())
    return folder


def test_eval_refuses_other_data_than_the_export_was_measured_on(tmp_path, capsys):
    from searchprune.checkpoint import save_checkpoint
    from searchprune.config import DataConfig, ModelConfig, build
    from searchprune.data import make_splits
    from searchprune.models import create_model
    from searchprune.search import split_fingerprint
    from searchprune.train import model_record

    right, other = _idx_files(tmp_path / "fmnist", seed=0), _idx_files(tmp_path / "elsewhere", seed=1)
    data = {"dataset": "fashion-mnist", "data_dir": str(right), "val_size": 10, "eval_batch_size": 20}
    splits = make_splits(build(DataConfig, data))
    export = tmp_path / "export"
    model = create_model("mnist_small", in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.5,))
    save_checkpoint(export / "model.pt", model, model_record(ModelConfig(arch="mnist_small"), splits.info))
    meta = {"data": data, "threat": {"eps": 0.05, "steps": 2}, "eval_attacks": ["pgd"],
            "test_sha256": split_fingerprint(splits.test)}
    (export / "metadata.json").write_text(json.dumps(meta))
    assert main(["eval", str(export)]) == 0  # the files it was measured on
    capsys.readouterr()
    assert main(["eval", str(export), "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "the test split of 'fashion-mnist' loaded from --data-dir" in err and "is not the one the export was " \
        "measured on" in err and err.count("\n") == 1
    # metadata naming another dataset than the checkpoint was trained for
    (export / "metadata.json").write_text(json.dumps({**meta, "data": {**data, "dataset": "mnist"}}))
    assert main(["eval", str(export)]) == 2
    assert "was trained for dataset 'fashion-mnist'" in capsys.readouterr().err
