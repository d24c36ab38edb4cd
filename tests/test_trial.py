"""The Optuna-free trial core on the synthetic set: every method, every stage, every measurement."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from searchprune.checkpoint import load_checkpoint, save_checkpoint
from searchprune.config import (
    DataConfig,
    EvalConfig,
    GateConfig,
    PruneConfig,
    QuantConfig,
    ThreatModel,
    TrainConfig,
    TrialParams,
)
from searchprune.data import BatchLoader, make_splits
from searchprune.models import create_model
from searchprune.prune import get_method, list_methods
from searchprune.train import train_
from searchprune.trial import TrialContext, TrialGated, checkpoint_metadata, run_trial

THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=3, random_start=False)
META = {"model": {"arch": "mnist_small", "factory": None, "kwargs": {}},
        "dataset": {"name": "synthetic", "num_classes": 10, "in_channels": 1, "image_size": [28, 28],
                    "mean": [0.5], "std": [0.25]}}


@pytest.fixture(scope="module")
def base():
    splits = make_splits(DataConfig(dataset="synthetic", train_size=512, val_size=128, test_size=64, seed=0))
    torch.manual_seed(0)
    model = create_model("mnist_small", in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.25,))
    train_(model, BatchLoader(splits.train, 64, shuffle=True), TrainConfig(epochs=2, lr=0.05), threat=THREAT)
    return model.eval(), splits


def _ctx(base, tmp_path=None, **eval_kw):
    model, splits = base
    ev = EvalConfig(n_eval=64, n_stage_eval=32, check_apgd_steps=5, check_square_queries=10,
                    **{"transfer": False, "checks": False, **eval_kw})
    return TrialContext(base_model=model, base_meta=META, splits=splits, threat=THREAT, eval=ev,
                        eval_batch_size=64, cache_dir=tmp_path)


def _prune_cfg(method: str) -> PruneConfig:
    m = get_method(method)
    gran = "channel" if "weight" not in m.granularities else "weight"
    alloc = "learned" if "learned" in m.allocations and len(m.allocations) == 1 else m.allocations[0]
    small = {"hydra": {"prune_epochs": 1, "max_batches": 2}, "in_train": {"epochs": 0.5, "max_batches": 4},
             "gap": {"n_batches": 1}, "hessian": {"n_samples": 8}}
    return PruneConfig(method=method, granularity=gran, allocation=alloc, sparsity=0.6,
                       options=small.get(method, {}))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_runs_through_the_core(base, method):
    params = TrialParams(prune=_prune_cfg(method), finetune=TrainConfig(recipe="fast", epochs=1, max_batches=2),
                         seed=1)
    r = run_trial(params, _ctx(base))
    assert 0 <= r.robust_acc <= r.clean_acc <= 1  # attacks leave misclassified inputs as they are
    assert r.macs < r.dense_macs, "pruning 60% must lower effective MACs"
    assert set(r.stages) == {"prune", "finetune"}
    assert r.layer_sparsity and 0 < r.sparsity < 1
    assert r.n_eval == 64


def test_stages_flags_costs_and_checkpoint(base, tmp_path):
    params = TrialParams(prune=PruneConfig(sparsity=0.5), finetune=TrainConfig(recipe="standard", max_batches=2),
                         quant=QuantConfig(mode="ptq", weight_bits=4, act_bits=8), seed=3)
    ctx = _ctx(base, tmp_path, transfer=True, checks=True)
    r = run_trial(params, ctx)
    assert set(r.stages) == {"prune", "finetune", "quantize"}
    assert r.transfer_acc is not None and 0 <= r.transfer_acc <= 1
    assert set(r.flags) >= {"zero_grad", "strong_gap", "transfer_above_whitebox"}
    assert r.bitops == pytest.approx(r.macs * 4 * 8, rel=0.05)  # 4-bit weights x 8-bit activations
    assert r.cost("bitops") == r.bitops and r.cost("macs") == r.macs
    m = r.metrics()
    assert m["stage_quantize_clean_acc"] == r.stages["quantize"].clean_acc and m["mac_ratio"] < 1
    # the core writes nothing; its model saved with its metadata rebuilds the quantized, pruned model
    # and reproduces its clean accuracy
    assert not list(tmp_path.glob("*.pt"))
    assert r.model is not None
    path = save_checkpoint(tmp_path / "t.pt", r.model, checkpoint_metadata(params, ctx, r))
    model, meta = load_checkpoint(path)
    assert meta["quant"]["weight_bits"] == 4
    x, y = next(iter(ctx.val_loader(64)))
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(r.clean_acc, abs=1e-6)


def test_same_params_same_result(base):
    params = TrialParams(prune=PruneConfig(method="random", sparsity=0.4),
                         finetune=TrainConfig(recipe="fast", max_batches=2), seed=5)
    a, b = run_trial(params, _ctx(base)), run_trial(params, _ctx(base))
    assert (a.clean_acc, a.robust_acc, a.macs) == (b.clean_acc, b.robust_acc, b.macs)


def test_base_model_is_untouched(base):
    model, _ = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_trial(TrialParams(prune=PruneConfig(sparsity=0.9), finetune=TrainConfig(max_batches=2)), _ctx(base))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gate_stops_a_hopeless_trial(base):
    ctx = _ctx(base)
    ctx.gate = GateConfig(enabled=True, epochs=0.1, min_clean_acc=0.99)
    params = TrialParams(prune=PruneConfig(sparsity=0.95), finetune=TrainConfig(recipe="fast", epochs=1), seed=0)
    with pytest.raises(TrialGated, match="floor 0.99") as gated:
        run_trial(params, ctx)
    assert "clean_acc" in gated.value.metrics


def test_transfer_examples_attack_the_dense_model(base):
    """On the dense model itself, transfer accuracy is its own white-box PGD accuracy."""
    ctx = _ctx(base, transfer=True)
    r = run_trial(TrialParams(prune=PruneConfig(sparsity=0.0)), ctx)
    assert r.transfer_acc == pytest.approx(r.pgd_acc, abs=0.02) and r.transfer_acc < r.clean_acc


def test_attacks_work_under_no_grad(base):
    from searchprune.attacks import apgd, fgsm, pgd

    model, splits = base
    x, y = next(iter(BatchLoader(splits.val, 32)))
    with torch.no_grad():
        for x_adv in (pgd(model, x, y, eps=0.1, alpha=0.02, steps=5), fgsm(model, x, y, eps=0.1),
                      apgd(model, x, y, eps=0.1, steps=5)):
            assert (x_adv - x).abs().max() > 0.05


def test_the_core_never_imports_optuna():
    """run_trial and everything below it are plain PyTorch: Optuna stays in the search layer."""
    code = "import sys, searchprune.trial; assert 'optuna' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
