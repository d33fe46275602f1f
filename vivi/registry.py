"""Components chosen by name from a table of dataclass configs (big_vision style), and the check
of a setting's value against its field's type.

An unknown name, or an override that is not a field of the config, raises ``ValueError``
listing the valid ones; a value of the wrong type raises ``TypeError`` naming the type expected,
so a typo in a preset or on the command line names its fix.
"""
from __future__ import annotations

import dataclasses
import types
import typing


def from_registry(table: dict, name: str, kind: str, **overrides):
    """``table[name]`` (a dataclass instance) with fields replaced by ``overrides``."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(table)}")
    fields = {f.name for f in dataclasses.fields(table[name])}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {kind} option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(table[name], **overrides)


def typed_value(value, hint, key: str):
    """``value`` (from YAML) converted to the field type ``hint``; a ``TypeError`` naming ``key`` otherwise.

    Handles bool, int, float (an int is taken, as is YAML 1.1's "1e30" string), str, ``X | None``,
    ``list[X]`` and fixed-length ``tuple[X, Y]`` (given as a YAML list).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return typed_value(value, inner[0], key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key} expects a list, got {value!r}")
        if origin is tuple and ... not in args:
            if len(value) != len(args):
                names = ", ".join(a.__name__ for a in args)
                raise TypeError(f"{key} expects {len(args)} values ({names}), got {value!r}")
            return tuple(typed_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        items = [typed_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key} expects true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} expects an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):   # YAML 1.1 reads "1e30" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} expects a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {hint}")
