"""``learned``: the method decides how much each layer loses (HYDRA, in-train pruning); no
allocation happens here, so :meth:`select` refuses."""

from __future__ import annotations

from ._base import Allocation, register_allocation

__all__ = ["LearnedAllocation"]


@register_allocation("learned")
class LearnedAllocation(Allocation):
    """Marker: the method's own training allocates."""

    scored = False
