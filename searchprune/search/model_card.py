"""The export directory's ``README.md``: a model card written from the export's ``metadata.json``.

What the model is (architecture, pruning method, sparsity, bits), how it was made (study, trial,
rule, recipe, seeds), what it achieves (clean and robust accuracy on the stated images with the
stated attacks, certified numbers where ``study certify`` stored them, MACs, size, measured
latency), and how to load it (searchprune, ``torch.export``, ONNX). Only measured numbers appear;
a missing one reads "not measured".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["model_card"]


def _pct(v: Any) -> str:
    return f"{100 * float(v):.2f}%" if isinstance(v, int | float) and not isinstance(v, bool) else "not measured"


def _m(v: Any, scale: float, unit: str, fmt: str = ".3f") -> str:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "not measured"
    return f"{float(v) * scale:{fmt}} {unit}"


def _threat(t: Mapping[str, Any]) -> str:
    eps = float(t.get("eps", 0.0))
    eps_text = f"{eps:.3g} (= {eps * 255:.3g}/255)" if t.get("norm") == "linf" else f"{eps:.3g}"
    return (f"{str(t.get('norm', '?')).upper()} ball, eps {eps_text} on the [0, 1] pixel scale; PGD with "
            f"{t.get('steps')} steps of {t.get('alpha')}, {t.get('restarts', 1)} restart(s)")


def model_card(meta: Mapping[str, Any]) -> str:
    """The model card (markdown) of an export, from its metadata (see :func:`.export.export_trial`)."""
    model = meta.get("model") or {}
    arch = model.get("arch") or model.get("factory") or "?"
    prune = meta.get("prune") or {}
    quant = meta.get("quant") or {}
    ft = meta.get("finetune")
    tm = meta.get("trial_metrics") or {}
    test = meta.get("test_metrics") or {}
    dep = meta.get("deploy") or {}
    data = meta.get("data") or {}
    files = meta.get("files") or {}
    ds = (meta.get("dataset") or {}).get("name") or data.get("dataset", "?")
    bits = f"{quant.get('weight_bits')}-bit weights ({quant.get('mode')})" if quant.get("mode", "none") != "none" \
        else "32-bit float weights (not quantized)"
    options = {k: v for k, v in (prune.get("options") or {}).items() if v is not None}
    opt_text = f", options {options}" if options else ""
    recipe = f"{ft.get('recipe')} for {ft.get('epochs'):g} epoch(s), lr {ft.get('lr'):g}" if ft else \
        "none (no fine-tuning)"
    attacks = [k.removeprefix("acc_") for k in test if k.startswith("acc_")]
    certified = {k: v for k, v in tm.items() if k.startswith("test_") and isinstance(v, int | float)}
    shape = (meta.get("dataset") or {}).get("image_size") or []
    ch = (meta.get("dataset") or {}).get("in_channels", "C")
    example = f"torch.rand(1, {ch}, {', '.join(map(str, shape)) or 'H, W'})"
    form = dep.get("form") or {}

    lines = [
        f"# {arch} on {ds}: {prune.get('method', '?')} pruning, {_pct(tm.get('sparsity'))} sparse, {bits}",
        "",
        f"Exported from study `{meta.get('study')}`, trial {meta.get('trial')}"
        + (f", picked by the rule `{meta['rule']}`." if meta.get("rule") else "."),
        "",
        "## What it is",
        "",
        f"- Architecture: `{arch}`" + (f" with {dict(model.get('kwargs') or {})}" if model.get("kwargs") else ""),
        f"- Input: {ch} x {' x '.join(map(str, shape)) or '?'} images with pixels in [0, 1] "
        "(normalization is inside the model)",
        f"- Pruning: `{prune.get('method')}`, {prune.get('granularity')} granularity, {prune.get('allocation')} "
        f"allocation{opt_text}; measured sparsity {_pct(tm.get('sparsity'))}",
        f"- Quantization: {bits}",
        "",
        "## How it was made",
        "",
        f"- Study `{meta.get('study')}`, trial {meta.get('trial')}, trial seed {meta.get('seed')}, data split seed "
        f"{data.get('seed')}",
        f"- Fine-tuning recipe: {recipe}",
        f"- Parameters: `{meta.get('params')}`",
        f"- Software: {', '.join(f'{k} {v}' for k, v in (meta.get('versions') or {}).items())}",
        "",
        "## What it achieves",
        "",
        f"Threat model: {_threat(meta.get('threat') or {})}.",
        "",
        "| measured on | images | clean | robust | attacks |",
        "|---|---|---|---|---|",
        f"| validation (during the search) | {tm.get('n_eval', '?')} | {_pct(tm.get('clean_acc'))} | "
        f"{_pct(tm.get('robust_acc'))} | {', '.join(a.removeprefix('acc_') for a in tm if a.startswith('acc_'))} |",
        f"| test (at export) | {test.get('n', '?')} | {_pct(test.get('clean_acc'))} | "
        f"{_pct(test.get('worst_acc'))} (worst case) | {', '.join(attacks)} |",
    ]
    if certified:
        lines.append(f"| test, certified (`study certify`) | {tm.get('test_n', '?')} | "
                     f"{_pct(certified.get('test_clean_acc'))} | {_pct(certified.get('test_worst_acc'))} "
                     f"(worst case) | {', '.join(k.removeprefix('test_acc_') for k in certified if 'acc_' in k)} |")
    else:
        lines.append("| test, certified | not measured (run `searchprune study certify`) | | | |")
    lines += [
        "",
        "Per attack on the test split: " + (", ".join(f"{a} {_pct(test.get('acc_' + a))}" for a in attacks) or "-"),
        "",
        "| cost | value |",
        "|---|---|",
        f"| MACs | {_m(tm.get('macs'), 1e-6, 'M')} ({_pct(tm.get('mac_ratio'))} of the dense "
        f"{_m(tm.get('dense_macs'), 1e-6, 'M')}) |",
        f"| BitOPs | {_m(tm.get('bitops'), 1e-9, 'G')} |",
        f"| parameters (non-zero) | {tm.get('params', 'not measured')} |",
        f"| size as deployed | {_m(dep.get('size_bytes', tm.get('size_bytes')), 1e-3, 'kB', '.1f')} |",
        f"| latency, batch {dep.get('latency_batch', '?')} | {_m(dep.get('latency_ms'), 1.0, 'ms', '.2f')} |",
        f"| latency, batch 1 | {_m(dep.get('latency_ms_batch1'), 1.0, 'ms', '.3f')} |",
        "",
        f"Latency: median of the deployable form on {dep.get('machine', 'the exporting machine')}.",
        "",
        "## The exported form",
        "",
        f"`{files.get('torch_export') or files.get('torchscript')}` (and `model.onnx`: {files.get('onnx')}) hold the "
        f"deployable form: BatchNorm folded into {len(form.get('folded_bn') or ())} layer(s), "
        f"{'int8 kernels, ' if form.get('int8') else ''}"
        f"{'channels_last (NHWC)' if form.get('channels_last') else 'NCHW'} memory format. Checked against the "
        f"searchprune model on {dep.get('n_checked', '?')} test images: max |logit difference| "
        f"{dep.get('max_abs_diff', float('nan')):.2e}, predictions agree on {_pct(dep.get('agreement'))}.",
        "",
        "## How to load it",
        "",
        "```python",
        "import torch",
        "",
        "# with searchprune: the model as searched (masks / quantizers as trained)",
        "import searchprune",
        "model = searchprune.load(\"EXPORT_DIR\")",
        "",
        "# plain PyTorch, no searchprune needed: the deployable form",
        "plain = torch.export.load(\"EXPORT_DIR/model_plain.pt2\").module()"
        if files.get("torch_export") else "plain = torch.jit.load(\"EXPORT_DIR/model_plain.ts\")",
        f"logits = plain({example})",
        "",
        "# ONNX",
        "import onnxruntime as ort",
        "sess = ort.InferenceSession(\"EXPORT_DIR/model.onnx\")",
        f"logits = sess.run(None, {{\"input\": {example}.numpy()}})[0]",
        "```",
        "",
        "Re-measure it on this machine: `searchprune eval EXPORT_DIR`.",
        "",
    ]
    return "\n".join(lines)
