"""Decoding of JSON request bodies for every HTTP API (device, admin, cloud admin): a malformed
body is always a BadRequest whose message says what and where, never a crash."""

from __future__ import annotations

import json
from typing import Any

from edge_sync.errors import BadRequest


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; BadRequest (never a crash) for invalid, non-UTF-8 or too deep bodies."""
    if not raw:
        raise BadRequest("empty body: expected a JSON object or array")
    try:
        text = raw.decode("utf-8-sig")  # strict (no encoded surrogates); a BOM is allowed
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
