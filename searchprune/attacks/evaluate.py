"""Scoring a model with attacks: clean, robust, worst-case and transfer accuracy.

Every helper takes any iterable of ``(x, y)`` batches with ``x`` in [0, 1]
(``searchprune.data.BatchLoader`` or a plain list of tensor pairs) and moves each batch to the
model's device (:func:`iter_batches`), except :func:`accuracy_on_batches`, which scores batches
exactly as given (already on the model's device, e.g. transfer examples crafted once and reused).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._progress import Progress
from .._torch import eval_mode, model_device
from ..config import ThreatModel
from ..errors import ConfigError
from ._base import Precision, check_precision, conv_layout, get_attack, predict
from .transfer import transfer_examples

__all__ = [
    "EvalResult", "accuracy", "accuracy_on_batches", "evaluate", "iter_batches", "robust_accuracy",
    "transfer_accuracy",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EvalResult:
    """Accuracies of one model on one set of images.

    Attributes:
        clean: accuracy on the clean images.
        robust: attack name -> accuracy on that attack's adversarial images.
        worst: per-example worst case: an image counts only if it is classified correctly clean
            *and* under every listed attack (the adversary may always choose delta = 0).
        transfer: accuracy on PGD examples crafted against ``source`` (None without a source).
        n: number of images scored.
    """

    clean: float
    robust: dict[str, float]
    worst: float
    transfer: float | None
    n: int


def iter_batches(model: nn.Module, loader: Batches,
                 max_images: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields loader batches on the model's device, cut off after ``max_images`` images.

    Raises:
        ConfigError: ``max_images`` is below 1.
    """
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images: expected >= 1 or None, got {max_images}")
    device = model_device(model)
    seen = 0
    for x, y in loader:
        if max_images is not None:
            if seen >= max_images:
                return
            x, y = x[: max_images - seen], y[: max_images - seen]
        seen += len(y)
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y


def accuracy_on_batches(model: nn.Module, batches: Batches) -> float:
    """Top-1 accuracy on ``(x, y)`` batches exactly as given: no attack, no device move.

    The model is scored in eval mode (modes restored) without gradients; 0.0 for no batches.
    Batches may be a generator that crafts each one (the transfer accuracy does): it runs
    while the model is in eval mode.
    """
    correct = total = 0
    with eval_mode(model):
        for x, y in batches:
            correct += int((predict(model, x) == y).sum())
            total += len(y)
    return correct / total if total else 0.0


def accuracy(model: nn.Module, loader: Batches, *, max_images: int | None = None) -> float:
    """Clean top-1 accuracy (eval mode, no gradients; modes restored).

    Args:
        model: the classifier; inputs in [0, 1].
        loader: iterable of ``(x, y)`` batches.
        max_images: score only the first this many images.
    """
    with conv_layout(model):
        return accuracy_on_batches(model, iter_batches(model, loader, max_images))


def robust_accuracy(model: nn.Module, loader: Batches, threat: ThreatModel, *, attack: str = "pgd",
                    max_images: int | None = None, **options: Any) -> float:
    """Accuracy on adversarial examples of one registered attack.

    Args:
        model: the classifier.
        loader: iterable of ``(x, y)`` batches.
        threat: the study's threat model.
        attack: a name in :func:`~searchprune.attacks.list_attacks`.
        max_images: attack only the first this many images.
        **options: passed to the attack (e.g. ``precision="bf16"``, ``restarts=5``).
    """
    fn = get_attack(attack)
    with eval_mode(model), conv_layout(model):
        adversarial = ((fn(model, x, y, threat, **options), y) for x, y in iter_batches(model, loader, max_images))
        return accuracy_on_batches(model, adversarial)


def transfer_accuracy(model: nn.Module, source: nn.Module, loader: Batches, threat: ThreatModel, *,
                      max_images: int | None = None, **options: Any) -> float:
    """Accuracy of ``model`` on PGD examples crafted against ``source``.

    Args:
        model: the model scored (the target).
        source: the model attacked (typically the dense base model).
        loader: iterable of ``(x, y)`` batches in [0, 1].
        threat: the threat model.
        max_images: score only the first this many images.
        **options: passed to :func:`~searchprune.attacks.transfer_examples`.
    """
    crafted = ((transfer_examples(source, x, y, threat, **options), y)
               for x, y in iter_batches(model, loader, max_images))
    return accuracy_on_batches(model, crafted)
def _n_images(loader: Batches, max_images: int | None) -> int | None:
    """Images the loader will yield, when it says (a BatchLoader's ``num_images``)."""
    n = getattr(loader, "num_images", None)
    if not isinstance(n, int):
        return max_images
    return n if max_images is None else min(n, max_images)


def evaluate(model: nn.Module, loader: Batches, threat: ThreatModel, *,
             attacks: Iterable[str] = ("pgd",), max_images: int | None = None,
             source: nn.Module | None = None, precision: Precision = "fp32", progress: bool = False,
             desc: str = "evaluate") -> EvalResult:
    """Clean, per-attack, worst-case and (optionally) transfer accuracy in one pass over the data.

    Args:
        model: the classifier to score.
        loader: iterable of ``(x, y)`` batches.
        threat: the study's threat model, used by every attack.
        attacks: registered attack names; each runs with the threat model's settings.
        max_images: score only the first this many images.
        source: a second model (typically the dense base) to craft transfer examples on; a
            compressed model that resists white-box PGD but not these examples masks gradients.
        precision: passed to every attack (and the transfer crafting); "bf16" crafts faster on
            CPUs with bf16 support. Accuracies are always scored in fp32.
        progress: report progress in images (a bar on a terminal, a line at least every 30 s
            otherwise: :class:`searchprune._progress.Progress`), for the long strong-attack runs
            of certification and export.
        desc: the name on the progress bar or line.

    Returns:
        An :class:`EvalResult`.
    """
    names = list(attacks)
    fns = {name: get_attack(name) for name in names}  # unknown names fail before any work
    check_precision(precision)
    extra = {} if precision == "fp32" else {"precision": precision}  # custom attacks may lack it
    clean = worst = transfer = total = 0
    robust = dict.fromkeys(names, 0)
    bar = Progress(_n_images(loader, max_images), f"{desc}[{','.join(names) or 'clean'}]", unit="img",
                   enabled=progress)
    with bar, eval_mode(model), conv_layout(model):
        for x, y in iter_batches(model, loader, max_images):
            ok = predict(model, x) == y  # (B,) bool
            clean += int(ok.sum())
            all_ok = ok.clone()
            for name, fn in fns.items():
                ok_a = predict(model, fn(model, x, y, threat, **extra)) == y
                robust[name] += int(ok_a.sum())
                all_ok &= ok_a
            worst += int(all_ok.sum())
            if source is not None:
                x_tr = transfer_examples(source, x, y, threat, **extra)
                transfer += int((predict(model, x_tr) == y).sum())
            total += len(y)
            bar.update(len(y), images=len(y), clean=clean / total, worst=worst / total)
    frac = (lambda c: c / total) if total else (lambda c: 0.0)
    return EvalResult(clean=frac(clean), robust={k: frac(v) for k, v in robust.items()}, worst=frac(worst),
                      transfer=None if source is None else frac(transfer), n=total)
