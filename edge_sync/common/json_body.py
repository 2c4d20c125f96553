"""Decoding of JSON request bodies for every HTTP API (device, admin, cloud admin): a malformed
body is always a BadRequest whose message says what and where, never a crash.

``parse_values_json`` decodes a device's telemetry or attributes (HTTP, MQTT, the MQTT gateway)
and keeps the text of the numbers that ThingsBoard reads otherwise than as the float Python
makes of them (api/tb_values.py): one with an exponent (``1e3`` is a long there, ``1.5e3`` too),
one with more than 16 decimals (kept as a string there), and a ``ts`` with a fraction a double
rounds to a whole number (``1719999999123.999999``: ThingsBoard truncates the text).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

from edge_sync.errors import BadRequest

__all__ = ["JsonNumber", "NumberTexts", "parse_json", "parse_values_json"]

_BOM = codecs.BOM_UTF8

_DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_TS_FRACTION = re.compile(rb'"ts"\s*:\s*-?0+\.')


def _special_numbers(raw: bytes, text: str) -> bool:
    """Whether the body (its bytes and their text) may hold a number parse_values_json keeps the
    text of: a digit before an exponent, a point before 17 digits, a ``"ts"`` whose number has
    a point. Text in strings may match too (the body is then decoded the slower way, to the
    same values). No Python per character or per number: a text without a point or an ``e``
    is answered at once, others cost a translation of the bytes and searches in C (a regular
    expression only at a ``"ts"``)."""
    point = "." in text
    if not point and "e" not in text and "E" not in text:
        return False
    digits = raw.translate(_DIGITS_AS_ZERO)
    if b"0e" in digits:
        return True
    if not point:
        return False
    if b".00000000000000000" in digits:
        return True
    at = digits.find(b'"ts"')
    while at >= 0:
        if _TS_FRACTION.match(digits, at):
            return True
        at = digits.find(b'"ts"', at + 4)
    return False


class JsonNumber(float):
    """A JSON number whose text ThingsBoard reads otherwise than as its float (an exponent,
    more than 16 decimals, a fraction that rounds to a whole number), as a float holding its
    text: made by ``parse_values_json`` only, read by the device API's value rules
    (api/tb_values.py), which turn it into what ThingsBoard stores; anywhere else it is the
    float it holds."""

    __slots__ = ("text",)
    text: str


@dataclass(frozen=True, slots=True)
class NumberTexts:
    """A body ``parse_values_json`` decoded that may hold JsonNumbers (anywhere in it)."""

    body: Any


def _number(text: str) -> float:
    """json's ``parse_float`` when the text may hold special numbers: a plain float unless the
    text says more than the float does."""
    if "e" not in text and "E" not in text and len(text) - text.index(".") <= 17:
        value = float(text)
        if not value.is_integer() or text.rstrip("0")[-1] == ".":
            return value
    number = JsonNumber(text)  # float("1e400") is inf: its text says what it is
    number.text = text
    return number


def _text(raw: bytes) -> str:
    if not raw:
        raise BadRequest("empty body: expected a JSON object or array")
    if raw.startswith(_BOM):  # allowed (RFC 8259 §8.1 lets a parser ignore it)
        raw = raw[len(_BOM):]
    try:
        # strict (no encoded surrogates). Not "utf-8-sig", which takes off the BOM itself: it
        # is written in Python (0.58 µs to decode {"v": 123} against 0.06; parse_json 1.9 ->
        # 1.3 µs), for the same text and the same errors (positions count from after a BOM).
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc


def _loads(text: str, **options: Any) -> Any:
    try:
        return json.loads(text, **options)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal of more than 4,300 digits
        raise BadRequest(f"malformed JSON: {str(exc)[:120]}") from exc


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; BadRequest (never a crash) for invalid, non-UTF-8 or too deep bodies."""
    return _loads(_text(raw))


def parse_values_json(raw: bytes) -> Any:
    """A device's telemetry or attributes body, as ``parse_json`` decodes it; when its text may
    hold a number ThingsBoard reads otherwise than as a float, ``NumberTexts`` of it, those
    numbers JsonNumbers (most bodies have none, and cost a scan of their bytes more)."""
    text = _text(raw)
    if not _special_numbers(raw, text):
        return _loads(text)
    return NumberTexts(_loads(text, parse_float=_number))
