"""Compatibility shim: ``searchprune/checkpoint.py`` imports ``resize_to_state_dict_`` from here.
Remove once it imports ``searchprune.prune.resize_to_state_dict_`` (its new home: ``loading.py``)."""

from .loading import load_pruned_state_dict_, resize_to_state_dict_

__all__ = ["resize_to_state_dict_", "load_pruned_state_dict_"]
