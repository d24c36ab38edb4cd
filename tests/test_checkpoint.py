from __future__ import annotations

import pytest
import torch

from searchprune.checkpoint import load_checkpoint, materialize, save_checkpoint
from searchprune.config import PruneConfig, QuantConfig, to_dict
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
