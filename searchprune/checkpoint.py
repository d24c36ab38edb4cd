"""Checkpoints: weights plus a metadata record that says how to rebuild the model.

A checkpoint is one ``torch.save``d dict of tensors and plain data, so it loads with
``torch.load(weights_only=True)``::

    {"format": 1, "state_dict": {...}, "meta": {...}}

``meta`` holds the architecture (``model``: arch or factory + kwargs), the dataset record
(``dataset``: name, classes, channels, size, mean, std), and optionally ``quant`` (the QuantConfig
the weights were quantized with), ``prune``, ``recipe``, ``metrics``, ``threat``, ``versions`` and
``weights_sha256`` (a content hash of the tensors, verified on load: damaged bytes that still parse
are refused instead of evaluated).

Loading never imports or calls anything a file names: a checkpoint whose ``model`` record names a
``factory`` rebuilds only when the caller trusts that exact factory (``trust_factory=``: the
user's own config names it, or ``--trust-factory MODULE:FN``); registered architectures otherwise.

Pruned models are saved *materialized*: every weight parametrization (pruning mask, fake
quantizer) is folded into a plain tensor, so zeros and quantization grid values are stored as
they run. Structurally pruned models have smaller tensors; loading resizes the dense
architecture to the saved shapes, then re-applies quantization when ``meta["quant"]`` says so.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DataConfig, ModelConfig, QuantConfig, ThreatModel, TrainConfig, build
from .data import DatasetInfo, Splits, make_splits
from .errors import ConfigError
from .models import build_model
from .prune import resize_to_state_dict_
from .quantize import fold_parametrizations_, quantize_
from .train import model_record, train_base_model

__all__ = ["save_checkpoint", "load_checkpoint", "materialize", "versions", "rebuild_model", "ensure_base_model",
           "weights_sha256"]

FORMAT = 1


def versions() -> dict[str, str]:
    """Library versions recorded with every checkpoint and export.

    Read from the installed distributions' metadata, so recording them imports neither the
    package facade nor Optuna (the trial core never reaches Optuna).
    """
    out = {"searchprune": _dist_version("searchprune"), "torch": str(torch.__version__),
           "python": platform.python_version()}
    optuna_version = _dist_version("optuna")
    if optuna_version != "unknown":
        out["optuna"] = optuna_version
    return out


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # e.g. running from a source tree that was never installed
        return "unknown"


def materialize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose weight parametrizations are folded into plain tensors.

    The copy computes exactly what the original computes (masked and quantized weights stay as
    they are), but its ``state_dict`` has plain ``weight`` keys that a fresh model accepts.
    """
    # fold_parametrizations_ gives each module its own class first: a deepcopy shares torch's
    # generated Parametrized* class with the original, and removing on the copy would break it.
    return fold_parametrizations_(copy.deepcopy(model))


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Saves the materialized weights of ``model`` and ``meta`` (plain data) to ``path``.

    The file is written to a temporary name and renamed, so an interrupted save never leaves
    a truncated checkpoint where a good one was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in materialize(model).state_dict().items()}
    # Metadata goes through JSON so only plain types reach the file (weights_only loads refuse others).
    plain_meta = json.loads(json.dumps({**dict(meta), "versions": versions(),
                                        "weights_sha256": weights_sha256(state)}, default=str))
    payload = {"format": FORMAT, "state_dict": state, "meta": plain_meta}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle from elsewhere, ...
        raise ConfigError(f"checkpoint {str(path)!r} could not be read as a searchprune checkpoint: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise ConfigError(
            f"checkpoint {str(path)!r} is not a searchprune checkpoint (format {FORMAT}); "
            "expected a file written by `searchprune train` or `searchprune study export`"
        )
    want = payload.get("meta", {}).get("weights_sha256")
    if want is not None and weights_sha256(payload["state_dict"]) != want:
        raise ConfigError(f"checkpoint {str(path)!r} is damaged: its weights do not match the sha256 "
                          "recorded in its metadata")
    return payload


def _check_trusted(meta: Mapping[str, Any], path: Path | None, trust_factory: str | None) -> None:
    """Refuses a factory the file names unless the caller trusts exactly that one."""
    factory = meta.get("model", {}).get("factory")
    if factory is not None and factory != trust_factory:
        where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
        raise ConfigError(f"{where} names model.factory {factory!r}; loading never imports code a file names: "
                          f"if you trust it, pass --trust-factory {factory} (trust_factory={factory!r} "
                          "in Python) or name it in your own config")


def _check_compatible(meta: Mapping[str, Any], path: Path, expect_model: Mapping[str, Any] | None,
                      expect_dataset: Mapping[str, Any] | None) -> None:
    if expect_model is not None:
        have = meta.get("model", {})
        for key in ("arch", "factory"):
            if expect_model.get(key) != have.get(key):
                raise ConfigError(
                    f"checkpoint {str(path)!r} holds model {have.get('arch') or have.get('factory')!r}, "
                    f"but the config asks for {expect_model.get('arch') or expect_model.get('factory')!r}"
                )
    if expect_dataset is not None:
        have = meta.get("dataset", {})
        for key in ("name", "num_classes", "in_channels"):
            if key in expect_dataset and expect_dataset[key] != have.get(key):
                raise ConfigError(
                    f"checkpoint {str(path)!r} was trained for dataset {have.get(key)!r} ({key}), "
                    f"but the config uses {expect_dataset[key]!r}"
                )


