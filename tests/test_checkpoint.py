from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import searchprune.checkpoint as checkpoint_module
from searchprune.checkpoint import ensure_base_model, load_checkpoint, materialize, save_checkpoint, versions
from searchprune.config import DataConfig, ModelConfig, PruneConfig, QuantConfig, ThreatModel, TrainConfig, to_dict
from searchprune.data import make_splits
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.prune import prune_
from searchprune.quantize import quantize_

META = {"model": {"arch": "cnn8", "factory": None, "kwargs": {}},
        "dataset": {"name": "synthetic", "num_classes": 10, "in_channels": 1, "image_size": [28, 28],
                    "mean": [0.5], "std": [0.5]}}


def _model():
    return create_model("cnn8", in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.5,)).eval()


def test_materialize_keeps_the_original_working():
    m = _model()
    prune_(m, PruneConfig(sparsity=0.5), input_shape=(1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    y = m(x)
    plain = materialize(m)
    torch.testing.assert_close(plain(x), y)
    torch.testing.assert_close(m(x), y)  # the original still has its masks and still runs
    assert not any(k.endswith(".original") for k in plain.state_dict())


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("bits", [None, 4])
def test_round_trip_pruned_and_quantized(tmp_path, structured, bits):
    m = _model()
    cfg = PruneConfig(method="l1_filter", granularity="channel", allocation="uniform", sparsity=0.5) if structured \
        else PruneConfig(sparsity=0.7)
    prune_(m, cfg, input_shape=(1, 28, 28))
    meta = dict(META)
    if bits:
        q = QuantConfig(mode="ptq", weight_bits=bits, act_bits=8)
        calib = [(torch.rand(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
        quantize_(m, q, calib_loader=calib)
        meta["quant"] = to_dict(q)
    x = torch.rand(5, 1, 28, 28)
    want = m(x)
    save_checkpoint(tmp_path / "m.pt", m, meta)
    loaded, got_meta = load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=1e-4)
    assert got_meta["versions"]["torch"] == str(torch.__version__)
    # loads with weights_only=True: plain tensors and data only
    torch.load(tmp_path / "m.pt", weights_only=True)


def test_incompatible_or_bad_checkpoints_are_refused(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _model(), META)
    with pytest.raises(ConfigError, match="holds model 'cnn8', but the config asks for 'resnet20'"):
        load_checkpoint(tmp_path / "m.pt", expect_model={"arch": "resnet20", "factory": None})
    with pytest.raises(ConfigError, match="trained for dataset 'synthetic'"):
        load_checkpoint(tmp_path / "m.pt", expect_dataset={"name": "cifar10"})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a searchprune checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_versions_come_from_package_metadata_without_importing_optuna():
    v = versions()
    assert v["searchprune"] == version("searchprune") and v["optuna"] == version("optuna")
    code = "import sys, searchprune.checkpoint as c; c.versions(); print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_checkpoint_has_no_function_local_imports():
    tree = ast.parse(Path(checkpoint_module.__file__).read_text())
    nested = [node.lineno for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
              for node in ast.walk(fn) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert nested == []


def test_ensure_base_model_trains_once_then_loads(tmp_path, capsys):
    data = DataConfig(dataset="synthetic", train_size=32, val_size=64, test_size=32, batch_size=64,
                      eval_batch_size=64)
    model_cfg = ModelConfig(arch="mnist_small")
    recipe = TrainConfig(recipe="standard", epochs=1, lr=0.05, batch_size=64, max_batches=2)
    threat = ThreatModel(eps=0.02, alpha=0.01, steps=2)
    splits = make_splits(data)
    path = tmp_path / "base.pt"
    with pytest.raises(ConfigError, match="does not exist and model.train is not set"):
        ensure_base_model(path, model_cfg, splits, data=data, train_cfg=None, threat=threat,
                          device=torch.device("cpu"))
    trained, meta = ensure_base_model(path, model_cfg, splits, data=data, train_cfg=recipe, threat=threat,
                                      device=torch.device("cpu"), n_eval=32, progress=False)
    assert path.is_file() and "training base model mnist_small" in capsys.readouterr().out
    # the base model draws from every training image, not just data.train_size (32 would be one batch)
    assert meta["metrics"]["train_history"][0]["images"] == 2 * 64 and meta["metrics"]["n_val"] == 32
    assert not trained.training
    loaded, loaded_meta = ensure_base_model(path, model_cfg, splits, data=data, train_cfg=recipe, threat=threat,
                                            device=torch.device("cpu"))
    assert capsys.readouterr().out == ""  # loaded, not trained again
    assert loaded_meta["metrics"] == meta["metrics"]
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ConfigError, match="holds model 'mnist_small'"):
        ensure_base_model(path, ModelConfig(arch="cnn8"), splits, data=data, train_cfg=recipe, threat=threat,
                          device=torch.device("cpu"))
