"""The model registry: ``@register_model`` on plain functions, ``create_model``, ``build_model``.

A model function takes the five dataset-derived keyword arguments and returns an ``nn.Module``
whose first layer is :class:`~searchprune.models.Normalize` and whose final ``nn.Linear`` carries
``is_classifier = True``::

    @register_model("tiny")
    def tiny(*, num_classes=10, in_channels=3, image_size=(32, 32), mean=None, std=None) -> nn.Module:
        ...
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

from .._registry import Registry
from ..config import ModelConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..data import DatasetInfo

__all__ = ["register_model", "list_models", "create_model", "build_model", "mark_classifier", "MODELS"]

ModelFn = Callable[..., nn.Module]
_M = TypeVar("_M", bound=nn.Module)

MODELS: Registry[ModelFn] = Registry("model")

_COMMON = ("num_classes", "in_channels", "image_size", "mean", "std")


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Registers a model function under ``name`` (timm's ``@register_model``).

    The function must accept the keyword arguments ``num_classes``, ``in_channels``,
    ``image_size``, ``mean`` and ``std``; any others it declares become options for
    ``ModelConfig.kwargs``.
    """
    registry_deco = MODELS.register(name)

    def deco(fn: ModelFn) -> ModelFn:
        params = inspect.signature(fn).parameters
        missing = [p for p in _COMMON if p not in params]
        if missing:
            raise TypeError(f"model function {fn.__name__} registered as {name!r} must accept {missing}")
        return registry_deco(fn)

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` and ``model.arch``."""
    return MODELS.names()


def _as_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 1 for v in hw):
        raise ConfigError(f"image_size: expected (H, W) with positive integers, got {image_size!r}")
    return hw[0], hw[1]


def require_min_size(model: str, image_size: Sequence[int], minimum: int) -> None:
    """Raises ConfigError when ``image_size`` is below what ``model``'s down-sampling needs."""
    if min(image_size) < minimum:
        raise ConfigError(f"model {model!r}: image_size {tuple(image_size)} is too small; "
                          f"expected at least {minimum}x{minimum}")


def _check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Rejects keyword arguments ``fn`` does not declare (no silent ``**kwargs`` pass-through)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the call itself complain
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = [p for p in params if p not in _COMMON] or ["(none)"]
        raise ConfigError(f"{what}: unexpected option(s) {unknown}; it accepts: {', '.join(accepted)}")


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Builds a registered model with freshly initialized weights.

    Args:
        name: a name from :func:`list_models`.
        num_classes: outputs of the classifier.
        in_channels: input image channels.
        image_size: ``(H, W)`` of the inputs (or one int for square images); models whose head
            depends on it (``cnn8``, ``mnist_small``) size their first FC from it.
        mean: per-channel mean for the model's :class:`Normalize` layer (None: no normalization).
        std: per-channel std, given together with ``mean``.
        **kwargs: the model's own options (see each model function).

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown name (the message lists the choices), an option the model does not
            take, or a bad size.

    Example:
        >>> model = create_model("cnn8", in_channels=1, image_size=(28, 28), mean=[0.286], std=[0.353])
    """
    fn = MODELS.get(name)
    if num_classes < 1:
        raise ConfigError(f"num_classes: expected >= 1, got {num_classes}")
    if in_channels < 1:
        raise ConfigError(f"in_channels: expected >= 1, got {in_channels}")
    _check_kwargs(fn, kwargs, f"model {name!r}")
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=_as_hw(image_size),
              mean=mean, std=std, **kwargs)


def _load_factory(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model.factory: expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error raised while the module runs
        raise ConfigError(f"model.factory {spec!r}: cannot import {module_name!r}: "
                          f"{type(e).__name__}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"model.factory {spec!r}: module {module_name!r} has no "
                              f"attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"model.factory {spec!r}: {attr!r} is not callable")
    return obj


def mark_classifier(module: _M) -> _M:
    """Sets ``module.is_classifier = True`` (the ShrinkBench convention pruning methods read).

    Returns:
        ``module``, for use inline: ``self.fc = mark_classifier(nn.Linear(128, num_classes))``.
    """
    # setattr: nn.Module's typed __setattr__ only admits tensors and modules for type checkers
    setattr(module, "is_classifier", True)
    return module


def _mark_last_linear(model: nn.Module) -> None:
    """Marks the last ``nn.Linear`` as the classifier when a factory's model marks nothing."""
    if any(getattr(m, "is_classifier", False) for m in model.modules()):
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        mark_classifier(linears[-1])


def build_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """Builds the model a study's ``model:`` section describes, sized for the dataset.

    With ``cfg.arch`` the registered model is created with ``info``'s classes, channels, image
    size, mean and std. With ``cfg.factory = "pkg.mod:fn"`` the function is imported and called
    with those of the same keyword arguments it declares (all of them if it takes ``**kwargs``).
    A factory that takes ``mean``/``std`` should put :class:`Normalize` first; one that does not
    receives raw [0, 1] inputs. If its model marks no classifier, the last ``nn.Linear`` is marked.
    ``cfg.kwargs`` are passed on top and may override the dataset's values (e.g.
    ``{mean: [0.5], std: [0.5]}`` for a [-1, 1] input convention).

    Raises:
        ConfigError: unknown arch, a factory string that does not import or resolve, a factory
            that does not return an ``nn.Module``, or options the constructor does not take.
    """
    args: dict[str, Any] = {
        "num_classes": info.num_classes, "in_channels": info.in_channels,
        "image_size": tuple(info.image_size), "mean": info.mean, "std": info.std,
    }
    args.update(cfg.kwargs)
    if cfg.arch is not None:
        return create_model(cfg.arch, **args)
    assert cfg.factory is not None  # ModelConfig guarantees exactly one of arch/factory
    fn = _load_factory(cfg.factory)
    _check_kwargs(fn, dict(cfg.kwargs), f"model.factory {cfg.factory!r}")
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass only the user's kwargs
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call_args = {k: v for k, v in args.items() if takes_all or k in params or k in cfg.kwargs}
    model = fn(**call_args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {cfg.factory!r}: expected it to return an nn.Module, "
                          f"got {type(model).__name__}")
    _mark_last_linear(model)
    return model
