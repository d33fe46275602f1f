"""Components chosen by name from a table of dataclass configs (big_vision style).

An unknown name, or an override that is not a field of the config, raises ``ValueError``
listing the valid ones, so a typo in a preset or on the command line names its fix.
"""
from __future__ import annotations

import dataclasses


def from_registry(table: dict, name: str, kind: str, **overrides):
    """``table[name]`` (a dataclass instance) with fields replaced by ``overrides``."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(table)}")
    fields = {f.name for f in dataclasses.fields(table[name])}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {kind} option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(table[name], **overrides)
