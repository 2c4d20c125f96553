"""Decoding of JSON request bodies for every HTTP API (device, admin, cloud admin): a malformed
body is always a BadRequest whose message says what and where, never a crash."""

from __future__ import annotations

import codecs
import json
from typing import Any

from edge_sync.errors import BadRequest

_BOM = codecs.BOM_UTF8


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; BadRequest (never a crash) for invalid, non-UTF-8 or too deep bodies."""
    if not raw:
        raise BadRequest("empty body: expected a JSON object or array")
    if raw.startswith(_BOM):  # allowed (RFC 8259 §8.1 lets a parser ignore it)
        raw = raw[len(_BOM):]
    try:
        # strict (no encoded surrogates). Not "utf-8-sig", which takes off the BOM itself: it
        # is written in Python (0.58 µs to decode {"v": 123} against 0.06; parse_json 1.9 ->
        # 1.3 µs), for the same text and the same errors (positions count from after a BOM).
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal of more than 4,300 digits
        raise BadRequest(f"malformed JSON: {str(exc)[:120]}") from exc
