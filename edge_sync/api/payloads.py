"""Parsing and validation of device API bodies (ThingsBoard's shapes) into plain tuples.

Telemetry: ``{"k": v}``, ``{"ts": ms, "values": {"k": v}}`` (other keys beside them ignored) or
a list of those. Attributes: ``{"k": v}``. Values are read as ThingsBoard's JsonConverter reads
them (api/tb_values.py): booleans, numbers, strings (numeric ones cast to numbers when
``type_cast``), JSON objects/arrays; null values skipped. A body, entry or ``values`` with no
pair left stores nothing and is no error (ThingsBoard acknowledges it). Every problem is a
BadRequest whose message says what is wrong and where.
"""

from __future__ import annotations

from typing import Any

from edge_sync.api.tb_values import device_values, timestamp
from edge_sync.common.json_body import NumberTexts
from edge_sync.errors import BadRequest
from edge_sync.storable import Values, check_json_value, check_timestamp, check_values
from edge_sync.validators import MAX_KEY_BYTES

Entry = tuple[int, Values]

MAX_ENTRIES = 10_000

__all__ = ["MAX_ENTRIES", "MAX_KEY_BYTES", "Entry", "Values", "check_json_value", "check_timestamp",
           "check_values",
           "parse_attributes", "parse_keys", "parse_telemetry"]


def _values(where: str, obj: Any, type_cast: bool, nulls: list[str] | None,
            marked: bool) -> Values:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected a JSON object of key/value pairs")
    return device_values(where, obj, type_cast=type_cast, nulls=nulls, marked=marked)


def _entry(where: str, obj: Any, now_ms: int, type_cast: bool, nulls: list[str] | None,
           marked: bool) -> Entry:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected a JSON object")
    # JsonConverter.parseObject: "ts" and "values" make the timed shape, whatever else is there
    if "ts" in obj and "values" in obj:
        ts = timestamp(where, obj["ts"])
        return ts, _values(f"{where}.values", obj["values"], type_cast, nulls, marked)
    return now_ms, _values(where, obj, type_cast, nulls, marked)


def parse_telemetry(body: Any, *, now_ms: int, type_cast: bool = True,
                    nulls: list[str] | None = None) -> tuple[Entry, ...]:
    """Telemetry body -> entries (ts, values), in body order; an entry left without a pair
    (``{}``, only nulls, ``"values": {}``) is left out, so ``[]`` or ``{}`` give none.
    ``body`` as parse_values_json decodes it (NumberTexts included) or any JSON value;
    ``type_cast``: numeric strings become numbers (``devices.type_cast``); the keys of null
    values skipped are appended to ``nulls``."""
    marked = type(body) is NumberTexts
    if marked:
        body = body.body
    if isinstance(body, list):
        if len(body) > MAX_ENTRIES:
            raise BadRequest(f"telemetry: more than {MAX_ENTRIES} entries in one request")
        entries = tuple(_entry(f"telemetry[{i}]", item, now_ms, type_cast, nulls, marked)
                        for i, item in enumerate(body))
        return tuple(entry for entry in entries if entry[1])
    entry = _entry("telemetry", body, now_ms, type_cast, nulls, marked)
    return (entry,) if entry[1] else ()


def parse_attributes(body: Any, *, type_cast: bool = True,
                     nulls: list[str] | None = None) -> Values:
    """Client attributes body -> its pairs (none for ``{}``); as parse_telemetry reads values."""
    marked = type(body) is NumberTexts
    return _values("attributes", body.body if marked else body, type_cast, nulls, marked)


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
"""The longest a long poll waits: ThingsBoard's HTTP transport ends every request at
``transport.http.max_request_timeout`` (300000 ms, HttpTransportContext's Tomcat asyncTimeout),
whatever ``timeout`` it asked for."""


def parse_timeout(raw: str | None) -> int:
    """A long poll's ``timeout`` query parameter (ms) -> ms to wait. Absent or 0: the default;
    above LONG_POLL_MAX_MS: LONG_POLL_MAX_MS (DeviceApiController takes any long, the transport
    ends the request then); a negative value or one that is not an integer of 64 bits:
    BadRequest."""
    if raw is None or raw == "":
        return LONG_POLL_DEFAULT_MS
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) >= 2**63:
        raise BadRequest(f"timeout must be an integer number of ms, 0 or more (0: the default "
                         f"of {LONG_POLL_DEFAULT_MS}; above {LONG_POLL_MAX_MS}: "
                         f"{LONG_POLL_MAX_MS})")
    return min(int(raw), LONG_POLL_MAX_MS) or LONG_POLL_DEFAULT_MS
