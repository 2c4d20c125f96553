"""What the edge's store (and the cloud) can hold of a device's or a rule chain's values, checked
the way the device API checks a post: keys of 1 to MAX_KEY_BYTES bytes of UTF-8, booleans,
64-bit integers, finite numbers, text without lone surrogates, JSON values of those (not null),
timestamps from 0 to INT64_MAX. Every problem is a BadRequest whose message says what is wrong
and where. Pure functions: the device API (api/payloads.py) and the rule outcomes
(actors/rule_outcomes.py) both use them.
"""

from __future__ import annotations

import math
from typing import Any

from edge_sync.errors import BadRequest
from edge_sync.validators import (
    INT64_MAX,
    INT64_MIN,
    MAX_KEY_BYTES,
    is_int64,
    is_storable_int,
    key_fits,
)

Values = tuple[tuple[str, Any], ...]

__all__ = ["Values", "check_json_value", "check_key", "check_text", "check_timestamp",
           "check_value", "check_values"]


def check_text(where: str, text: str) -> None:
    """Text the store can hold (UTF-8: no lone surrogate); BadRequest otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{where}: text with a lone surrogate ({exc.reason})") from exc


def _check_nested(where: str, value: Any) -> None:
    """Everything inside a JSON value must be storable: finite numbers, 64-bit integers,
    valid text. Iterative, so depth costs no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                check_text(where, k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            check_text(where, item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not is_storable_int(item):
                raise BadRequest(f"{where}: a number inside the JSON value does not fit in 64 bits")
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadRequest(f"{where}: a number inside the JSON value is not finite")


def check_json_value(where: str, value: Any) -> None:
    """Any JSON value (object, list or scalar) that the store can hold; BadRequest otherwise."""
    _check_nested(where, value)


def check_value(where: str, key: str, value: Any) -> Any:
    """One value of ``key`` as check_values takes it (returned as it is); BadRequest naming
    the problem otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        check_text(f"{where}: value of {key!r}", value)
        return value
    if isinstance(value, int):
        if not is_int64(value):
            raise BadRequest(f"{where}: value of {key!r} does not fit in a 64-bit integer")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{where}: value of {key!r} is not a finite number")
        return value
    if isinstance(value, dict | list):
        _check_nested(f"{where}: value of {key!r}", value)
        return value  # a JSON value (ThingsBoard's JSON_V)
    if value is None:
        raise BadRequest(f"{where}: value of {key!r} is null")
    raise BadRequest(f"{where}: value of {key!r} has an unsupported type")


def check_values(where: str, pairs: Any) -> Values:
    """Key/value pairs as a device may post them: each key 1 to MAX_KEY_BYTES bytes of UTF-8,
    each value a boolean, 64-bit integer, finite number, text or storable JSON value (not
    null). The pairs as a tuple; BadRequest names the first problem."""
    out = []
    for key, value in pairs:
        # the common case first: an ASCII key (a byte a character, no surrogate can hide in
        # it) and a finite float, a bool or a 64-bit integer; anything else is checked fully
        if not (type(key) is str and key.isascii() and 0 < len(key) <= MAX_KEY_BYTES):
            check_key(where, key)
        kind = type(value)
        if not ((kind is float and math.isfinite(value)) or kind is bool
                or (kind is int and INT64_MIN <= value <= INT64_MAX)):
            check_value(where, key, value)
        out.append((key, value))
    return tuple(out)


def check_key(where: str, key: Any) -> None:
    """A key of 1 to MAX_KEY_BYTES bytes of UTF-8; BadRequest otherwise."""
    if not isinstance(key, str):
        raise BadRequest(f"{where}: a key is not text")
    check_text(f"{where}: a key", key)
    if not key_fits(key):
        raise BadRequest(f"{where}: keys must be 1 to {MAX_KEY_BYTES} bytes of UTF-8")


def check_timestamp(where: str, ts: Any) -> int:
    """A point's ``ts``: an integer from 0 to INT64_MAX (ms since the epoch); BadRequest else."""
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= INT64_MAX:
        raise BadRequest(f"{where}: 'ts' must be a non-negative integer (ms since the epoch)")
    return ts
