"""Model zoo: ``create_model`` / ``list_models`` / ``build_model`` over a registry of model functions.

Every model starts with :class:`Normalize` (so inputs are in [0, 1]) and marks its final
``nn.Linear`` with ``is_classifier = True``. Adding a model is one function with
``@register_model("name")`` in a family file imported below; the parametrized tests pick it up.

Example:
    >>> from searchprune.models import create_model, list_models
    >>> model = create_model("resnet20", num_classes=10, in_channels=3, image_size=(32, 32))
"""

from __future__ import annotations

# family modules register their models on import
from . import cnn, mobilenetv2, preact_resnet, resnet_cifar, vgg, wrn  # noqa: F401
from ._normalize import Normalize
from ._registry import build_model, create_model, list_models, mark_classifier, register_model

__all__ = ["Normalize", "build_model", "create_model", "list_models", "mark_classifier", "register_model"]
