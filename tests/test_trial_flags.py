"""Issue 9 in the trial core: what a fired masking flag does (worst / record), and the deployed int8
model attacked itself next to its fake-quant twin."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _synthetic import synthetic_meta, trained_base

import searchprune.trial as trial_module
from searchprune.config import EvalConfig, PruneConfig, QuantConfig, ThreatModel, TrialParams
from searchprune.trial import TrialContext, run_trial

THREAT = ThreatModel(eps=0.1, alpha=0.02, steps=3, random_start=False)
META = synthetic_meta("mnist_small")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base():
    return trained_base(THREAT, val_size=96, test_size=32)


def _ctx(base, **eval_kw) -> TrialContext:
    model, splits = base
    ev = EvalConfig(**{"n_eval": 64, "n_stage_eval": 32, "stagewise": False, "transfer": False, "checks": False,
                       "latency": False, "check_apgd_steps": 3, "check_square_queries": 10, **eval_kw})
    return TrialContext(base_model=model, base_meta=META, splits=splits, threat=THREAT, eval=ev, eval_batch_size=32)


@pytest.fixture
def always_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real masking report of the trial's model, with its strong_gap flag raised."""
    real = trial_module.masking_checks

    def flagging(*args, **kwargs):  # type: ignore[no-untyped-def]
        report = real(*args, **kwargs)
        return dataclasses.replace(report, flags={**report.flags, "strong_gap": True})

    monkeypatch.setattr(trial_module, "masking_checks", flagging)


PARAMS = TrialParams(prune=PruneConfig(sparsity=0.5), finetune=None, seed=2)


def test_on_flag_worst_reruns_the_strong_attacks(base, always_flagged) -> None:
    r = run_trial(PARAMS, _ctx(base, checks=True, on_flag="worst", strong_attacks=("pgd", "square:queries=30")))
    assert r.flagged and r.flag_reason is not None and r.flag_reason.startswith("masking: strong_gap")
    assert r.robust_from == "worst"
    assert set(r.strong_acc) == {"pgd", "square", "worst"}
    assert r.robust_acc == min(r.pgd_acc, r.strong_acc["worst"]) <= r.strong_acc["square"]
    m = r.metrics()
    assert m["robust_from"] == "worst" and m["strong_acc_worst"] == r.strong_acc["worst"] and "flag_reason" in m


def test_on_flag_record_keeps_the_pgd_objective(base, always_flagged) -> None:
    r = run_trial(PARAMS, _ctx(base, checks=True, on_flag="record"))
    assert r.flagged and r.robust_from == "pgd" and r.robust_acc == r.pgd_acc and not r.strong_acc


def test_the_deployed_int8_model_is_attacked_itself(base) -> None:
    params = TrialParams(prune=PruneConfig(sparsity=0.5), finetune=None, seed=1,
                         quant=QuantConfig(mode="ptq", weight_bits=8, act_bits=8))
    r = run_trial(params, _ctx(base, int8_attack=True))
    i8 = r.int8
    assert i8["int8_n"] == 32 and i8["int8_square_queries"] == 10
    assert i8["int8_agreement"] >= 0.9  # the int8 kernels compute (almost) the fake-quant function
    assert abs(i8["int8_clean_acc"] - i8["int8_fq_clean_acc"]) <= 0.1
    assert i8["int8_worst_acc"] <= min(i8["int8_transfer_acc"], i8["int8_square_acc"]) <= i8["int8_clean_acc"]
    assert r.metrics()["int8_worst_acc"] == i8["int8_worst_acc"]  # stored as trial attributes
    four_bit = run_trial(dataclasses.replace(params, quant=QuantConfig(mode="ptq", weight_bits=4, act_bits=8)),
                         _ctx(base, int8_attack=True))
    assert not four_bit.int8  # no int8 form of a 4-bit model
