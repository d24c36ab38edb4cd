"""User-facing errors. Nothing here imports the rest of the package, so every module may import it."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A user-facing error: a bad value in a config, a CLI flag or a file.

    The message always names the offending value and what was expected, so the CLI prints it
    without a traceback.
    """
