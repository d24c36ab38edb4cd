"""Per-trial gradient-masking checks: is a trial's PGD accuracy a robustness number at all?

Compressed models are where PGD numbers lie. A quantizer without a straight-through estimator has
a zero input gradient almost everywhere; hard rounding, saturated softmax and greedily pruned
boundaries shatter or flatten the loss surface around the one attack the search optimizes for. A
search that rewards PGD accuracy then rewards masking. :func:`masking_checks` measures the classic
symptoms (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On evaluating adversarial
robustness") and raises a named flag for each. The thresholds named below are the fields of one
frozen :class:`MaskingThresholds`; what the checks may spend is one :class:`CheckBudget`:

``zero_grad``
    More than ``zero_grad_max_frac`` of the correctly classified inputs have a numerically zero
    input gradient of the cross-entropy loss (``max |grad| <= grad_tol``). A gradient attack cannot
    move such inputs. ``zero_grad_frac_margin`` (the same measure for the margin loss
    ``logit_y - max_{j != y} logit_j``) tells the two causes apart: it is also ~1 when the network
    itself is flat (rounding, quantizer without STE), and ~0 when only the softmax saturated.
``strong_gap``
    PGD accuracy exceeds the strong attacks' accuracy by more than ``strong_gap_margin``. The
    strong accuracy is the per-example ensemble of APGD-CE and the gradient-free Square Attack
    (an input counts only if it survives both); Square is blind to gradient masking.
``scaled_gap``
    PGD accuracy exceeds the logit-scaled PGD's (``pgd_scaled``, PGD++ of Gupta & Ajanthan 2022:
    the logits divided by the mean singular value of the input-logit Jacobian) by more than
    ``scaled_gap_margin``, on the same images. The scaling changes no prediction, only the loss
    PGD ascends: a gap means the cross-entropy gradient vanished (a saturated softmax, large
    logits of a low-bit network) and the plain PGD number overstates robustness. Runs when the
    ``pgd_scaled`` attack is registered and ``budget.scaled`` is on.
``transfer_above_whitebox``
    Transfer accuracy is *below* white-box accuracy by more than ``transfer_margin``:
    ``transfer_acc < pgd_acc - transfer_margin``. Examples crafted on a different model (the dense
    source) use strictly less knowledge of the target than white-box PGD on the target itself, so an
    honest white-box attack fools at least as many inputs: transfer accuracy >= white-box accuracy.
    When a black-box transfer attack beats the white-box one, the white-box gradients are useless:
    the attack is "above" (stronger than) white-box, which is the signature of masking.
``steps_non_monotone``
    PGD with ``more_steps_factor`` x more steps gives *higher* accuracy than the base PGD, beyond
    ``monotone_tol``: ``pgd_more_acc > pgd_subset_acc + monotone_tol``. Both runs use the same
    random start (the global RNG is re-seeded identically for each), and PGD keeps the first
    fooling input, so on a deterministic model accuracy must be non-increasing in the number of
    steps. A rise means the gradient signal is stochastic or inconsistent (randomized defenses,
    shattered gradients).
``steps_not_converged``
    More steps *lower* accuracy by more than ``converge_margin``:
    ``pgd_subset_acc - pgd_more_acc > converge_margin``. Not masking as such, but the study's PGD
    had not converged (too few steps or too small a step), so its number overstates robustness in
    the same way.

A check that cannot run (no transfer value and no source model; Square under an L2 threat, where
APGD alone is the strong attack) reports ``None`` for its value and does not fire.

Noise: all accuracies here are on ``n`` images; a single accuracy has a standard error of at most
``0.5 / sqrt(n)`` (0.031 at n = 256). The comparisons the checks run *here* are paired (the same
images, the same random start), so their difference is much less noisy than that; values passed in
from elsewhere are compared as given, so measure them on the same images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import eval_mode
from ..config import ThreatModel
from ..errors import ConfigError
from ._base import get_attack, input_grad, list_attacks, predict
from .apgd import apgd
from .evaluate import iter_batches
from .square import square
from .transfer import transfer_examples

__all__ = [
    "CheckBudget", "MaskingReport", "MaskingThresholds", "masking_checks", "masking_flags", "zero_grad_fraction",
    "FLAG_NAMES", "MASKING_FLAGS",
]

FLAG_NAMES = ("zero_grad", "strong_gap", "scaled_gap", "transfer_above_whitebox", "steps_non_monotone",
              "steps_not_converged")
# The flags that say *this model* hides its gradients. steps_not_converged says the study's PGD is
# too short for every model alike: recorded, but not a reason to distrust one trial over another.
MASKING_FLAGS = tuple(name for name in FLAG_NAMES if name != "steps_not_converged")


@dataclass(frozen=True)
class MaskingThresholds:
    """When each flag fires: the one place the thresholds live.

    Attributes:
        grad_tol: an input gradient with every entry at most this in magnitude counts as zero.
        zero_grad_max_frac: ``zero_grad`` fires when more than this fraction of the correctly
            classified inputs has a zero gradient (0.1: a few saturated examples are tolerated).
        strong_gap_margin: ``strong_gap`` fires when PGD accuracy exceeds the strong attacks' by
            more than this (0.05: honest models show a few points between PGD and APGD+Square).
        scaled_gap_margin: ``scaled_gap`` fires when PGD accuracy exceeds the logit-scaled PGD's by
            more than this (a paired comparison on the same images and start, so less noisy).
        transfer_margin: ``transfer_above_whitebox`` fires when transfer accuracy is lower than
            PGD accuracy by more than this (transfer *below* white-box: the black-box attack is the
            stronger one).
        monotone_tol: ``steps_non_monotone`` fires when more steps raise accuracy by more than this
            (0.01: about two or three images of 256).
        converge_margin: ``steps_not_converged`` fires when more steps lower accuracy by more than
            this.
    """

    grad_tol: float = 1e-30
    zero_grad_max_frac: float = 0.1
    strong_gap_margin: float = 0.05
    scaled_gap_margin: float = 0.03
    transfer_margin: float = 0.05
    monotone_tol: float = 0.01
    converge_margin: float = 0.03

    def as_dict(self) -> dict[str, float]:
        """Threshold name -> value, as stored in :attr:`MaskingReport.thresholds`."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class CheckBudget:
    """What the masking checks may spend on one model.

    Attributes:
        n_images: images measured (None: the whole loader). Cost per image, roughly:
            ``(1 + more_steps_factor) * threat.steps + apgd_steps`` forward+backward passes and
            ``square_queries`` forward passes for inputs that stay robust; fooled inputs stop early.
        more_steps_factor: the second PGD runs this many times the threat model's steps.
        apgd_steps: APGD iterations (100 in AutoAttack).
        square_queries: Square Attack queries (AutoAttack uses 5000; 300 catches gross masking).
        seed: seeds APGD, Square and PGD's random start, so a report is reproducible.
        scaled: also run the logit-scaled PGD (``pgd_scaled``, one more PGD run) when registered.

    Raises:
        ConfigError: ``n_images`` below 1 or ``more_steps_factor`` below 2.
    """

    n_images: int | None = 256
    more_steps_factor: int = 4
    apgd_steps: int = 100
    square_queries: int = 300
    seed: int = 0
    scaled: bool = True

    def __post_init__(self) -> None:
        if self.n_images is not None and self.n_images < 1:
            raise ConfigError(f"masking_checks n_images: expected >= 1 or None, got {self.n_images}")
        if self.more_steps_factor < 2:
            raise ConfigError(f"masking_checks more_steps_factor: expected >= 2, got {self.more_steps_factor}")


