"""Issue 9 end to end on tiny synthetic studies: flags act (a flagged trial is infeasible, export needs
--force), `study certify` measures the front on held-out test images, and export prefers its numbers."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _tiny import tiny_config, tiny_study_config, trials_of, write_yaml

import searchprune.trial as trial_module
from searchprune.cli import main
from searchprune.config import StudyConfig, build
from searchprune.errors import ConfigError
from searchprune.search import certified_attrs, create_study, load_study, optimize, parse_attack, validate_names

pytestmark = pytest.mark.usefixtures("one_thread")


def _url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_certify_measures_the_front_on_test_images_and_export_prefers_it(tmp_path, base, capsys):
    cfg = tiny_study_config(tmp_path, base, name="cert", baselines=["dense"],
                            eval={"n_eval": 64, "export_attacks": ["pgd"], "transfer": False, "checks": False,
                                  "stagewise": False, "latency": False})
    create_study(cfg, storage=_url(tmp_path))
    optimize("cert", _url(tmp_path), quiet=True)
    capsys.readouterr()
    assert main(["study", "certify", "--name", "cert", "--storage", _url(tmp_path), "--attacks", "square:queries=20",
                 "--n-test", "48", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "leave the certified front" in out and "square:queries=20" in out and "largest" in out
    study, _ = load_study("cert", _url(tmp_path))
    certified = [t for t in study.get_trials() if certified_attrs(study, t)]
    assert any(t.user_attrs.get("baseline") for t in certified)  # the enqueued dense model is certified too
    for t in certified:
        m = certified_attrs(study, t)
        assert m["test_n"] == 48 and m["test_attacks"] == ["square:queries=20"]
        assert 0 <= m["test_worst_acc"] <= min(m["test_acc_pgd"], m["test_acc_square"]) <= m["test_clean_acc"] <= 1
    assert main(["study", "pareto", "--name", "cert", "--storage", _url(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "test_worst_acc" in table and "cost axis (third objective): macs" in table
    export = tmp_path / "export"
    assert main(["study", "export", "--name", "cert", "--storage", _url(tmp_path), "--trial",
                 str(certified[0].number), "--out", str(export)]) == 0
    meta = json.loads((export / "metadata.json").read_text())
    assert meta["headline"] == "certified" and meta["certified_metrics"]["test_n"] == 48
    assert "test_metrics" in meta  # the export's own measurement stays beside it
    assert "certified (study certify" in capsys.readouterr().out


def test_a_flagged_trial_is_infeasible_and_export_needs_force(tmp_path, base, capsys, monkeypatch):
    # the checks themselves are tested in tests/attacks/test_masking.py; here the real report of the
    # trial's model gets its strong_gap flag raised, so what the study does with a flag is what is tested
    real = trial_module.masking_checks

    def flagging(*args, **kwargs):
        report = real(*args, **kwargs)
        return dataclasses.replace(report, flags={**report.flags, "strong_gap": True})

    monkeypatch.setattr(trial_module, "masking_checks", flagging)
    raw = tiny_config(tmp_path, base, name="flagged", n_trials=1,
                      eval={"n_eval": 64, "n_stage_eval": 32, "export_attacks": ["pgd"], "transfer": False,
                            "checks": True, "stagewise": False, "latency": False, "check_apgd_steps": 3,
                            "check_square_queries": 5, "on_flag": "infeasible"})
    path = write_yaml(tmp_path / "flagged.yaml", raw)
    assert main(["study", "create", "--config", str(path), "--storage", _url(tmp_path)]) == 0
    assert main(["study", "optimize", "--name", "flagged", "--storage", _url(tmp_path), "--quiet"]) == 0
    (t,) = trials_of(_url(tmp_path), "flagged")
    assert t.user_attrs["flag_any"] and t.constraints["masking"] == 1.0
    assert t.user_attrs["infeasible_reason"].startswith("masking: ") and t.user_attrs["feasible"] is False
    study, _ = load_study("flagged", _url(tmp_path))
    assert study.best_trials == []  # it left the feasible front
    capsys.readouterr()
    out = tmp_path / "export"
    assert main(["study", "export", "--name", "flagged", "--storage", _url(tmp_path), "--trial", "0",
                 "--out", str(out)]) == 2
    assert "infeasible" in capsys.readouterr().err
    assert main(["study", "export", "--name", "flagged", "--storage", _url(tmp_path), "--trial", "0",
                 "--out", str(out), "--force"]) == 0
    assert json.loads((out / "metadata.json").read_text())["forced"] is True


def test_attack_specs_parse_or_fail_in_one_line():
    spec = parse_attack("square:queries=1000,p_init=0.5")
    assert spec.name == "square" and spec.options == {"queries": 1000, "p_init": 0.5}
    assert str(spec) == "square:queries=1000,p_init=0.5"
    with pytest.raises(ConfigError, match="nonsense"):
        parse_attack("nonsense")
    with pytest.raises(ConfigError, match="key=value"):
        parse_attack("square:queries")
    bad = build(StudyConfig, {"name": "s", "eval": {"on_flag": "worst", "strong_attacks": ["pgd", "nonsense:x=1"]}})
    with pytest.raises(ConfigError, match="eval.strong_attacks.*nonsense"):
        validate_names(bad)
    validate_names(build(StudyConfig, {"name": "s", "eval": {"on_flag": "worst"}}))  # the default suite exists
