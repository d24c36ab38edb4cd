"""Pick a trial from the feasible Pareto set by a stated rule, and export it with provenance.

A multi-objective study has no single best trial, so export takes a rule::

    max robust_acc where macs <= 5e6 and clean_acc >= 0.85
    min macs where robust_acc >= 0.7

``(max|min) METRIC [where METRIC OP NUMBER (and METRIC OP NUMBER)*]`` with OP one of
``<= >= < > ==``. Metrics are the objectives (``clean_acc``, ``robust_acc``) and every numeric
user attribute a trial stored (``pgd_acc``, ``macs``, ``bitops``, ``params``, ``size_bytes``,
``transfer_acc``, ``sparsity``, ``mac_ratio``, ...).

An export directory holds:

- ``model.pt``: a searchprune checkpoint (``searchprune.load(DIR)`` rebuilds it, structurally
  pruned and quantized models included);
- ``model_plain.pt2`` (``torch.export``; load with ``torch.export.load(p).module()``), or
  ``model_plain.ts`` (TorchScript) when torch.export cannot trace the model: plain PyTorch,
  no searchprune needed. It is the *deployable form* (:func:`searchprune.deploy.deployable`:
  masks and BatchNorm folded, int8 kernels for 8-bit weights, channels_last where it measured
  faster), checked equal in outputs to the searchprune model on test images;
- ``model.onnx`` when the ``onnx`` package is installed (the same deployable form);
- ``metadata.json``: study, trial, params, threat model, data config, seeds, versions, the
  trial's validation metrics, the test metrics export measured with the strong ensemble, and the
  deployable form's check, size and measured latency;
- ``README.md``: the model card (:func:`searchprune.search.model_card.model_card`).

Export re-evaluates the model on the same validation images the trial used and fails loudly when
clean or PGD accuracy differ beyond noise; then it measures the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import operator
import platform
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact

from .._torch import get_device, seed_everything
from ..attacks import evaluate
from ..checkpoint import load_checkpoint, versions
from ..config import DataConfig, ThreatModel, build, to_dict
from ..data import ArrayDataset, BatchLoader, make_splits
from ..deploy import deployable, latency_ms, size_bytes
from ..errors import ConfigError
from .model_card import model_card
from .reports import certified_attrs
from .study import stored_config

__all__ = ["Rule", "parse_rule", "select_trial", "export_trial", "load", "load_export", "LoadedExport",
           "evaluate_export", "ExportMismatch", "split_fingerprint"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq,
}
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


class ExportMismatch(RuntimeError):
    """The exported model does not reproduce the trial's metrics."""


@dataclass(frozen=True)
class Rule:
    """``sense`` ("max"/"min") of ``metric`` among trials satisfying every condition."""

    sense: str
    metric: str
    conditions: tuple[tuple[str, str, float], ...] = ()

    def __str__(self) -> str:
        conds = " and ".join(f"{m} {op} {v:g}" for m, op, v in self.conditions)
        return f"{self.sense} {self.metric}" + (f" where {conds}" if conds else "")


def parse_rule(text: str) -> Rule:
    """Parses ``"max robust_acc where macs <= 5e6 and clean_acc >= 0.85"``.

    Raises:
        ConfigError: naming the part of the rule that does not parse.
    """
    head, _, tail = text.strip().partition(" where ")
    parts = head.split()
    if len(parts) != 2 or parts[0] not in ("max", "min"):
        raise ConfigError(f"rule {text!r}: expected it to start with 'max METRIC' or 'min METRIC', got {head!r}")
    conds = []
    if tail.strip():
        for piece in re.split(r"\s+and\s+", tail.strip()):
            m = _COND.match(piece)
            if m is None:
                raise ConfigError(f"rule {text!r}: condition {piece!r} is not 'METRIC OP NUMBER' "
                                  f"with OP one of {', '.join(_OPS)}")
            try:
                value = float(m.group(3))
            except ValueError:
                raise ConfigError(f"rule {text!r}: {m.group(3)!r} is not a number") from None
            conds.append((m.group(1), m.group(2), value))
    elif " where" in text or text.strip().endswith("where"):
        raise ConfigError(f"rule {text!r}: 'where' needs at least one condition")
    return Rule(parts[0], parts[1], tuple(conds))


