"""Parsing and validation of device API bodies (ThingsBoard's shapes) into plain tuples.

Telemetry: ``{"k": v}``, ``{"ts": ms, "values": {"k": v}}`` or a list of those. Attributes:
``{"k": v}``. Values may be booleans, numbers, strings or JSON objects/arrays. Every problem is a
BadRequest whose message says what is wrong and where.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_sync.errors import BadRequest

Values = tuple[tuple[str, Any], ...]
Entry = tuple[int, Values]

MAX_KEY_LENGTH = 255
MAX_ENTRIES = 10_000
_MAX_TS = 2**63 - 1


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; BadRequest (never a crash) for invalid, non-UTF-8 or too deep bodies."""
    if not raw:
        raise BadRequest("empty body: expected a JSON object or array")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON: nested too deeply") from exc


def _check_value(where: str, key: str, value: Any) -> Any:
    if isinstance(value, bool | str | int):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise BadRequest(f"{where}: value of {key!r} does not fit in a 64-bit integer")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{where}: value of {key!r} is not a finite number")
        return value
    if isinstance(value, dict | list):
        return value  # a JSON value (ThingsBoard's JSON_V)
    if value is None:
        raise BadRequest(f"{where}: value of {key!r} is null")
    raise BadRequest(f"{where}: value of {key!r} has an unsupported type")


def _values(where: str, obj: Any) -> Values:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected a JSON object of key/value pairs")
    if not obj:
        raise BadRequest(f"{where}: no key/value pairs")
    out = []
    for key, value in obj.items():
        if not key or len(key) > MAX_KEY_LENGTH:
            raise BadRequest(f"{where}: keys must be 1 to {MAX_KEY_LENGTH} characters")
        out.append((key, _check_value(where, key, value)))
    return tuple(out)


def _entry(where: str, obj: Any, now_ms: int) -> Entry:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected a JSON object")
    if "ts" in obj and "values" in obj and len(obj) == 2:
        ts = obj["ts"]
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= _MAX_TS:
            raise BadRequest(f"{where}: 'ts' must be a non-negative integer (ms since the epoch)")
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


def parse_keys(raw: str | None) -> tuple[str, ...] | None:
    """``a,b,c`` query parameter -> keys; None when absent (meaning all)."""
    if raw is None:
        return None
    return tuple(k for k in (part.strip() for part in raw.split(",")) if k)
