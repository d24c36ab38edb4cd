# shim: removed once prune/search import models.macs
from .models.macs import LayerCost, count_dense_macs, count_macs, count_params, layer_costs  # noqa: F401
