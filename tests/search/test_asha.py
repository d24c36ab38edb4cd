"""MO-ASHA through the real objective on tiny synthetic studies: rungs, promotions, floors, two workers.

Each decision a trial stored (``rung_<k>_promoted``) is replayed with the pure ``promote`` rule against
the peers it recorded, so the test checks the wiring (objective -> run_trial -> on_rung -> pruner ->
storage), not a second copy of the rule.
"""

from __future__ import annotations

import pytest
from _tiny import tiny_study_config, trials_of
from optuna.trial import TrialState

from searchprune.config import build, to_dict
from searchprune.errors import ConfigError
from searchprune.search import create_study, optimize
from searchprune.search.pruner import DIRECTIONS, promote

pytestmark = pytest.mark.usefixtures("one_thread")

PRUNER = {"name": "mo_asha", "min_epochs": 0.25, "eta": 2, "max_epochs": 1.0, "min_trials_per_rung": 2,
          "rung_n_eval": 32, "rung_pgd_steps": 1}


def _cfg(tmp_path, base, name, n_trials, **pruner):
    return tiny_study_config(
        tmp_path, base, name=name, n_trials=n_trials, pruner={**PRUNER, **pruner},
        space={"prune.sparsity": {"low": 0.3, "high": 0.95}},
        defaults={"prune": {"method": "magnitude", "sparsity": 0.5},
                  "finetune": {"recipe": "fast", "epochs": 1.0, "lr": 0.02, "batch_size": 32}})


def _check_decisions(trials, n_rungs=2):
    """Every stored decision is what ``promote`` says for the stored peers; pruned trials stop there."""
    by_number = {t.number: t for t in trials}
    for t in trials:
        a = t.user_attrs
        assert a["cpu_s"] > 0  # every trial records its compute, pruned ones included
        ks = [k for k in range(n_rungs) if f"rung_{k}_promoted" in a]
        assert ks == list(range(len(ks)))
        for k in ks:
            peers = [(p, [by_number[p].user_attrs[f"rung_{k}_{o}"] for o in ("clean_acc", "robust_acc", "cost")])
                     for p in a[f"rung_{k}_peers"]]
            me = (t.number, [a[f"rung_{k}_{o}"] for o in ("clean_acc", "robust_acc", "cost")])
            assert promote(peers, me, 2, DIRECTIONS, min_trials=2)[0] == a[f"rung_{k}_promoted"]
            assert a[f"rung_{k}_cost"] == a[f"rung_{k}_macs"] and a[f"rung_{k}_n_eval"] == 32
            assert a[f"rung_{k}_epochs"] == (0.25, 0.5)[k]  # 128 train images / 32: 1 and 2 of 4 batches
        if t.state == TrialState.PRUNED:
            last = ks[-1]
            assert not a[f"rung_{last}_promoted"] and a["pruned_reason"].startswith(f"MO-ASHA rung {last}")
            assert t.values is None and "clean_acc" not in a  # stopped before the full measurement
        else:
            assert t.state == TrialState.COMPLETE, a.get("fail_reason")
            assert ks == [0, 1] and all(a[f"rung_{k}_promoted"] for k in ks)
            assert a["n_eval"] == 64  # the last measurement is the study's full evaluation


def test_pruner_section_is_validated_at_create(tmp_path, base):
    with pytest.raises(ConfigError, match="pruner.eta: expected an integer >= 2"):
        _cfg(tmp_path, base, "bad", 1, eta=1)
    with pytest.raises(ConfigError, match="pruner.floors.acc"):
        _cfg(tmp_path, base, "bad", 1, floors={"acc": 0.5})
    with pytest.raises(ConfigError, match="gate: the fixed gate is retired; use `pruner:"):
        tiny_study_config(tmp_path, base, gate={"enabled": True})
    cfg = _cfg(tmp_path, base, "ok", 1)
    assert build(type(cfg), to_dict(cfg)).pruner == cfg.pruner
    url = f"sqlite:///{tmp_path / 'v.db'}"
    nothing_to_halve = build(type(cfg), {**to_dict(cfg), "defaults": {"finetune": None}})
    with pytest.raises(ConfigError, match="no trial of this study fine-tunes"):
        create_study(nothing_to_halve, storage=url)


def test_mo_asha_prunes_through_the_real_objective(tmp_path, base):
    url = f"sqlite:///{tmp_path / 'asha.db'}"
    create_study(_cfg(tmp_path, base, "asha", 6), storage=url)
    optimize("asha", url, quiet=True)
    trials = trials_of(url, "asha")
    states = [t.state for t in trials]
    assert len(trials) == 6 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    _check_decisions(trials)
    # the first two trials at rung 0 are promoted unconditionally (min_trials_per_rung 2 counts itself)
    assert trials[0].user_attrs["rung_0_promoted"] and trials[0].user_attrs["rung_0_seen"] == 1


def test_absolute_floors_replace_the_gate(tmp_path, base):
    url = f"sqlite:///{tmp_path / 'floor.db'}"
    cfg = _cfg(tmp_path, base, "floor", 2, floors={"pgd_acc": 0.99})
    cfg = build(type(cfg), {**to_dict(cfg), "threat": {"eps": 0.3, "alpha": 0.1, "steps": 3, "random_start": False}})
    create_study(cfg, storage=url)
    trials = optimize("floor", url, quiet=True).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert "below the absolute floor: pgd_acc" in t.user_attrs["pruned_reason"] and "< floor 0.99" in \
            t.user_attrs["pruned_reason"]
        assert t.user_attrs["rung_0_pgd_acc"] < 0.99 and t.user_attrs["rung_0_epochs"] == 0.25  # 1 of 4 batches


@pytest.mark.slow
def test_two_workers_on_a_journal_file_rank_against_each_other(tmp_path, base):
    storage = str(tmp_path / "runs" / "asha.log")
    create_study(_cfg(tmp_path, base, "asha2", 6), storage=storage)
    optimize("asha2", storage, workers=2, quiet=True)
    trials = trials_of(storage, "asha2")
    assert sorted(t.number for t in trials) == list(range(6))
    _check_decisions(trials)
    assert TrialState.PRUNED in [t.state for t in trials]
    # the later trials at rung 0 ranked against records both workers wrote
    assert max(t.user_attrs["rung_0_seen"] for t in trials) >= 4
