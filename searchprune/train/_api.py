"""The training loop and the recipe registry: optimizers, per-batch schedules, fractional epochs.

A *recipe* turns one batch into a loss; everything else (optimizer, per-batch learning-rate
schedule, fractional epochs, seeding, progress, devices) is shared by :func:`train_`. Adding a
recipe is one decorated function::

    @register_recipe("mine")
    def mine(model, x, y, ctx: RecipeContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits   # (loss, logits the train accuracy is read from)

Recipes get the model in train mode; attacks they call put it in eval mode and restore it.
Learning rates follow the schedule per batch, so fractional epochs and ``max_batches`` caps see
the whole curve compressed into the batches that actually run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._progress import Progress
from .._registry import Registry
from .._torch import model_device, seed_everything
from ..attacks import Precision, autocast, conv_layout, fast_layout
from ..config import ThreatModel, TrainConfig
from ..errors import ConfigError

__all__ = ["RECIPES", "RecipeContext", "RecipeFn", "list_recipes", "register_recipe", "scheduled_lr", "train_"]


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may read besides the batch.

    Attributes:
        cfg: the training config.
        attack: the training-time threat model: ``cfg.attack`` if set, else the study's.
        precision: "fp32", or "bf16" when the forward passes run under bfloat16 autocast.
    """

    cfg: TrainConfig
    attack: ThreatModel
    precision: Precision = "fp32"


RecipeFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, RecipeContext], tuple[torch.Tensor, torch.Tensor]]

RECIPES: Registry[RecipeFn] = Registry("recipe")


def register_recipe(name: str) -> Callable[[RecipeFn], RecipeFn]:
    """Registers ``fn(model, x, y, ctx) -> (loss, logits)`` under ``name``.

    ``loss`` is the scalar to minimize for the batch; ``logits`` (B, num_classes) are the outputs
    the epoch's training accuracy is measured on.
    """
    return RECIPES.register(name)


def list_recipes() -> list[str]:
    """Names of the registered recipes, sorted."""
    return RECIPES.names()


# ---------------------------------------------------------------------------------------------
# Optimizers and learning-rate schedules
# ---------------------------------------------------------------------------------------------


def _sgd(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _adam(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam,
}

# Each schedule maps (cfg, t) -> multiplier of cfg.lr, where t in [0, 1) is the fraction of all
# training batches done before the current one.
_SCHEDULES: dict[str, Callable[[TrainConfig, float], float]] = {
    "constant": lambda cfg, t: 1.0,
    "step": lambda cfg, t: cfg.gamma ** sum(t >= m for m in cfg.milestones),
    "cosine": lambda cfg, t: 0.5 * (1.0 + math.cos(math.pi * t)),
    # Wong et al.'s triangle 0 -> lr -> 0, read at the *end* of each batch so no batch has lr 0
    "cyclic": lambda cfg, t: t / cfg.cyclic_peak if t < cfg.cyclic_peak else (1 - t) / (1 - cfg.cyclic_peak),
}


def scheduled_lr(cfg: TrainConfig, *, step: int, total: int) -> float:
    """The learning rate of batch ``step`` (0-based) out of ``total`` training batches.

    ``constant``: ``lr``. ``step``: ``lr * gamma^k``, k = milestones (fractions of ``total``)
    already passed. ``cosine``: ``lr * (1 + cos(pi * step / total)) / 2``. ``cyclic``: linear
    0 -> ``lr`` -> 0 with the peak at ``cyclic_peak * total``, evaluated at ``step + 1``.
    """
    if total < 1 or not 0 <= step < total:
        raise ValueError(f"expected 0 <= step < total, got step={step}, total={total}")
    if cfg.schedule not in _SCHEDULES:
        raise ConfigError(f"train.schedule: unknown schedule {cfg.schedule!r}; expected one of: "
                          f"{', '.join(_SCHEDULES)}")
    t = (step + 1) / total if cfg.schedule == "cyclic" else step / total
    return cfg.lr * _SCHEDULES[cfg.schedule](cfg, t)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _plan(cfg: TrainConfig, loader: Iterable[Any]) -> tuple[int, int]:
    """(batches per full epoch, total batches to run) for possibly fractional ``cfg.epochs``."""
    if not isinstance(loader, Sized):
        raise ConfigError("train_: the loader must have a len() (batches per epoch), e.g. a BatchLoader")
    per_epoch = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)
    if per_epoch < 1:
        raise ConfigError("train_: the loader yields no batches")
    return per_epoch, math.floor(cfg.epochs * per_epoch + 0.5)


