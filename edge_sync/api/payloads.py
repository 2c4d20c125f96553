"""Parsing and validation of device API bodies (ThingsBoard's shapes) into plain tuples.

Telemetry: ``{"k": v}``, ``{"ts": ms, "values": {"k": v}}`` or a list of those. Attributes:
``{"k": v}``. Values may be booleans, numbers, strings or JSON objects/arrays. Every problem is a
BadRequest whose message says what is wrong and where.
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
Entry = tuple[int, Values]

MAX_ENTRIES = 10_000

__all__ = ["MAX_ENTRIES", "MAX_KEY_BYTES", "check_json_value", "check_timestamp", "check_values",
           "parse_attributes", "parse_keys", "parse_telemetry"]


def _check_text(where: str, text: str) -> None:
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
                _check_text(where, k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            _check_text(where, item)
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


def _check_value(where: str, key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(f"{where}: value of {key!r}", value)
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
            _check_key(where, key)
        kind = type(value)
        if not ((kind is float and math.isfinite(value)) or kind is bool
                or (kind is int and INT64_MIN <= value <= INT64_MAX)):
            _check_value(where, key, value)
        out.append((key, value))
    return tuple(out)


def _check_key(where: str, key: Any) -> None:
    if not isinstance(key, str):
        raise BadRequest(f"{where}: a key is not text")
    _check_text(f"{where}: a key", key)
    if not key_fits(key):
        raise BadRequest(f"{where}: keys must be 1 to {MAX_KEY_BYTES} bytes of UTF-8")


def check_timestamp(where: str, ts: Any) -> int:
    """A point's ``ts``: an integer from 0 to INT64_MAX (ms since the epoch); BadRequest else."""
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= INT64_MAX:
        raise BadRequest(f"{where}: 'ts' must be a non-negative integer (ms since the epoch)")
    return ts


def _values(where: str, obj: Any) -> Values:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected a JSON object of key/value pairs")
    if not obj:
        raise BadRequest(f"{where}: no key/value pairs")
    return check_values(where, obj.items())


def _entry(where: str, obj: Any, now_ms: int) -> Entry:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected a JSON object")
    if "ts" in obj and "values" in obj and len(obj) == 2:
        ts = check_timestamp(where, obj["ts"])
        return ts, _values(f"{where}.values", obj["values"])
    return now_ms, _values(where, obj)


def parse_telemetry(body: Any, *, now_ms: int) -> tuple[Entry, ...]:
    """Telemetry body -> entries (ts, values), in body order."""
    if isinstance(body, list):
        if not body:
            raise BadRequest("telemetry: empty list")
        if len(body) > MAX_ENTRIES:
            raise BadRequest(f"telemetry: more than {MAX_ENTRIES} entries in one request")
        return tuple(_entry(f"telemetry[{i}]", item, now_ms) for i, item in enumerate(body))
    return (_entry("telemetry", body, now_ms),)


def parse_attributes(body: Any) -> Values:
    return _values("attributes", body)


def parse_request_id(raw: str) -> int:
    """An RPC request id of a path or topic: ASCII digits within int32 (``str.isdigit`` alone
    takes "²" or Arabic-Indic digits, and ``int()`` of thousands of digits is refused), else
    BadRequest."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or int(raw) >= 2**31:
        raise BadRequest(f"RPC request id {raw[:32]!r} is not a number 0..2147483647")
    return int(raw)


def parse_keys(raw: str | None) -> tuple[str, ...] | None:
    """``a,b,c`` query parameter -> keys; None when absent (meaning all)."""
    if raw is None:
        return None
    return tuple(k for k in (part.strip() for part in raw.split(",")) if k)


LONG_POLL_DEFAULT_MS = 60_000
"""A long poll without ``timeout`` (or with 0) waits this long: ThingsBoard's default
(transport.http.request_timeout)."""
LONG_POLL_MAX_MS = 300_000
"""The longest long poll a device may ask for (5 minutes; longer, a poll is better renewed)."""


def parse_timeout(raw: str | None) -> int:
    """A long poll's ``timeout`` query parameter (ms) -> ms to wait. Absent or 0: the default;
    1 to LONG_POLL_MAX_MS as asked; anything else BadRequest (ThingsBoard does not check it)."""
    if raw is None or raw == "":
        return LONG_POLL_DEFAULT_MS
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise BadRequest(f"timeout must be an integer number of ms, 0 to {LONG_POLL_MAX_MS} "
                         f"(0: the default of {LONG_POLL_DEFAULT_MS})")
    value = int(raw)
    if value > LONG_POLL_MAX_MS:
        raise BadRequest(f"timeout {value} ms is out of range: at most {LONG_POLL_MAX_MS} ms")
    return value or LONG_POLL_DEFAULT_MS