def trial_metric(trial: optuna.trial.FrozenTrial, name: str, metric_names: list[str] | None, *,
                 extra: Mapping[str, Any] | None = None) -> float | None:
    """An objective (by metric name) or a numeric user attribute of a trial (or of ``extra``, e.g.
    its certified ``test_*`` metrics)."""
    names = metric_names or []
    if name in names and trial.values is not None:
        return float(trial.values[names.index(name)])
    v = {**trial.user_attrs, **(extra or {})}.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def select_trial(study: optuna.Study, rule: Rule) -> optuna.trial.FrozenTrial:
    """The trial of the feasible Pareto set (``study.best_trials``) that the rule picks.

    Raises:
        ConfigError: a metric no trial has, or no Pareto trial satisfies the conditions.
    """
    names = study.metric_names
    pareto = study.best_trials
    if not pareto:
        raise ConfigError(f"study {study.study_name!r} has no completed feasible trials to export")
    cert = {t.number: certified_attrs(study, t) for t in pareto}  # rules may use the certified test_* metrics
    known = set(names or []) | {k for t in pareto for k, v in {**t.user_attrs, **cert[t.number]}.items()
                                if isinstance(v, int | float)}
    for m in [rule.metric, *(c[0] for c in rule.conditions)]:
        if m not in known:
            raise ConfigError(f"rule {str(rule)!r}: unknown metric {m!r}; expected one of: {', '.join(sorted(known))}")
    ok = []
    for t in pareto:
        vals = [trial_metric(t, m, names, extra=cert[t.number]) for m, _, _ in rule.conditions]
        if all(v is not None and _OPS[op](v, ref) for v, (_, op, ref) in zip(vals, rule.conditions)):
            if trial_metric(t, rule.metric, names, extra=cert[t.number]) is not None:
                ok.append(t)
    if not ok:
        raise ConfigError(f"rule {str(rule)!r}: none of the {len(pareto)} Pareto trials satisfies the conditions")
    def key(t: optuna.trial.FrozenTrial) -> float:
        value = trial_metric(t, rule.metric, names, extra=cert[t.number])
        assert value is not None  # trials without the metric were filtered out above
        return value

    return max(ok, key=key) if rule.sense == "max" else min(ok, key=key)


def _tolerance(p: float, n: int) -> float:
    """Allowed difference between two measurements of an accuracy p on n images."""
    return 3.0 * math.sqrt(max(p * (1 - p), 1e-4) / max(n, 1)) + 0.005


def _fetch_checkpoint(study: optuna.Study, trial: optuna.trial.FrozenTrial, dest: Path) -> Path:
    local = trial.user_attrs.get("checkpoint")
    if local and Path(local).is_file():
        shutil.copyfile(local, dest)
        return dest
    art_id = trial.user_attrs.get("artifact_checkpoint")
    art_dir = study.user_attrs.get("artifact_dir")
    if art_id and art_dir and Path(art_dir).is_dir():
        download_artifact(artifact_store=FileSystemArtifactStore(art_dir), file_path=str(dest), artifact_id=art_id)
        return dest
    raise ConfigError(f"trial {trial.number} has no checkpoint here: not at {local!r} and no artifact in "
                      f"{art_dir!r}; pass the artifact directory of the machine that ran it")