@dataclass(frozen=True)
class MaskingReport:
    """What the masking checks measured on one model, and which flags fired.

    Attributes:
        n_images: images the checks measured here.
        clean_acc: clean accuracy on those images.
        pgd_acc: the white-box PGD accuracy the strong-attack and transfer checks compared against
            (the value passed in, else ``pgd_subset_acc``).
        pgd_subset_acc: the threat model's PGD on the checked images.
        pgd_more_acc: the same PGD with ``more_steps_factor`` x the steps, same random start.
        more_steps_factor: how many times more steps the second PGD ran.
        apgd_acc: APGD-CE accuracy measured here (None when ``strong_acc`` was passed in).
        square_acc: Square Attack accuracy measured here (None when passed in, or an L2 threat).
        scaled_acc: logit-scaled PGD accuracy on the checked images (None: not run).
        strong_acc: the strong attacks' accuracy (passed in, or the APGD + Square ensemble here).
        transfer_acc: accuracy on examples crafted against the source model (None: not measured).
        zero_grad_frac: fraction of correctly classified inputs whose CE input gradient is zero.
        zero_grad_frac_margin: the same for the margin loss (flat network vs. saturated softmax).
        worst_acc: per-example worst case over everything measured *here*: an image counts only if
            it is classified correctly clean and under every attack run here.
        flags: flag name -> fired, for every name in :data:`FLAG_NAMES`.
        thresholds: the thresholds the flags were decided with.
    """

    n_images: int
    clean_acc: float
    pgd_acc: float
    pgd_subset_acc: float
    pgd_more_acc: float
    more_steps_factor: int
    apgd_acc: float | None
    square_acc: float | None
    strong_acc: float | None
    scaled_acc: float | None
    transfer_acc: float | None
    zero_grad_frac: float
    zero_grad_frac_margin: float
    worst_acc: float
    flags: dict[str, bool] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def fired(self) -> list[str]:
        """Names of the flags that fired, in :data:`FLAG_NAMES` order."""
        return [name for name in FLAG_NAMES if self.flags.get(name, False)]

    @property
    def suspicious(self) -> bool:
        """True when any flag fired: the trial's PGD accuracy should not be trusted as is."""
        return bool(self.fired)

    @property
    def masking(self) -> list[str]:
        """The fired flags of :data:`MASKING_FLAGS` (what ``eval.on_flag`` acts on)."""
        return [name for name in self.fired if name in MASKING_FLAGS]

    def as_user_attrs(self, prefix: str = "mask.") -> dict[str, Any]:
        """Flat JSON-safe key/values for ``optuna.Trial.set_user_attr``.

        Values are Python ``float``/``int``/``bool`` or ``None``; flags appear as
        ``"<prefix>flag.<name>"``, thresholds as ``"<prefix>thr.<name>"``, and
        ``"<prefix>suspicious"`` is True when any flag fired.

        Example:
            >>> for k, v in report.as_user_attrs().items():
            ...     trial.set_user_attr(k, v)
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("flags", "thresholds"):
                continue
            v = getattr(self, f.name)
            out[prefix + f.name] = v if v is None or isinstance(v, bool | int) else float(v)
        out.update({f"{prefix}flag.{k}": bool(v) for k, v in self.flags.items()})
        out.update({f"{prefix}thr.{k}": float(v) for k, v in self.thresholds.items()})
        out[prefix + "suspicious"] = self.suspicious
        return out


def masking_flags(*, zero_grad_frac: float, pgd_acc: float, pgd_more_acc: float,
                  strong_acc: float | None = None, transfer_acc: float | None = None,
                  strong_ref_acc: float | None = None, transfer_ref_acc: float | None = None,
                  scaled_acc: float | None = None,
                  thresholds: MaskingThresholds = MaskingThresholds()) -> dict[str, bool]:
    """Decides the flags from measured values (the pure part of :func:`masking_checks`).

    Args:
        zero_grad_frac: fraction of inputs with a numerically zero CE input gradient.
        pgd_acc: PGD accuracy with the threat model's steps.
        pgd_more_acc: PGD accuracy with more steps, on the same images from the same random start.
        strong_acc: accuracy under the strong attacks, or None (check skipped).
        transfer_acc: accuracy on transferred examples, or None (check skipped).
        strong_ref_acc: the white-box accuracy ``strong_acc`` is compared with (default ``pgd_acc``).
        transfer_ref_acc: the white-box accuracy ``transfer_acc`` is compared with (default ``pgd_acc``).
        scaled_acc: logit-scaled PGD accuracy on the same images as ``pgd_acc``, or None (skipped).
        thresholds: when each flag fires (see :class:`MaskingThresholds`).

    Returns:
        Flag name -> fired, for every name in :data:`FLAG_NAMES`.

    Example:
        >>> masking_flags(zero_grad_frac=0.0, pgd_acc=0.60, pgd_more_acc=0.58, strong_acc=0.30)["strong_gap"]
        True
    """
    t = thresholds
    strong_ref = pgd_acc if strong_ref_acc is None else strong_ref_acc
    transfer_ref = pgd_acc if transfer_ref_acc is None else transfer_ref_acc
    return {
        "zero_grad": zero_grad_frac > t.zero_grad_max_frac,
        "strong_gap": strong_acc is not None and strong_ref - strong_acc > t.strong_gap_margin,
        "scaled_gap": scaled_acc is not None and pgd_acc - scaled_acc > t.scaled_gap_margin,
        "transfer_above_whitebox": transfer_acc is not None and transfer_ref - transfer_acc > t.transfer_margin,
        "steps_non_monotone": pgd_more_acc - pgd_acc > t.monotone_tol,
        "steps_not_converged": pgd_acc - pgd_more_acc > t.converge_margin,
    }


def _margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} logit_j - logit_y`` per example (b,): a loss to ascend that never saturates."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -float("inf")).amax(dim=1)
    return other - true


def zero_grad_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str = "ce",
                       grad_tol: float = 1e-30) -> torch.Tensor:
    """Which inputs have a numerically zero input gradient: ``max |d loss_i / d x_i| <= grad_tol``.

    Args:
        model: the classifier (mode left as it is; only the input gradient is taken).
        x: inputs (B, ...) in [0, 1].
        y: labels (B,).
        loss: "ce" (cross-entropy, what PGD ascends) or "margin" (``max_{j != y} z_j - z_y``).
        grad_tol: largest absolute gradient entry still counted as zero.

    Returns:
        A (B,) bool tensor, True where the gradient is zero.
    """
    if loss not in ("ce", "margin"):
        raise ConfigError(f"zero_grad_fraction loss: expected 'ce' or 'margin', got {loss!r}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        per_ex = F.cross_entropy(logits, y, reduction="none") if loss == "ce" else _margin_loss(logits, y)
        grad = input_grad(per_ex.sum(), x)  # rows do not interact in eval mode
    return grad.detach().flatten(1).abs().amax(dim=1) <= grad_tol


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """The global RNG seeded to ``seed`` inside, restored on exit: PGD draws its random start
    from it, and two runs with the same seed start from the same point."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def masking_checks(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   threat: ThreatModel, *, pgd_acc: float | None = None, strong_acc: float | None = None,
                   transfer_acc: float | None = None, source: nn.Module | None = None,
                   budget: CheckBudget = CheckBudget(),
                   thresholds: MaskingThresholds = MaskingThresholds()) -> MaskingReport:
    """Runs the gradient-masking checks on ``model`` and returns what they found.

    Values the caller already measured are used as given; what is missing is measured here on the
    first ``budget.n_images`` images of ``loader``: the strong attacks (APGD-CE with
    ``budget.apgd_steps`` and, for L-inf, Square with ``budget.square_queries``) when ``strong_acc``
    is None, and the transfer attack when ``transfer_acc`` is None and a ``source`` model is given.
    The zero-gradient and steps checks always run here. Comparisons pair like with like: passed-in
    strong / transfer values are compared with the passed-in ``pgd_acc``; values measured here
    with PGD measured here on the same images.

    Args:
        model: the (compressed) classifier to check; modes restored afterwards.
        loader: iterable of ``(x, y)`` batches in [0, 1] (e.g. a ``BatchLoader`` on validation data).
        threat: the study's threat model (PGD runs exactly as the study runs it).
        pgd_acc: the trial's PGD accuracy; None measures it here.
        strong_acc: accuracy under a strong attack (e.g. the min over APGD / Square); None
            measures the APGD + Square ensemble here.
        transfer_acc: accuracy on examples crafted against the dense source; None measures it
            here when ``source`` is given, else skips the check.
        source: the dense model to craft transfer examples on.
        budget: images, steps, queries and seed of the measurements (see :class:`CheckBudget`).
        thresholds: when each flag fires (see :class:`MaskingThresholds`).

    Returns:
        A :class:`MaskingReport`.

    Raises:
        ConfigError: the loader gave no images.
    """
    b, t = budget, thresholds
    pgd_fn = get_attack("pgd")
    more_threat = dataclasses.replace(threat, steps=threat.steps * b.more_steps_factor)
    run_strong = strong_acc is None
    run_square = run_strong and threat.norm == "linf"
    run_transfer = transfer_acc is None and source is not None
    run_scaled = b.scaled and "pgd_scaled" in list_attacks()
    scaled_fn = get_attack("pgd_scaled") if run_scaled else None

    n = 0
    counts = dict.fromkeys(("clean", "pgd", "more", "apgd", "square", "strong", "transfer", "scaled", "worst",
                            "zero_ce", "zero_margin"), 0)
    with eval_mode(model):
        for bi, (x, y) in enumerate(iter_batches(model, loader, b.n_images)):
            s = b.seed + bi  # a different random start per batch, the same for both PGD runs
            ok = predict(model, x) == y  # (b,) bool
            zero_ce = zero_grad_fraction(model, x, y, loss="ce", grad_tol=t.grad_tol)
            zero_margin = zero_grad_fraction(model, x, y, loss="margin", grad_tol=t.grad_tol)
            counts["zero_ce"] += int((zero_ce & ok).sum())
            counts["zero_margin"] += int((zero_margin & ok).sum())

            with _seeded(x.device, s):
                ok_pgd = predict(model, pgd_fn(model, x, y, threat)) == y
            with _seeded(x.device, s):
                ok_more = predict(model, pgd_fn(model, x, y, more_threat)) == y
            worst = ok & ok_pgd & ok_more
            if scaled_fn is not None:
                with _seeded(x.device, s):  # the same random start as the PGD it is compared with
                    ok_scaled = predict(model, scaled_fn(model, x, y, threat)) == y
                counts["scaled"] += int(ok_scaled.sum())
                worst &= ok_scaled
            counts["clean"] += int(ok.sum())
            counts["pgd"] += int(ok_pgd.sum())
            counts["more"] += int(ok_more.sum())

            if run_strong:
                x_a = apgd(model, x, y, eps=threat.eps, norm=threat.norm, steps=b.apgd_steps, seed=s,
                           clamp=threat.clamp)
                ok_strong = predict(model, x_a) == y
                counts["apgd"] += int(ok_strong.sum())
                if run_square:
                    x_s = square(model, x, y, eps=threat.eps, queries=b.square_queries, seed=s,
                                 clamp=threat.clamp)
                    ok_sq = predict(model, x_s) == y
                    counts["square"] += int(ok_sq.sum())
                    ok_strong = ok_strong & ok_sq
                counts["strong"] += int((ok & ok_strong).sum())
                worst &= ok_strong
            if run_transfer:
                assert source is not None
                with _seeded(x.device, s):
                    x_t = transfer_examples(source, x, y, threat)
                ok_t = predict(model, x_t) == y
                counts["transfer"] += int(ok_t.sum())
                worst &= ok_t
            counts["worst"] += int(worst.sum())
            n += len(y)
    if n == 0:
        raise ConfigError("masking_checks: the loader gave no images")

    def frac(key: str) -> float:
        return counts[key] / n

    pgd_subset = frac("pgd")
    strong_here = frac("strong") if run_strong else strong_acc
    transfer_here = frac("transfer") if run_transfer else transfer_acc
    # pair like with like: a passed-in pgd_acc goes with passed-in values only
    pgd_for_strong = pgd_acc if (pgd_acc is not None and not run_strong) else pgd_subset
    pgd_for_transfer = pgd_acc if (pgd_acc is not None and not run_transfer) else pgd_subset
    zero_frac = counts["zero_ce"] / counts["clean"] if counts["clean"] else 0.0
    flags = masking_flags(zero_grad_frac=zero_frac, pgd_acc=pgd_subset, pgd_more_acc=frac("more"),
                          strong_acc=strong_here, transfer_acc=transfer_here, strong_ref_acc=pgd_for_strong,
                          transfer_ref_acc=pgd_for_transfer,
                          scaled_acc=frac("scaled") if run_scaled else None, thresholds=t)
    return MaskingReport(
        n_images=n, clean_acc=frac("clean"), pgd_acc=pgd_acc if pgd_acc is not None else pgd_subset,
        pgd_subset_acc=pgd_subset, pgd_more_acc=frac("more"), more_steps_factor=b.more_steps_factor,
        apgd_acc=frac("apgd") if run_strong else None, square_acc=frac("square") if run_square else None,
        strong_acc=strong_here, scaled_acc=frac("scaled") if run_scaled else None, transfer_acc=transfer_here,
        zero_grad_frac=zero_frac,
        zero_grad_frac_margin=counts["zero_margin"] / counts["clean"] if counts["clean"] else 0.0,
        worst_acc=frac("worst"), flags=flags, thresholds=t.as_dict(),
    )
