"""searchprune: multi-objective search for compressed networks that stay robust to adversarial attacks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
