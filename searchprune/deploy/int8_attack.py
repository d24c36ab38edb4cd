"""Attack the deployed int8 model itself, not only its fake-quant twin (issue 9).

The torch.ao int8 form (:func:`~.form.deployable` of an 8-bit model) has no autograd, and it is
not exactly the fake-quant model: it also rounds each fused block's output to 8 bits. Its
robustness is measured two ways, next to the fake-quant model's on the same images:

* transfer: PGD crafted on the fake-quant model under its straight-through estimator (the
  threat model's settings), scored on the int8 model;
* Square: the gradient-free Square Attack run on the int8 model directly (L-inf threats only).

``int8_worst_acc`` counts an image only if the int8 model classifies it correctly clean and under
both. The int8 form runs on the CPU (torch.ao's int8 kernels are CPU kernels).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..attacks import get_attack
from ..attacks._base import predict
from ..attacks.evaluate import iter_batches
from ..attacks.square import square
from ..config import ThreatModel
from .form import deployable

__all__ = ["int8_robustness"]


def int8_robustness(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], threat: ThreatModel, *,
                    calib_loader: Iterable[Any], max_images: int | None, square_queries: int = 200,
                    seed: int = 0, calib_batches: int = 4) -> dict[str, Any]:
    """Accuracies of ``model``'s int8 deployable form beside the fake-quant model's, as ``int8_*`` attrs.

    Args:
        model: an 8-bit fake-quant model (every conv / linear weight at 8 bits); not changed.
        loader: ``(x, y)`` evaluation batches (validation images).
        threat: the study's threat model (PGD settings for the transfer examples, eps for Square).
        calib_loader: calibration batches for the int8 activation ranges (the training data).
        max_images: images measured (None: the whole loader).
        square_queries: Square Attack queries on the int8 model.
        seed: seeds Square and PGD's random start.
        calib_batches: batches of ``calib_loader`` used to calibrate.

    Returns:
        ``{}`` when the model has no int8 form here (not uniformly 8-bit); else ``int8_n``,
        ``int8_clean_acc``, ``int8_transfer_acc``, ``int8_square_acc``, ``int8_worst_acc``, the
        fake-quant model's ``int8_fq_clean_acc`` / ``int8_fq_pgd_acc`` on the same images, and
        ``int8_agreement`` (clean predictions equal to the fake-quant model's).
    """
    cpu = torch.device("cpu")
    first = next(iter(iter_batches(model, loader, max_images)), None)
    if first is None:
        return {}
    source = copy.deepcopy(model).cpu().eval()
    calib = [(b[0].cpu(),) if isinstance(b, tuple | list) else (b.cpu(),) for _, b in zip(range(calib_batches),
                                                                                          calib_loader)]
    form = deployable(source, quant_bits=8, example_input=first[0].cpu(), calib_loader=calib,
                      calib_batches=calib_batches, channels_last=False)
    if not getattr(form, "deploy_info").int8:
        return {}
    pgd_fn = get_attack("pgd")
    counts = dict.fromkeys(("clean", "transfer", "square", "worst", "fq_clean", "fq_pgd", "agree"), 0)
    n = 0
    for bi, (x, y) in enumerate(iter_batches(model, loader, max_images)):
        x, y = x.to(cpu), y.to(cpu)
        torch.manual_seed(seed + bi)
        x_adv = pgd_fn(source, x, y, threat)  # through the fake quantizers' STE
        pred_fq, pred_i8 = predict(source, x), predict(form, x)
        ok_clean = pred_i8 == y
        ok_tr = predict(form, x_adv) == y
        ok_sq = ok_clean
        if threat.norm == "linf":  # only the L-inf Square Attack exists here
            ok_sq = predict(form, square(form, x, y, eps=threat.eps, queries=square_queries, seed=seed + bi,
                                         clamp=threat.clamp)) == y
        counts["clean"] += int(ok_clean.sum())
        counts["transfer"] += int(ok_tr.sum())
        counts["square"] += int(ok_sq.sum())
        counts["worst"] += int((ok_clean & ok_tr & ok_sq).sum())
        counts["fq_clean"] += int((pred_fq == y).sum())
        counts["fq_pgd"] += int((predict(source, x_adv) == y).sum())
        counts["agree"] += int((pred_fq == pred_i8).sum())
        n += len(y)
    out: dict[str, Any] = {"int8_n": n}
    for key in ("clean", "transfer", "square", "worst"):
        out[f"int8_{key}_acc"] = counts[key] / n
    out["int8_fq_clean_acc"] = counts["fq_clean"] / n
    out["int8_fq_pgd_acc"] = counts["fq_pgd"] / n
    out["int8_agreement"] = counts["agree"] / n
    if threat.norm != "linf":
        out["int8_square_acc"] = None
    out["int8_square_queries"] = square_queries
    return out