def _write_plain(model: torch.nn.Module, example: torch.Tensor, out: Path) -> dict[str, str]:
    """Plain-PyTorch (and ONNX when available) copies of the model; returns what was written."""
    written: dict[str, str] = {}
    model = model.eval()
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))  # any batch
        with _quiet_archive():
            torch.export.save(ep, out / "model_plain.pt2")
        written["torch_export"] = "model_plain.pt2"
    except Exception as e:  # noqa: BLE001 - fall back to TorchScript for untraceable models
        warnings.warn(f"torch.export failed ({type(e).__name__}: {e}); writing TorchScript instead", stacklevel=2)
        traced = torch.jit.trace(model, example)
        traced.save(str(out / "model_plain.ts"))
        written["torchscript"] = "model_plain.ts"
    if importlib.util.find_spec("onnx") is None:  # an optional extra
        written["onnx"] = "skipped: the onnx package is not installed"
    else:
        try:
            # The TorchScript-based exporter: the torch.export-based one needs onnxscript, which the
            # `onnx` extra does not pull in; its deprecation notice is not the user's business.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                        category=DeprecationWarning)
                torch.onnx.export(model, (example,), str(out / "model.onnx"), dynamo=False,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            written["onnx"] = "model.onnx"
        except Exception as e:  # noqa: BLE001
            written["onnx"] = f"failed: {type(e).__name__}: {e}"
    return written


def split_fingerprint(split: ArrayDataset) -> str:
    """sha256 of a split's images and labels as loaded: the test split an export was measured on."""
    h = hashlib.sha256()
    for t in (split.images, split.labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def int8_metrics(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The deployed int8 model's accuracies (``int8_*`` attributes of an 8-bit trial; else empty)."""
    return {k: v for k, v in trial.user_attrs.items() if k.startswith("int8_")}


def export_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, out_dir: str | Path, *,
                 device: str | None = None, rule: Rule | None = None, verify: bool = True,
                 force: bool = False, progress: bool = True, trust_factory: str | None = None) -> dict[str, Any]:
    """Writes the trial's model and provenance to ``out_dir`` and re-verifies its metrics.

    ``progress`` reports the test split's strong attacks (a bar, or a line every 30 s off a terminal).

    Args:
        force: export a trial whose masking flags made it infeasible (``eval.on_flag: infeasible``).
        trust_factory: the ``"module:function"`` model factory the caller trusts; a trial
            checkpoint naming any other factory is refused before anything is imported.

    Raises:
        ConfigError: the trial is not complete, or is flagged for gradient masking and ``force`` is off;
            its checkpoint holds another model or dataset than the study's, or names an untrusted factory.
        ExportMismatch: the re-evaluated validation metrics differ from the trial's beyond noise.
    """
    cfg = stored_config(study)
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise ConfigError(f"trial {trial.number} is {trial.state.name}, not COMPLETE: nothing to export")
    if trial.constraints and trial.user_attrs.get("infeasible_reason") and not force:
        raise ConfigError(f"trial {trial.number} is infeasible: {trial.user_attrs['infeasible_reason']}; its robust "
                          "accuracy is not trusted (pass --force to export it anyway)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _fetch_checkpoint(study, trial, out / "model.pt")
    model, meta = load_checkpoint(ckpt, expect_model={"arch": cfg.model.arch, "factory": cfg.model.factory},
                                  expect_dataset={"name": cfg.data.dataset}, trust_factory=trust_factory)
    dev = get_device(device)
    model = model.to(dev).eval()
    splits = make_splits(cfg.data)
    ua = trial.user_attrs

    # 1. Same validation images, same threat model: the trial's numbers must come back.
    seed_everything(int(ua.get("seed", 0)))
    val = evaluate(model, BatchLoader(splits.val, cfg.data.eval_batch_size, device=dev, max_images=cfg.eval.n_eval),
                   cfg.threat, attacks=("pgd",))
    checks = {}
    for name, got in (("clean_acc", val.clean), ("pgd_acc", val.robust["pgd"])):
        want = float(ua.get(name, float("nan")))
        tol = _tolerance(want, val.n)
        checks[name] = {"trial": want, "export": got, "tolerance": tol}
        if verify and not abs(got - want) <= tol:
            raise ExportMismatch(f"trial {trial.number}: re-evaluated {name} {got:.4f} differs from the trial's "
                                 f"{want:.4f} by more than {tol:.4f} on {val.n} validation images")

    # 2. The test split, with the strong ensemble.
    test_loader = BatchLoader(splits.test, cfg.data.eval_batch_size, device=dev)
    test = evaluate(model, test_loader, cfg.threat, attacks=tuple(dict.fromkeys(("pgd", *cfg.eval.export_attacks))),
                    progress=progress, desc="export test")
    test_metrics = {"clean_acc": test.clean, "worst_acc": test.worst, "n": test.n,
                    **{f"acc_{k}": v for k, v in test.robust.items()}}

    # 3. The deployable form, checked against the searchprune model, written as plain PyTorch / ONNX.
    cpu = torch.device("cpu")
    model = model.cpu().eval()
    example = next(iter(BatchLoader(splits.test, 2, device=cpu)))[0]
    check_batch = next(iter(BatchLoader(splits.test, 128, device=cpu)))[0]
    calib = BatchLoader(splits.train, 128, shuffle=True, seed=0, device=cpu)
    calib_batches = int((meta.get("quant") or {}).get("calib_batches") or 4)
    form = deployable(model, example_input=check_batch, channels_last="auto", calib_loader=calib,
                      calib_batches=calib_batches)
    deploy = {"form": dataclasses.asdict(getattr(form, "deploy_info")), **_same_outputs(model, form, check_batch)}
    plain = _write_plain(form, example, out)
    deploy["plain_file"] = _same_outputs(model, _load_plain(out, plain), check_batch)
    if verify:
        for what, res in (("deployable form", deploy), ("plain export", deploy["plain_file"])):
            if not res["equal"]:
                raise ExportMismatch(f"trial {trial.number}: the {what} differs from the searchprune model "
                                     f"(max |logit difference| {res['max_abs_diff']:.3g}, predictions agree on "
                                     f"{res['agreement']:.1%} of {res['n_checked']} test images)")
    deploy.update({
        "size_bytes": size_bytes(model), "latency_batch": 128, "machine": _machine(),
        "latency_ms": latency_ms(model, example, batch_size=128, calib_loader=calib),
        "latency_ms_batch1": latency_ms(model, example, batch_size=1, calib_loader=calib),
    })
    metadata = {
        "study": study.study_name, "trial": trial.number, "rule": str(rule) if rule else None,
        "params": trial.params, "seed": ua.get("seed"), "values": trial.values,
        "metric_names": study.metric_names,
        "trial_metrics": {**{k: v for k, v in ua.items() if not k.startswith("artifact")},
                          **certified_attrs(study, trial)},
        "verification": checks, "test_metrics": test_metrics, "test_sha256": split_fingerprint(splits.test),
        # `study certify`'s held-out measurement with the full suite, preferred where present
        "certified_metrics": certified_attrs(study, trial) or None,
        "headline": ("certified" if certified_attrs(study, trial) else "export_test"),
        "int8_metrics": int8_metrics(trial) or None, "cost_kind": cfg.cost, "forced": bool(force),
        "threat": to_dict(cfg.threat), "data": to_dict(cfg.data), "eval_attacks": list(cfg.eval.export_attacks),
        "model": meta.get("model"), "dataset": meta.get("dataset"), "prune": meta.get("prune"),
        "quant": meta.get("quant"), "finetune": meta.get("finetune"), "files": {"checkpoint": "model.pt", **plain},
        "deploy": deploy, "versions": versions(),
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    (out / "README.md").write_text(model_card(json.loads(json.dumps(metadata, default=str))))
    return metadata


def _same_outputs(model: torch.nn.Module, other: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Whether ``other`` computes ``model``'s function on ``x``: float forms to rounding (1e-4 of the
    logits' scale), an int8 form to its quantization noise (>= 99% of the predictions agree)."""
    with torch.no_grad():
        a, b = model(x).float(), other(x).float()
    diff = float((a - b).abs().max())
    agreement = float((a.argmax(1) == b.argmax(1)).float().mean())
    int8 = bool(getattr(getattr(other, "deploy_info", None), "int8", False))
    scale = max(1.0, float(a.abs().max()))
    equal = agreement >= 0.99 if int8 else diff <= 1e-4 * scale
    return {"equal": equal, "max_abs_diff": diff, "agreement": agreement, "n_checked": len(x)}


@contextlib.contextmanager
def _quiet_archive() -> Iterator[None]:
    """torch's pt2 archive code warns about the weight groups of a CPU program as it saves and loads
    it ("No complete tensor found in the group"): nothing the user did or can act on, and the round
    trip is checked after loading."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        yield


def _load_plain(out: Path, written: Mapping[str, str]) -> torch.nn.Module:
    if "torch_export" in written:
        with _quiet_archive():
            return torch.export.load(str(out / written["torch_export"])).module()
    return torch.jit.load(str(out / written["torchscript"]))


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def load(path: str | Path, *, trust_factory: str | None = None,
         expect_dataset: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Rebuilds an exported (or any searchprune) model from a directory or checkpoint file.

    Nothing the file names is imported: a checkpoint of a user's own model factory loads only
    with ``trust_factory="module:function"`` naming exactly that factory.
    """
    p = Path(path)
    model, _ = load_checkpoint(p / "model.pt" if p.is_dir() else p, trust_factory=trust_factory,
                               expect_dataset=expect_dataset)
    return model


@dataclass(frozen=True)
class LoadedExport:
    """An export directory loaded for measuring: the model (in eval mode, on ``device``), the test
    split it was measured on (checked by sha256 when the export recorded one), its threat model and
    its metadata."""

    model: torch.nn.Module
    test: ArrayDataset
    threat: ThreatModel
    meta: Mapping[str, Any]
    device: torch.device
    eval_batch_size: int

    def loader(self, n_test: int | None = None) -> BatchLoader:
        """The test split in batches of the export's eval batch size, the first ``n_test`` images."""
        return BatchLoader(self.test, self.eval_batch_size, device=self.device, max_images=n_test)


def load_export(path: str | Path, *, device: str | None = None, data_dir: str | None = None,
                trust_factory: str | None = None) -> LoadedExport:
    """Loads an export directory (``model.pt`` + ``metadata.json``) with the test split it was measured on.

    Raises:
        ConfigError: not an export directory, a checkpoint of another dataset than the metadata
            names, data that does not fit the model, or a test split other than the one the
            export was measured on (``data_dir`` pointing at another dataset).
    """
    p = Path(path)
    meta_path = p / "metadata.json"
    if not meta_path.is_file():
        raise ConfigError(f"{str(p)!r} is not an export directory: {str(meta_path)!r} is missing")
    meta: Mapping[str, Any] = json.loads(meta_path.read_text())
    data = dict(meta["data"])
    if data_dir is not None:
        data["data_dir"] = data_dir
    dev = get_device(device)
    model, ckpt_meta = load_checkpoint(p / "model.pt", expect_dataset={"name": data.get("dataset")},
                                       trust_factory=trust_factory)
    model = model.to(dev).eval()
    splits = make_splits(build(DataConfig, data, "data"))
    have, info = ckpt_meta.get("dataset", {}), splits.info
    for key, got in (("num_classes", info.num_classes), ("in_channels", info.in_channels),
                     ("image_size", list(info.image_size))):
        recorded = have.get(key)
        if recorded is not None and (list(recorded) if key == "image_size" else recorded) != got:
            raise ConfigError(f"{str(p)!r}: the model was trained with {key} {recorded}, but the data "
                              f"loaded for {data['dataset']!r} has {got}")
    want = meta.get("test_sha256")
    if want is not None and split_fingerprint(splits.test) != want:
        where = f" from --data-dir {data_dir!r}" if data_dir is not None else ""
        raise ConfigError(f"{str(p)!r}: the test split of {data['dataset']!r} loaded{where} is not the one the "
                          "export was measured on (its sha256 differs): another dataset or other files?")
    return LoadedExport(model, splits.test, build(ThreatModel, meta["threat"], "threat"), meta, dev,
                        int(data.get("eval_batch_size", 256)))


def evaluate_export(path: str | Path, *, device: str | None = None, attacks: tuple[str, ...] | None = None,
                    data_dir: str | None = None, trust_factory: str | None = None, n_test: int | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Re-measures an export directory on its test split; returns measured and recorded metrics.

    ``n_test`` measures only the first that many test images (the recorded metrics stay those of the
    whole split: compare them knowingly); ``progress`` reports images done as the attacks run.

    Raises:
        ConfigError: as :func:`load_export`, or ``n_test`` < 1.
    """
    if n_test is not None and n_test < 1:
        raise ConfigError(f"--n-test: expected >= 1, got {n_test}")
    ex = load_export(path, device=device, data_dir=data_dir, trust_factory=trust_factory)
    meta = ex.meta
    atk = attacks or tuple(dict.fromkeys(("pgd", *meta.get("eval_attacks", []))))
    res = evaluate(ex.model, ex.loader(n_test), ex.threat, attacks=atk, progress=progress, desc="eval test")
    measured = {"clean_acc": res.clean, "worst_acc": res.worst, "n": res.n,
                **{f"acc_{k}": v for k, v in res.robust.items()}}
    return {"measured": measured, "recorded": meta.get("test_metrics", {}), "threat": meta["threat"]}
