"""CBOR values → JSON-safe values (the rules are documented in ``docs/formats.md``)."""

from __future__ import annotations

import base64
import math
from typing import TypeAlias

from cbor2 import CBORSimpleValue, CBORTag, undefined

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None

# JavaScript numbers hold integers exactly up to 2**53; beyond that a JSON consumer would
# silently round, so such integers travel as decimal strings.
_SAFE_INT = 2**53


def to_jsonable(value: object) -> JSON:
    """Convert a decoded CBOR value into something ``json.dumps`` accepts without loss.

    - ``bytes``-like → ``{"$bytes": "<standard base64>"}``
    - ``int`` outside ``[-2**53, 2**53]`` → its decimal string
    - non-finite ``float`` → ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``
    - ``CBORTag`` → ``{"$tag": n, "value": ...}``; ``undefined`` → ``None``;
      other simple values → ``{"$simple": n}``
    - map keys that are not ``str`` → ``str(key)``; tuples → lists

    Raises ``TypeError`` for a type CBOR decoding cannot produce and ``ValueError`` for a
    value that contains itself.
    """
    return _convert(value, set())


def _convert(value: object, active: set[int]) -> JSON:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_SAFE_INT <= value <= _SAFE_INT else str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if value is undefined:
        return None
    if isinstance(value, CBORSimpleValue):
        return {"$simple": int(value.value)}
    if isinstance(value, list | tuple | dict | CBORTag):
        # Guard against values that contain themselves, which would otherwise recurse forever.
        if id(value) in active:
            raise ValueError("cannot convert a value that contains itself")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return {
                    (k if isinstance(k, str) else str(k)): _convert(v, active)
                    for k, v in value.items()
                }
            if isinstance(value, CBORTag):
                return {"$tag": int(value.tag), "value": _convert(value.value, active)}
            return [_convert(v, active) for v in value]
        finally:
            active.discard(id(value))
    raise TypeError(f"cannot convert {type(value).__name__} to JSON")