def train_(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig, *,
           threat: ThreatModel, params: Iterable[nn.Parameter] | None = None,
           extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
           epoch_callback: Callable[[int, dict[str, float]], bool | None] | None = None,
           progress: bool = False, precision: Precision = "fp32") -> list[dict[str, float]]:
    """Trains ``model`` in place with ``cfg``'s recipe, optimizer and schedule.

    Args:
        model: the model; trained where it lives (batches are moved to its device). Its modes are
            ``train()`` during training and restored per submodule afterwards.
        loader: iterable of ``(x in [0, 1], y)`` batches with a ``len()``; a
            ``searchprune.data.BatchLoader`` is reshuffled per epoch through ``set_epoch``.
        cfg: recipe, epochs (fractions run that share of the batches), optimizer, schedule, seed.
        threat: the study's threat model; adversarial recipes train against ``cfg.attack`` if it is
            set, else against this.
        params: the parameters to optimize (default: all with ``requires_grad``). Gradients are
            computed for these only, so e.g. HYDRA's score training leaves the weights untouched.
        extra_loss: ``extra_loss(model) -> scalar`` added to every batch's loss (an in-train MAC
            penalty, say); the reported loss includes it.
        epoch_callback: ``epoch_callback(epoch, record)`` after each epoch; returning True stops
            training early (a multi-fidelity gate may also raise).
        progress: report progress (:class:`searchprune._progress.Progress`): a tqdm bar with the
            running loss and accuracy on a terminal, a line at least every 30 s otherwise (epoch,
            images/s, elapsed, estimate).
        precision: "fp32", or "bf16" to run forward passes (and training-time attacks) under
            bfloat16 autocast: about 2x faster on CPUs with AVX-512 bf16.

    Returns:
        One record per epoch run: ``epoch``, ``loss`` (mean over the epoch's images), ``acc``
        (training accuracy on the logits the recipe returns: adversarial ones for "pgd" and
        "fast", clean ones for "trades" and "standard"), ``lr`` (of the epoch's last batch),
        ``batches``, ``images``, ``seconds``.

    Raises:
        ConfigError: an unknown recipe/optimizer, no parameters to train, or a loader without len().
        FloatingPointError: the loss stopped being finite (diverged training).
    """
    recipe = RECIPES.get(cfg.recipe)
    if cfg.optimizer not in _OPTIMIZERS:
        raise ConfigError(f"train.optimizer: expected one of {', '.join(_OPTIMIZERS)}, got {cfg.optimizer!r}")
    per_epoch, total = _plan(cfg, loader)
    if total == 0:
        return []
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable or not all(p.requires_grad for p in trainable):
        raise ConfigError("train_: expected a non-empty list of parameters that require grad")
    seed_everything(cfg.seed)
    device = model_device(model) or torch.device("cpu")
    optimizer = _OPTIMIZERS[cfg.optimizer](trainable, cfg)
    ctx = RecipeContext(cfg=cfg, attack=cfg.attack or threat, precision=precision)
    history: list[dict[str, float]] = []
    step = 0
    flags = [(m, m.training) for m in model.modules()]
    bar = Progress(total, f"train[{cfg.recipe}]", enabled=progress)
    try:
        with conv_layout(model):
            model.train()
            for epoch in range(math.ceil(total / per_epoch)):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                n_batches = min(per_epoch, total - step)
                start = time.perf_counter()
                loss_sum = torch.zeros((), device=device)  # on-device sums: no sync per batch
                correct = torch.zeros((), device=device, dtype=torch.long)
                images = done = 0
                lr = cfg.lr
                for x, y in loader:
                    x = fast_layout(x.to(device, non_blocking=True))
                    y = y.to(device, non_blocking=True)
                    lr = scheduled_lr(cfg, step=step, total=total)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with autocast(device, precision):
                        loss, logits = recipe(model, x, y, ctx)
                    loss = loss.float()
                    if extra_loss is not None:
                        loss = loss + extra_loss(model)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward(inputs=trainable)
                    optimizer.step()

                    loss_sum += loss.detach() * len(y)
                    correct += (logits.detach().argmax(dim=1) == y).sum()
                    images += len(y)
                    done += 1
                    step += 1
                    if progress:  # reading the on-device sums syncs: only when someone looks
                        bar.update(1, images=len(y), epoch=epoch, loss=float(loss_sum) / images,
                                   acc=int(correct) / images, lr=lr)
                    if done == n_batches:  # fractional epoch or max_batches: draw no further batch
                        break
                record = {"epoch": epoch, "loss": float(loss_sum) / max(images, 1),
                          "acc": int(correct) / max(images, 1), "lr": lr, "batches": done, "images": images,
                          "seconds": time.perf_counter() - start}
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"train_: the loss became {record['loss']} in epoch {epoch} "
                                             f"(recipe {cfg.recipe!r}, lr {lr:g}); lower the learning rate")
                history.append(record)
                if epoch_callback is not None and epoch_callback(epoch, record):
                    break
                if done < n_batches:  # the loader ran dry early: nothing more to draw
                    break
    finally:
        bar.close()
        for m, training in flags:
            m.training = training
    return history
