"""Generic mapping -> frozen dataclass builder, YAML reading and the validation helpers of the configs.

``build(cls, mapping, path)`` turns a plain mapping into the dataclass, rejecting unknown keys and
wrong types with the key's path in the message (``space.prune.sparsity.low: expected a number,
got 'high'``). A field whose YAML form is not its type's form names its own parser in the field's
metadata: ``field(metadata={"parse": fn})`` with ``fn(value, path) -> converted value``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ..errors import ConfigError

__all__ = ["build", "to_dict", "load_yaml"]


def _frozen_map(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(m or {}))


def _check(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {msg}")


_NONE = type(None)
T = TypeVar("T")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is _NONE:
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (tuple, list):
        return "a list"
    if origin in (Mapping, dict) or tp is Mapping:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        options = [a for a in args if a is not _NONE]
        for a in options:
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1 or (isinstance(value, Mapping) and dataclasses.is_dataclass(options[0])):
            raise errors[0]  # only one alternative fits: its message is the precise one
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return build(tp, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Builds dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError.

    Args:
        cls: a dataclass; a field with ``metadata["parse"]`` is converted by that function
            (``parse(value, path)``), every other field by its type hint.
        data: the mapping, usually straight from YAML.
        path: the dotted path of ``data`` in the whole config, for error messages.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = list(fields)
    prefix = f"{path}." if path else ""
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; expected one of: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        parse = fields[k].metadata.get("parse")
        if parse is not None:  # the field's YAML form differs from its type: it names its parser
            kwargs[k] = parse(v, f"{prefix}{k}")
            continue
        kwargs[k] = _convert(hints[k], v, f"{prefix}{k}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        if path and not msg.startswith(path):
            # __post_init__ names its own section ("prune.sparsity"); anchor it at the real path
            field_part = msg.split(":", 1)[0].split(".", 1)[-1]
            msg = f"{path}.{field_part}:{msg.split(':', 1)[1]}" if ":" in msg else f"{path}: {msg}"
        raise ConfigError(msg) from None
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-safe data from a config object (mappings, lists, scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


def load_yaml(path: str | Path) -> Mapping[str, Any]:
    """Reads a YAML mapping, with ConfigErrors for a missing file, bad YAML or a key given twice."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study config {str(p)!r} does not exist")
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{p}:{e.line}: duplicate key {e.key!r}; each key may appear once per mapping") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw
