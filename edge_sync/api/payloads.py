"""Parsing and validation of device API bodies (ThingsBoard's shapes) into plain tuples.

Telemetry: ``{"k": v}``, ``{"ts": ms, "values": {"k": v}}`` or a list of those. Attributes:
``{"k": v}``. Values may be booleans, numbers, strings or JSON objects/arrays. Every problem is a
BadRequest whose message says what is wrong and where.
"""

from __future__ import annotations

from typing import Any

from edge_sync.errors import BadRequest
from edge_sync.storable import Values, check_json_value, check_timestamp, check_values
from edge_sync.validators import MAX_KEY_BYTES

Entry = tuple[int, Values]

MAX_ENTRIES = 10_000

__all__ = ["MAX_ENTRIES", "MAX_KEY_BYTES", "Entry", "Values", "check_json_value", "check_timestamp",
           "check_values",
           "parse_attributes", "parse_keys", "parse_telemetry"]


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
