"""Deployment: the fast form of a model and what it costs (issue 9's cost axes, issue 14's export).

* :func:`fold_bn_`: BatchNorm folded into the preceding conv / linear layer.
* :func:`deployable`: masks and BN folded, int8 (torch.ao) for 8-bit weights, channels_last where it helps.
* :func:`latency_ms`: median time of the deployable form, cached by the layers' shape signature.
* :func:`size_bytes` / :func:`dense_macs`: honest storage (dense or sparse, per layer) and the MACs a
  dense kernel executes.
* :func:`measure_costs`: every cost kind of a trial (``macs``, ``dense_macs``, ``bitops``,
  ``size_bytes``, ``latency_ms``) in one call.
* :func:`int8_robustness`: the deployed int8 model attacked itself (transfer under STE, Square).

Example:
    >>> fast = deployable(model, example_input=torch.rand(128, 1, 28, 28))
    >>> latency_ms(model, torch.rand(1, 1, 28, 28), batch_size=128), size_bytes(model), dense_macs(model, (1, 28, 28))
"""

from __future__ import annotations

from ._measure import DEFAULT_CACHE, LatencyCache, shape_signature
from .costs import COST_KINDS, Costs, LatencySpec, measure_costs
from .fold import bn_pairs, fold_bn_
from .form import DeployInfo, deployable
from .int8_attack import int8_robustness
from .latency import latency_ms
from .size import FORMATS, LayerStorage, dense_macs, layer_storage, size_bytes

__all__ = [
    "fold_bn_", "bn_pairs", "deployable", "DeployInfo", "latency_ms", "LatencyCache", "DEFAULT_CACHE",
    "shape_signature", "size_bytes", "layer_storage", "LayerStorage", "FORMATS", "dense_macs",
    "COST_KINDS", "Costs", "LatencySpec", "measure_costs", "int8_robustness",
]