def rebuild_model(meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
                  trust_factory: str | None = None) -> nn.Module:
    """Builds the model described by ``meta`` and loads ``state_dict`` into it.

    Handles structurally pruned weights (modules are resized to the saved shapes) and fake
    quantization (re-applied from ``meta["quant"]``; quantizing grid values is idempotent).

    Args:
        trust_factory: the one ``"module:function"`` factory the caller allows ``meta`` to name;
            any other factory is refused before anything is imported.
    """
    _check_trusted(meta, None, trust_factory)
    ds = dict(meta["dataset"])
    info = DatasetInfo(
        name=ds["name"], num_classes=int(ds["num_classes"]), in_channels=int(ds["in_channels"]),
        image_size=tuple(ds["image_size"]), mean=tuple(ds["mean"]), std=tuple(ds["std"]),
    )
    model = build_model(build(ModelConfig, meta["model"], "model"), info)
    weights = {k: v for k, v in state_dict.items() if ".act_quant." not in k}
    resize_to_state_dict_(model, weights)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if ".act_quant." not in k]
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not fit model {meta['model']}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    if meta.get("quant") and meta["quant"].get("mode", "none") != "none":
        quantize_(model, build(QuantConfig, meta["quant"], "quant"))
        act = {k: v for k, v in state_dict.items() if ".act_quant." in k}
        if act:
            missing, unexpected = model.load_state_dict(act, strict=False)
            if unexpected:
                raise ConfigError(f"checkpoint's activation quantizers do not fit the model: {unexpected[:5]}")
    model.eval()
    return model


def load_checkpoint(path: str | Path, *, expect_model: Mapping[str, Any] | None = None,
                    expect_dataset: Mapping[str, Any] | None = None,
                    trust_factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a checkpoint written by :func:`save_checkpoint`.

    The weights' sha256 is verified; nothing the file names is imported or called unless
    ``trust_factory`` names it.

    Args:
        expect_model: ``{"arch": ..., "factory": ...}`` the caller needs; a checkpoint of another
            architecture is refused with a clear message.
        expect_dataset: ``{"name": ..., "num_classes": ..., "in_channels": ...}``, likewise.
        trust_factory: ``"module:function"``: the model factory the caller trusts (from the
            user's own config or ``--trust-factory``); a file naming any other factory is refused.

    Returns:
        (model in eval mode on CPU, meta).
    """
    path = Path(path)
    payload = _read(path)
    meta = dict(payload.get("meta", {}))
    _check_trusted(meta, path, trust_factory)
    _check_compatible(meta, path, expect_model, expect_dataset)
    return rebuild_model(meta, payload["state_dict"], trust_factory=trust_factory), meta


def ensure_base_model(path: str | Path, model_cfg: ModelConfig, splits: Splits, *, data: DataConfig,
                      train_cfg: TrainConfig | None, threat: ThreatModel, device: torch.device,
                      n_eval: int | None = None, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The study's base model: loaded from ``path``, or trained, measured on val and saved there.

    Loading checks that the checkpoint holds ``model_cfg``'s architecture for this dataset.
    Training goes through :func:`searchprune.train.train_base_model` (the code path
    ``searchprune train`` uses too) on *every* training image: ``data.train_size`` only caps
    what each trial fine-tunes on, and validation is carved first, so it stays disjoint and
    unchanged.

    Args:
        path: the base checkpoint.
        model_cfg: the architecture the study compresses.
        splits: the study's splits (``make_splits(data)``).
        data: the study's data config.
        train_cfg: the recipe for a missing checkpoint; None makes a missing checkpoint an error.
        threat: the study's threat model (adversarial recipes and the PGD measurement use it).
        device: where to train.
        n_eval: validation images measured after training (None: all).
        progress: show a progress bar while training (one line is printed before and after either way).

    Returns:
        ``(model, meta)``: loaded models are on CPU in eval mode; a freshly trained one likewise.

    Raises:
        ConfigError: the checkpoint is missing and ``train_cfg`` is None, or it holds another
            model or dataset.
    """
    path = Path(path)
    record = model_record(model_cfg, splits.info)
    if path.exists():
        return load_checkpoint(path, expect_model=record["model"], expect_dataset=record["dataset"],
                               trust_factory=model_cfg.factory)  # the user's own config names it
    if train_cfg is None:
        raise ConfigError(f"base checkpoint {str(path)!r} does not exist and model.train is not set; "
                          "train one with `searchprune train` or add a model.train recipe")
    print(f"training base model {model_cfg.arch or model_cfg.factory} on {data.dataset} "
          f"({train_cfg.recipe}, {train_cfg.epochs} epochs) -> {path}", flush=True)
    full = make_splits(dataclasses.replace(data, train_size=None)) if data.train_size else splits
    model, meta = train_base_model(model_cfg, train_cfg, splits, data=data, threat=threat, device=device,
                                   eval_split="val", n_eval=n_eval, train_set=full.train, progress=progress)
    save_checkpoint(path, model, meta)
    m = meta["metrics"]
    print(f"base model: val clean {m['val_clean_acc']:.4f}, PGD {m['val_pgd_acc']:.4f} on {m['n_val']} images",
          flush=True)
    return model.cpu().eval(), meta
