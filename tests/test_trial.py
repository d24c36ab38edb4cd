"""The Optuna-free trial core on the synthetic set: every method, every stage, every measurement."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from _synthetic import synthetic_meta, trained_base

from searchprune.checkpoint import load_checkpoint, save_checkpoint
from searchprune.config import (
    EvalConfig,
    PruneConfig,
    QuantConfig,
    ThreatModel,
    TrainConfig,
    TrialParams,
)
from searchprune.data import BatchLoader
from searchprune.prune import get_method, list_methods
from searchprune.trial import (
    TrialContext,
    TrialDiverged,
    chance_threshold,
    checkpoint_metadata,
    run_trial,
    rung_threat,
)

THREAT = ThreatModel(eps=0.05, alpha=0.02, steps=3, random_start=False)
META = synthetic_meta("mnist_small")


@pytest.fixture(scope="module")
def base():
    return trained_base(THREAT, val_size=128, test_size=64)


def _ctx(base, tmp_path=None, **eval_kw):
    model, splits = base
    ev = EvalConfig(n_eval=64, n_stage_eval=32, check_apgd_steps=5, check_square_queries=10,
                    **{"transfer": False, "checks": False, "latency": False, **eval_kw})
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
    assert r.macs < r.base_macs, "pruning 60% must lower effective MACs"
    assert set(r.stages) == {"prune", "finetune"}
    assert r.layer_sparsity and 0 < r.sparsity < 1
    assert r.n_eval == 64


def test_stages_flags_costs_and_checkpoint(base, tmp_path):
    params = TrialParams(prune=PruneConfig(sparsity=0.5), finetune=TrainConfig(recipe="standard", max_batches=2),
                         quant=QuantConfig(mode="ptq", weight_bits=4, act_bits=8), seed=3)
    ctx = _ctx(base, tmp_path / "cache", transfer=True, checks=True)
    r = run_trial(params, ctx)
    assert set(r.stages) == {"prune", "finetune", "quantize"}
    assert r.transfer_acc is not None and 0 <= r.transfer_acc <= 1
    assert set(r.flags) >= {"zero_grad", "strong_gap", "transfer_above_whitebox"}
    assert r.bitops == pytest.approx(r.macs * 4 * 8, rel=0.05)  # 4-bit weights x 8-bit activations
    assert r.cost("bitops") == r.bitops and r.cost("macs") == r.macs
    m = r.metrics()
    assert m["stage_quantize_clean_acc"] == r.stages["quantize"].clean_acc and m["mac_ratio"] < 1
    # the core writes nothing but its statistics cache; its model saved with its metadata rebuilds the
    # quantized, pruned model
    # and reproduces its clean accuracy
    # (the caches: transfer examples, and the latency cache of searchprune.deploy)
    assert not list(tmp_path.glob("*.pt")) and {p.name[:9] for p in (tmp_path / "cache").iterdir()} <= {
        "transfer-", "latency"}
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


class _Stop(Exception):
    pass


def test_rungs_measure_inside_one_fine_tuning_run(base):
    """A trial that passes every rung ends exactly where the uninterrupted trial ends (no rung paid twice)."""
    params = TrialParams(prune=PruneConfig(sparsity=0.7), finetune=TrainConfig(recipe="fast", epochs=2.0, lr=0.02,
                                                                               schedule="cosine"), seed=2)
    plain = run_trial(params, _ctx(base))
    ctx = _ctx(base)
    ctx.rung_n_eval, ctx.rung_pgd_steps = 16, 1
    calls: list[tuple[int, float, dict[str, float]]] = []
    rung = run_trial(params, ctx, rungs=(0.25, 0.75, 2.25), on_rung=lambda k, e, m: calls.append((k, e, dict(m))))
    # 512 train images / 64 = 8 batches per epoch; 2.25 epochs lies past the trial's 2 and is skipped
    assert [(k, e) for k, e, _ in calls] == [(0, 0.25), (1, 0.75)]
    for _, _, m in calls:
        assert m["n_eval"] == 16 and 0 <= m["pgd_acc"] == m["robust_acc"] <= m["clean_acc"] <= 1
        assert m["macs"] == plain.macs
    assert (rung.clean_acc, rung.robust_acc, rung.n_eval) == (plain.clean_acc, plain.robust_acc, 64)
    assert all(torch.equal(v, rung.model.state_dict()[k]) for k, v in plain.model.state_dict().items())


def test_an_exception_from_on_rung_ends_the_trial(base):
    params = TrialParams(prune=PruneConfig(sparsity=0.95), finetune=TrainConfig(recipe="fast", epochs=1), seed=0)
    seen: list[int] = []

    def on_rung(k, epochs_done, metrics):
        seen.append(k)
        if metrics["clean_acc"] < 0.99:
            raise _Stop(f"rung {k}: clean {metrics['clean_acc']:.3f}")

    with pytest.raises(_Stop, match="rung 0"):
        run_trial(params, _ctx(base), rungs=(0.25, 0.5), on_rung=on_rung)
    assert seen == [0]


def test_rung_threat_is_cheaper_and_still_reaches_the_ball():
    t = ThreatModel(eps=0.05, alpha=0.005, steps=20)
    cheap = rung_threat(t, 4)
    assert cheap.steps == 4 and cheap.alpha * cheap.steps >= 2 * t.eps and cheap.eps == t.eps
    assert rung_threat(t, None) is t and rung_threat(t, 50) is t


def test_a_study_context_computes_shared_work_once(base, tmp_path):
    """Scores per base model and data, identical prune steps and transfer examples: computed once, counted."""
    ctx = _ctx(base, tmp_path, transfer=True)
    gap = {"method": "gap", "granularity": "weight", "allocation": "global", "options": {"n_batches": 1}}
    ft = TrainConfig(recipe="fast", max_batches=1)
    a = run_trial(TrialParams(prune=PruneConfig(sparsity=0.5, **gap), finetune=ft, seed=1), ctx)
    b = run_trial(TrialParams(prune=PruneConfig(sparsity=0.7, **gap), finetune=ft, seed=2), ctx)
    c = run_trial(TrialParams(prune=PruneConfig(sparsity=0.5, **gap), finetune=ft, seed=3), ctx)  # = a's step
    cache = ctx.stat_cache
    assert (cache.misses["scores"], cache.hits["scores"]) == (1, 1)  # c's step never reached the scores
    assert (cache.misses["prune_step"], cache.hits["prune_step"]) == (2, 1)
    assert (cache.misses["transfer"], cache.hits["transfer"]) == (1, 2)
    assert c.layer_sparsity == a.layer_sparsity and b.sparsity > a.sparsity
    # the random method's step depends on the seed: no reuse across seeds, reuse for the same seed
    rnd = TrialParams(prune=PruneConfig(method="random", sparsity=0.5), finetune=ft, seed=4)
    first = run_trial(rnd, ctx)
    run_trial(TrialParams(prune=rnd.prune, finetune=ft, seed=5), ctx)
    again = run_trial(rnd, ctx)
    assert (cache.misses["prune_step"], cache.hits["prune_step"]) == (4, 2)
    assert (again.clean_acc, again.robust_acc) == (first.clean_acc, first.robust_acc)  # a hit changes nothing
    # a second context on the same directory (another worker) reads the scores and transfer examples
    other = _ctx(base, tmp_path, transfer=True)
    run_trial(TrialParams(prune=PruneConfig(sparsity=0.6, **gap), finetune=ft, seed=6), other)
    assert other.stat_cache.hits["scores"] == 1 and other.stat_cache.hits["transfer"] == 1
    assert not other.stat_cache.misses["scores"] and not other.stat_cache.misses["transfer"]


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


def test_a_diverging_fine_tune_fails_the_trial_with_the_reason(base):
    params = TrialParams(prune=PruneConfig(sparsity=0.5), finetune=TrainConfig(recipe="standard", epochs=1, lr=1e12))
    with pytest.raises(TrialDiverged, match=r"fine-tuning diverged: train_: the loss became (nan|inf)"):
        run_trial(params, _ctx(base))


def test_non_finite_weights_fail_the_trial_naming_the_tensor(base):
    model, splits = base
    broken = copy.deepcopy(model)
    bias = next(p for n, p in broken.named_parameters() if n.endswith("bias"))  # pruning scores weights only
    with torch.no_grad():
        bias.view(-1)[0] = float("inf")
    with pytest.raises(TrialDiverged, match=r"after pruning: non-finite values in .*bias"):
        run_trial(TrialParams(prune=PruneConfig(sparsity=0.1)), _ctx((broken, splits)))


def test_chance_level_is_flagged(base):
    model, splits = base
    r = run_trial(TrialParams(prune=PruneConfig(sparsity=0.1)), _ctx(base))
    assert r.flags["chance"] is False and r.clean_acc > r.checks["chance_threshold"]
    constant = copy.deepcopy(model)  # a zero classifier: constant logits, the same class for every image
    classifier = [m for m in constant.modules() if getattr(m, "is_classifier", False)][-1]
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
    r = run_trial(TrialParams(prune=PruneConfig(sparsity=0.1)), _ctx((constant, splits)))
    assert r.flags["chance"] is True and r.clean_acc <= r.checks["chance_threshold"]
    assert chance_threshold(10, 64) == pytest.approx(0.1 + 2 * (0.09 / 64) ** 0.5)
    assert chance_threshold(10, 10**6) == pytest.approx(0.12)  # never closer to chance than 0.02
