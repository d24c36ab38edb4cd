"""Base models, the test-image trial context, MAC matching and the resumable run loop.

Each row is one ``searchprune.trial.run_trial`` call on a :class:`TrialContext` built as the search
builds it (``study.build_context``), with one difference: nothing is selected here, so the context's
evaluation split *is* the held-out test split (``val_size`` 0, ``splits.val = splits.test``) and every
number the core measures is a test number.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune._torch import count_params, get_device, seed_everything
from searchprune.checkpoint import load_checkpoint, save_checkpoint
from searchprune.config import DataConfig, PruneConfig, ThreatModel, to_dict
from searchprune.data import make_splits
from searchprune.errors import ConfigError
from searchprune.models.macs import count_dense_macs, count_macs
from searchprune.prune import keep_fraction_from_compression, prunable_layers, prune_, weight_param
from searchprune.prune.allocation.mrs import MRS_DEFAULTS
from searchprune.train import train_base_model
from searchprune.trial import TrialContext, TrialResult, checkpoint_metadata, run_trial

from .core import Base, Row, Setup, append_result, at_chance, load_results, pending_rows, row_fingerprint

__all__ = ["base_path", "ensure_base", "make_context", "mac_ratio", "match_mac_ratio", "compression_sparsity",
           "run_rows"]


def base_path(bases_dir: Path, base: Base, data: DataConfig, threat: ThreatModel) -> Path:
    """``bases_dir/<name>-<hash>.pt``: the hash covers the recipe, sizes and threat, so two papers
    sharing a base share the file and a changed recipe never loads a stale one."""
    blob = json.dumps({"model": to_dict(base.model), "train": to_dict(base.train), "n": base.train_size,
                       "dataset": data.dataset, "threat": to_dict(threat)}, sort_keys=True, default=str)
    return bases_dir / f"{base.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}.pt"


def ensure_base(base: Base, data: DataConfig, threat: ThreatModel, path: Path, *,
                device: torch.device, log: Callable[[str], None] = print) -> tuple[nn.Module, dict[str, Any]]:
    """Loads the base checkpoint at ``path``, or trains it (``base.train`` on ``base.train_size``
    training images, through ``train_base_model``: the code path of ``searchprune train``),
    measures it on the test images and saves it there first.

    Raises:
        ConfigError: the freshly trained base is at chance (kept beside ``path`` as ``*.collapsed.pt``,
            not at ``path``, so a rerun trains it again rather than running rows from a constant predictor).
    """
    if path.exists():
        return load_checkpoint(path)
    base_data = DataConfig(dataset=data.dataset, data_dir=data.data_dir, download=data.download, val_size=0,
                           train_size=base.train_size, test_size=data.test_size, eval_batch_size=data.eval_batch_size,
                           seed=0)
    splits = make_splits(base_data)
    log(f"training base {base.name!r} ({base.train.recipe}, {base.train.epochs:g} epochs on "
        f"{len(splits.train)} images) -> {path}")
    model, meta = train_base_model(base.model, base.train, splits, data=base_data, threat=threat, device=device,
                                   eval_split="test")
    meta["metrics"]["train_images"] = len(splits.train)
    clean, classes = meta["metrics"]["test_clean_acc"], splits.info.num_classes
    if at_chance(clean, classes):  # every row from it would measure a constant predictor
        kept = path.with_name(f"{path.stem}.collapsed.pt")
        save_checkpoint(kept, model, meta)
        raise ConfigError(f"base {base.name!r}: training ended at chance (test clean {clean:.4f} with {classes} "
                          f"classes), so no row runs from it; kept as {kept} for a look: change its recipe")
    save_checkpoint(path, model, meta)
    log(f"base {base.name!r}: test clean {meta['metrics']['test_clean_acc']:.4f}, PGD "
        f"{meta['metrics']['test_pgd_acc']:.4f} ({meta['metrics']['train_seconds']:.0f} s)")
    return load_checkpoint(path)


def make_context(setup: Setup, model: nn.Module, meta: Mapping[str, Any], *, device: torch.device,
                 cache_dir: Path | None) -> TrialContext:
    """The trial context of one base: fine-tuning on ``setup.data.train_size`` training images,
    every measurement on the test images (the core measures ``splits.val``, so it *is* the test split)."""
    splits = make_splits(setup.data)
    splits = dataclasses.replace(splits, val=splits.test)
    return TrialContext(base_model=model.to(device).eval(), base_meta={k: meta[k] for k in ("model", "dataset")},
                        splits=splits, threat=setup.threat, eval=setup.eval, device=device,
                        eval_batch_size=setup.data.eval_batch_size, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------
# MACs: matching a target ratio, converting compression ratios
# ---------------------------------------------------------------------------------------------


def mac_ratio(ctx: TrialContext, cfg: PruneConfig, *, seed: int = 0) -> float:
    """MACs of the base model pruned with ``cfg`` (no fine-tuning) over the dense MACs."""
    seed_everything(seed)
    model = copy.deepcopy(ctx.base_model)
    prune_(model, cfg, input_shape=ctx.input_shape, loader=ctx.train_loader(128, seed=seed), threat=ctx.threat,
           cache=ctx.stat_cache)
    return count_macs(model, ctx.input_shape) / count_dense_macs(ctx.base_model, ctx.input_shape)


def match_mac_ratio(ratio_of: Callable[[float], float], target: float, *, hi: float = 0.95,
                    tol: float = 0.002, iters: int = 14) -> float:
    """The sparsity at which ``ratio_of(sparsity)`` (non-increasing) is closest to ``target``, by
    bisection on [0, ``hi``]; returns the sparsity rounded to 4 digits.

    Raises:
        ValueError: ``target`` is below what the highest sparsity reaches.
    """
    if not 0 < target <= 1:
        raise ValueError(f"match_mac_ratio: expected a MAC ratio in (0, 1], got {target}")
    lo_s, hi_s = 0.0, hi
    if ratio_of(hi_s) > target + tol:
        raise ValueError(f"match_mac_ratio: sparsity {hi} still keeps more than {target} of the MACs")
    best, best_err = hi_s, abs(ratio_of(hi_s) - target)
    for _ in range(iters):
        mid = (lo_s + hi_s) / 2
        r = ratio_of(mid)
        if abs(r - target) < best_err:
            best, best_err = mid, abs(r - target)
        if best_err <= tol:
            break
        lo_s, hi_s = (mid, hi_s) if r > target else (lo_s, mid)
    return round(best, 4)


def compression_sparsity(model: nn.Module, compression: float, *, include_classifier: bool = False) -> float:
    """The fraction of prunable weights removed at ShrinkBench's whole-model ``compression``
    (``searchprune.prune.keep_fraction_from_compression`` over this model's parameters)."""
    layers = prunable_layers(model, include_classifier=include_classifier)
    prunable = sum(weight_param(m).numel() for m in layers.values())
    return 1.0 - keep_fraction_from_compression(compression, total=count_params(model, nonzero=False),
                                                prunable=prunable)


# ---------------------------------------------------------------------------------------------
# The run loop
# ---------------------------------------------------------------------------------------------


def resolve_row(row: Row, ctx: TrialContext, match: float | None) -> Row:
    """The row with its sparsity fixed so the pruned base keeps ``match`` of the dense MACs (the
    criterion does not change how many channels each layer keeps, so magnitude stands in for
    data-driven criteria during the search; LAMP and in-train decide their own counts)."""
    if match is None:
        return row
    p = row.params.prune
    keep = tuple(MRS_DEFAULTS) if p.allocation == "mrs" else ()
    probe = p if p.method in ("lamp", "l1_filter") else dataclasses.replace(p, method="magnitude", options={
        k: v for k, v in p.options.items() if k in (*keep, "round_to")})
    s = match_mac_ratio(lambda s: mac_ratio(ctx, dataclasses.replace(probe, sparsity=s), seed=0), match)
    return dataclasses.replace(row, params=dataclasses.replace(row.params, prune=dataclasses.replace(p, sparsity=s)))


def describe_machine(device: torch.device) -> str:
    """Where a row ran, for its report: ``cpu, 1 torch thread(s) of 2 cores, torch 2.13.0+cpu``."""
    return (f"{device.type}, {torch.get_num_threads()} torch thread(s) of {os.cpu_count()} cores, "
            f"torch {torch.__version__}")


def run_rows(plan: Any, out: Path, *, bases_dir: Path, device: str | None = None, quick: bool,
             base_checkpoints: Mapping[str, Path] | None = None, only: Sequence[str] | None = None,
             on_row: Callable[[], object] = lambda: None, log: Callable[[str], None] = print,
             save_models: Path | None = None) -> int:
    """Runs every row of ``plan`` not yet in ``out/results.jsonl``, appending each as it finishes.

    ``only`` (shell patterns, ``fnmatch``) keeps the rows whose key matches one of them: a long run
    can do its headline cells first; the others stay "not run" in the report until a later run.
    ``base_checkpoints`` (base name -> checkpoint) uses an existing base model instead of the cached
    or freshly trained one; each record names the checkpoint it used.

    Returns:
        The number of rows run now.
    """
    results = out / "results.jsonl"
    todo = pending_rows(plan.rows, plan.setup, load_results(results))
    n_pending = len(todo)
    if only is not None:
        todo = [r for r in todo if any(fnmatch.fnmatchcase(r.key, pat) for pat in only)]
        if not todo and not any(fnmatch.fnmatchcase(r.key, pat) for r in plan.rows for pat in only):
            raise ConfigError(f"--only {' '.join(only)}: matches no row of paper {plan.paper} (keys look like "
                              f"{plan.rows[0].key!r})")
    index = {r.key: i for i, r in enumerate(plan.rows)}
    log(f"paper {plan.paper}: {len(plan.rows) - n_pending} of {len(plan.rows)} rows done, {len(todo)} to run "
        + (f"(--only; {n_pending - len(todo)} others left) " if only is not None else "") + f"-> {results}")
    dev = get_device(device)
    contexts: dict[str, TrialContext] = {}
    bases_meta: dict[str, dict[str, Any]] = {}
    resolved: dict[tuple[str, float], float] = {}
    for n, row in enumerate(todo, 1):
        if row.base not in contexts:
            base = plan.setup.bases[row.base]
            given = (base_checkpoints or {}).get(row.base)
            path = Path(given) if given is not None else base_path(bases_dir, base, plan.setup.data,
                                                                      plan.setup.threat)
            if given is not None and not path.exists():
                raise ConfigError(f"--base-checkpoint {row.base}={path}: no such file")
            model, meta = ensure_base(base, plan.setup.data, plan.setup.threat, path, device=dev, log=log)
            contexts[row.base] = make_context(plan.setup, model, meta, device=dev,
                                              cache_dir=bases_dir / "cache" / path.stem)
            bases_meta[row.base] = {"checkpoint": str(path), "train_images": meta.get("metrics", {}).get(
                "train_images"), "train_seconds": meta.get("metrics", {}).get("train_seconds")}
        ctx = contexts[row.base]
        match = plan.match_macs.get(row.key)
        run = row
        if match is not None:
            p = row.params.prune
            k = (json.dumps([row.base, to_dict(dataclasses.replace(p, sparsity=0.0))], sort_keys=True, default=str),
                 match)
            if k not in resolved:
                resolved[k] = resolve_row(row, ctx, match).params.prune.sparsity or 0.0
            run = dataclasses.replace(row, params=dataclasses.replace(
                row.params, prune=dataclasses.replace(p, sparsity=resolved[k])))
        t0 = time.perf_counter()
        r = run_trial(run.params, ctx)
        metrics = r.metrics()
        record = {
            "key": row.key, "fingerprint": row_fingerprint(row, plan.setup), "index": index[row.key],
            "paper": row.paper, "table": row.table, "base": row.base, "method": row.method, "finetune": row.finetune,
            "seed": row.seed, "x": row.x, "control": row.control, "series": row.series, "quick": quick,
            "metrics": metrics, "num_classes": ctx.splits.info.num_classes,
            "match_macs": match, "params": to_dict(run.params), "base_info": bases_meta[row.base],
            "seconds": time.perf_counter() - t0, "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"), "machine": describe_machine(dev),
        }
        if save_models is not None:
            save_row_model(save_models, row, run, r, ctx, plan.setup)
        append_result(results, record)
        log(f"[{n}/{len(todo)}] {row.key}: clean {metrics['clean_acc']:.4f}  PGD {metrics['pgd_acc']:.4f}"
            + (f"  transfer {metrics['transfer_acc']:.4f}" if metrics.get("transfer_acc") is not None else "")
            + f"  MACs {metrics['mac_ratio']:.0%}  {record['seconds']:.0f}s")
        on_row()
    return len(todo)


def save_row_model(root: Path, row: Row, run: Row, result: TrialResult, ctx: TrialContext, setup: Setup) -> Path:
    """Writes ``root/<row key with / as __>/`` with ``model.pt`` and the ``metadata.json`` that
    ``searchprune eval`` reads (data, threat, the table's attacks and metrics), and returns it."""
    assert result.model is not None
    d = root / row.key.replace("/", "__").replace(" ", "_")
    save_checkpoint(d / "model.pt", result.model, checkpoint_metadata(run.params, ctx, result))
    meta = {"row": row.key, "params": to_dict(run.params), "data": to_dict(setup.data),
            "threat": to_dict(setup.threat), "eval_attacks": list(setup.eval.attacks),
            "test_metrics": {"clean_acc": result.clean_acc, "n": result.n_eval,
                             **{f"acc_{k}": v for k, v in result.attack_acc.items()}},
            "files": {"checkpoint": "model.pt"}}
    (d / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return d
