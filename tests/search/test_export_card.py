"""The export is the deployable form (BN folded, checked equal to the searchprune model) and carries a
model card (issue 14): a real one-trial study on synthetic data, channel-pruned with round_to."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import torch

from searchprune import load
from searchprune.config import StudyConfig, build
from searchprune.errors import ConfigError
from searchprune.search import create_study, export_trial, optimize, validate_study
from searchprune.search.model_card import model_card


def _cfg(tmp_path, **space) -> StudyConfig:
    return build(StudyConfig, {
        "name": "card", "output_dir": str(tmp_path / "runs"), "n_trials": 1,
        "data": {"dataset": "synthetic", "train_size": 256, "val_size": 128, "test_size": 128, "batch_size": 64,
                 "eval_batch_size": 64},
        "model": {"factory": "_bn_net:conv_bn", "checkpoint": str(tmp_path / "base.pt"),
                  "train": {"recipe": "standard", "epochs": 2, "lr": 0.1}},
        "threat": {"eps": 0.1, "alpha": 0.05, "steps": 2},
        "eval": {"n_eval": 64, "n_stage_eval": 32, "export_attacks": ["pgd", "fgsm"], "transfer": False,
                 "checks": False, "stagewise": False},
        "defaults": {"prune": {"method": "l1_filter", "granularity": "channel", "allocation": "uniform",
                               "sparsity": 0.5}, "finetune": None},
        "space": {"prune.sparsity": [0.5], "prune.options.round_to": [8], **space},
        "sampler": {"name": "random", "seed": 0},
    })


def test_round_to_is_searchable_and_checked(tmp_path):
    validate_study(_cfg(tmp_path, **{"prune.options.round_to": [4, 8]}))
    with pytest.raises(ConfigError, match=r"round_to.*got 0"):
        validate_study(_cfg(tmp_path, **{"prune.options.round_to": [0, 8]}))


def test_export_is_the_deployable_form_with_a_model_card(tmp_path):
    cfg = _cfg(tmp_path)
    url = f"sqlite:///{tmp_path / 'card.db'}"
    create_study(cfg, storage=url)
    study = optimize("card", url, n_trials=1, quiet=True, progress=False)
    (trial,) = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    out = tmp_path / "export"
    meta = export_trial(study, trial, out, progress=False, trust_factory="_bn_net:conv_bn")

    # the deployable form: BN folded into both convs, and equal in outputs to the searchprune model
    dep = meta["deploy"]
    assert len(dep["form"]["folded_bn"]) == 2
    assert dep["equal"] and dep["plain_file"]["equal"] and dep["agreement"] == 1.0
    assert dep["latency_ms"] > 0 and dep["latency_ms_batch1"] > 0 and dep["size_bytes"] > 0
    plain = torch.export.load(str(out / "model_plain.pt2")).module()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    x = torch.rand(5, 1, 28, 28)
    model = load(out, trust_factory="_bn_net:conv_bn").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)
    # round_to 8 kept channel counts on multiples of 8
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels % 8 for c in convs] == [0, 0] and convs[0].out_channels < 16

    card = (out / "README.md").read_text()
    tm, test = meta["trial_metrics"], meta["test_metrics"]
    assert card.startswith("# _bn_net:conv_bn on synthetic: l1_filter pruning, ")
    for text in ("channel granularity, uniform allocation, options {'round_to': 8}",
                 "32-bit float weights (not quantized)",
                 f"Study `card`, trial {trial.number}, trial seed {tm['seed']}",
                 "Fine-tuning recipe: none (no fine-tuning)",
                 "LINF ball, eps 0.1 (= 25.5/255) on the [0, 1] pixel scale; PGD with 2 steps of 0.05",
                 f"| validation (during the search) | 64 | {100 * tm['clean_acc']:.2f}% | "
                 f"{100 * tm['robust_acc']:.2f}% |",
                 f"| test (at export) | 128 | {100 * test['clean_acc']:.2f}% | {100 * test['worst_acc']:.2f}% "
                 "(worst case) | pgd, fgsm |",
                 f"pgd {100 * test['acc_pgd']:.2f}%, fgsm {100 * test['acc_fgsm']:.2f}%",
                 f"| MACs | {tm['macs'] / 1e6:.3f} M ({100 * tm['mac_ratio']:.2f}% of the dense",
                 f"| size as deployed | {dep['size_bytes'] / 1e3:.1f} kB |",
                 f"| latency, batch 128 | {dep['latency_ms']:.2f} ms |",
                 "not measured (run `searchprune study certify`)",
                 "BatchNorm folded into 2 layer(s)",
                 'torch.export.load("EXPORT_DIR/model_plain.pt2").module()',
                 'searchprune.load("EXPORT_DIR")', 'ort.InferenceSession("EXPORT_DIR/model.onnx")',
                 "torch.rand(1, 1, 28, 28)"):
        assert text in card, text
    assert json.loads((out / "metadata.json").read_text())["deploy"]["equal"] is True


def test_model_card_shows_certified_numbers_when_stored():
    meta = {"study": "s", "trial": 3, "rule": "max robust_acc", "model": {"arch": "resnet20"},
            "dataset": {"name": "cifar10", "in_channels": 3, "image_size": [32, 32]},
            "prune": {"method": "hydra", "granularity": "weight", "allocation": "learned"},
            "quant": {"mode": "qat", "weight_bits": 8}, "finetune": {"recipe": "trades", "epochs": 2, "lr": 0.01},
            "trial_metrics": {"sparsity": 0.9, "clean_acc": 0.8, "robust_acc": 0.45, "test_clean_acc": 0.79,
                              "test_worst_acc": 0.41, "test_acc_apgd": 0.43, "test_n": 10000},
            "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10}}
    card = model_card(meta)
    assert card.startswith("# resnet20 on cifar10: hydra pruning, 90.00% sparse, 8-bit weights (qat)")
    assert "picked by the rule `max robust_acc`" in card
    assert "| test, certified (`study certify`) | 10000 | 79.00% | 41.00% (worst case) | apgd |" in card
    assert "eps 0.0314 (= 8/255)" in card
    assert re.search(r"\| MACs \| not measured", card)  # nothing made up
    assert "torch.rand(1, 3, 32, 32)" in card


def test_the_plain_file_round_trip_prints_no_torch_archive_warning(tmp_path):
    """Buffers that are views of one storage make torch's pt2 archive warn as it saves and loads
    ("No complete tensor found in the group"); the export's round trip keeps that off the user's screen."""
    import warnings

    from searchprune.search.export import _load_plain, _write_plain

    class Views(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = torch.randn(20)
            self.register_buffer("a", base[2:12])
            self.register_buffer("b", base[5:15])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.a.sum() + self.b.sum()

    model = Views().eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        written = _write_plain(model, torch.randn(3, 4), tmp_path)
        plain = _load_plain(tmp_path, written)
    assert written.get("torch_export") == "model_plain.pt2"
    assert not [w for w in seen if "No complete tensor" in str(w.message)]
    x = torch.randn(2, 4)
    assert torch.allclose(plain(x), model(x))  # the same function, loaded back
