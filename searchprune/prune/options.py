"""Checks of single ``PruneConfig.options`` values, declared by methods and allocations.

A check is a callable ``value -> None`` (fine) ``| str`` (what was expected, e.g. "a positive
integer"); :meth:`~searchprune.prune.method.PruningMethod.check` turns a failure into a one-line
``ConfigError`` naming the key, the owner and the value. Pure: no torch, no model.

Example:
    >>> positive_int()(0)
    'a positive integer'
    >>> positive_int(allow_none=True)(None) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["OptionCheck", "positive_int", "integer", "number", "one_of", "boolean", "string", "run_checks"]

OptionCheck = Callable[[Any], "str | None"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(*, allow_none: bool = False) -> OptionCheck:
    """An integer >= 1 (or None when allowed)."""
    expected = "a positive integer or null" if allow_none else "a positive integer"

    def check(value: Any) -> str | None:
        if value is None and allow_none:
            return None
        return None if _is_int(value) and value >= 1 else expected

    return check


def integer(*, allow_none: bool = False) -> OptionCheck:
    """Any integer (or None when allowed), e.g. a seed."""
    expected = "an integer or null" if allow_none else "an integer"

    def check(value: Any) -> str | None:
        if value is None and allow_none:
            return None
        return None if _is_int(value) else expected

    return check


def number(*, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, allow_none: bool = False) -> OptionCheck:
    """A real number in the interval ``low .. high`` (open or closed ends; None = unbounded)."""
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    expected = f"a number in {lo}, {hi}" + (" or null" if allow_none else "")

    def check(value: Any) -> str | None:
        if value is None and allow_none:
            return None
        if not _is_number(value):
            return expected
        v = float(value)
        if low is not None and (v < low or (low_open and v == low)):
            return expected
        if high is not None and (v > high or (high_open and v == high)):
            return expected
        return None

    return check


def one_of(*values: str) -> OptionCheck:
    """One of the given strings."""
    expected = f"one of: {', '.join(values)}"
    return lambda value: None if value in values else expected


def boolean() -> OptionCheck:
    """True or False."""
    return lambda value: None if isinstance(value, bool) else "true or false"


def string(*, allow_none: bool = False) -> OptionCheck:
    """A non-empty string (or None when allowed), e.g. a recipe name."""
    expected = "a non-empty string or null" if allow_none else "a non-empty string"

    def check(value: Any) -> str | None:
        if value is None and allow_none:
            return None
        return None if isinstance(value, str) and value else expected

    return check


def run_checks(owner: str, checks: Mapping[str, OptionCheck], options: Mapping[str, Any]) -> None:
    """Runs ``checks[key]`` on every given option that has one.

    Args:
        owner: who the options belong to, for the message ("method 'gap'", "allocation 'mrs'").

    Raises:
        ConfigError: ``prune.options.<key>: <owner> expected <...>, got <value>``.
    """
    for key, value in options.items():
        check = checks.get(key)
        expected = check(value) if check is not None else None
        if expected is not None:
            raise ConfigError(f"prune.options.{key}: {owner} expected {expected}, got {value!r}")
