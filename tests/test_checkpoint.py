from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from _evil import FACTORY, evil_meta
from _synthetic import synthetic_meta

import searchprune
import searchprune.checkpoint as checkpoint_module
from searchprune.checkpoint import (
    ensure_base_model,
    load_checkpoint,
    materialize,
    save_checkpoint,
    versions,
    weights_sha256,
)
from searchprune.config import DataConfig, ModelConfig, PruneConfig, QuantConfig, ThreatModel, TrainConfig, to_dict
from searchprune.data import make_splits
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.prune import prune_
from searchprune.quantize import quantize_

META = synthetic_meta("cnn8", std=0.5)


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


# ---- loading runs no code a file names; damaged weights are refused --------------------------------


@pytest.mark.parametrize("factory", ["os:system", FACTORY])
def test_a_checkpoint_naming_a_factory_runs_nothing(tmp_path, factory):
    marker = tmp_path / "marker"
    kwargs = {"command": f"touch {marker}"} if factory == "os:system" else {"marker": str(marker)}
    path = save_checkpoint(tmp_path / "evil.pt", _model(), evil_meta(factory, kwargs))
    with pytest.raises(ConfigError, match=rf"names model.factory '{factory}'.*--trust-factory {factory}") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--trust-factory"):
        searchprune.load(path)
    with pytest.raises(ConfigError, match="--trust-factory"):  # trusting another factory is no trust in this one
        searchprune.load(path, trust_factory="somewhere:else")
    assert not marker.exists()


def test_a_trusted_factory_is_honoured(tmp_path):
    marker = tmp_path / "marker"
    path = save_checkpoint(tmp_path / "own.pt", _model(), evil_meta(FACTORY, {"marker": str(marker)}))
    model = searchprune.load(path, trust_factory=FACTORY)
    assert marker.exists() and isinstance(model, torch.nn.Module)  # the marker shows the factory really ran


def test_a_study_base_checkpoint_naming_a_factory_runs_nothing(tmp_path):
    """The study's model.checkpoint: the user's config names an arch, the file a factory."""
    data = DataConfig(dataset="synthetic", train_size=32, val_size=64, test_size=32)
    marker = tmp_path / "marker"
    path = save_checkpoint(tmp_path / "base.pt", _model(), evil_meta("os:system", {"command": f"touch {marker}"}))
    for model_cfg in (ModelConfig(arch="cnn8"), ModelConfig(arch=None, factory=FACTORY)):
        with pytest.raises(ConfigError, match="'os:system'"):
            ensure_base_model(path, model_cfg, make_splits(data), data=data, train_cfg=None, threat=ThreatModel(),
                              device=torch.device("cpu"))
    assert not marker.exists()


def test_the_weights_hash_is_recorded_and_verified(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _model(), META)
    payload = torch.load(path, weights_only=True)
    assert payload["meta"]["weights_sha256"] == weights_sha256(payload["state_dict"])
    # one weight changed and saved again: the file parses, the hash does not match
    first = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][first].view(-1)[0] += 1.0
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(ConfigError, match="is damaged: its weights do not match the sha256") as e:
        load_checkpoint(tmp_path / "damaged.pt")
    assert "\n" not in str(e.value)


def test_flipped_tensor_bytes_in_the_file_are_refused(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    raw = bytearray(path.read_bytes())
    weight = next(v for k, v in model.state_dict().items() if k.endswith("weight") and v.numel() >= 64)
    needle = weight.detach().contiguous().view(-1)[:16].numpy().tobytes()
    at = raw.find(needle)
    assert at > 0  # the zip stores tensors uncompressed
    raw[at:at + 4] = bytes(b ^ 0x55 for b in raw[at:at + 4])
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="sha256|could not be read") as e:
        load_checkpoint(tmp_path / "flipped.pt")
    assert "\n" not in str(e.value)
