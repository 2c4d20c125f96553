"""How a device's telemetry and attribute values and timestamps are read, on every device path
(HTTP, MQTT, the MQTT gateway), as ThingsBoard's transports read them: ``JsonConverter``
(common/proto/src/main/java/org/thingsboard/server/common/adaptor/JsonConverter.java, read at
thingsboard/thingsboard dfe65d5abc) with its default ``transport.json.type_cast_enabled: true``
(``devices.type_cast`` here):

- ``parseProtoValues``: a null value is skipped (the caller is told its key); a JSON object or
  array is a JSON value; a string that ``NumberUtils.isParsable`` (commons-lang3 3.18) takes is
  a number when type cast is on.
- ``buildNumericKeyValueProto``: a number (or such a string) is read from its text as a
  ``BigDecimal``: a whole value written without a decimal point (``7``, ``1e3``, ``1.5e3``)
  is a long, or, beyond 64 bits, the string of its digits (refused with type cast off); any
  other with at most 16 decimals (``21.5``, ``21.0``, ``1e-3``) a double; more decimals
  (``0.30000000000000004``) the string of its plain digits (refused with type cast off).
- ``parseWithTs``: ``ts`` is read with Gson's ``getAsLong``: a number's fraction is dropped, a
  string of digits is parsed (``Long.parseLong``).

Where the edge stops short of ThingsBoard, it says so in a BadRequest: a ``ts`` before 1970 or
beyond 2^63-1 (ThingsBoard keeps the first and wraps the second), a number whose digits
written out would run past MAX_PLAIN_DIGITS, and a JSON number too large for a double
(ThingsBoard stores Infinity; a numeric string that large stays a string). Pure functions.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from edge_sync.common.json_body import JsonNumber
from edge_sync.errors import BadRequest
from edge_sync.storable import Values, check_key, check_text, check_value
from edge_sync.validators import INT64_MAX, INT64_MIN, MAX_KEY_BYTES

__all__ = ["MAX_PLAIN_DIGITS", "device_values", "plain_json", "timestamp"]

MAX_PLAIN_DIGITS = 4300
"""The most digits a number's exponent may add when it is written out (a long, or the plain
string ThingsBoard keeps): as many as Python reads in an integer literal. ThingsBoard writes
``1e1000000000`` out in full."""

_BIG = ("Big integer values are not supported! (ThingsBoard's answer with type cast off, "
        "devices.type_cast: a number beyond 64 bits or with more than 16 decimals)")

_TS_RULE = ("'ts' must be ms since 1970: an integer, a number (its fraction is dropped) or a "
            "string of digits")


def device_values(where: str, obj: dict[str, Any], *, type_cast: bool,
                  nulls: list[str] | None, marked: bool = False) -> Values:
    """The key/value pairs of a device's object as ThingsBoard reads them, in order: null values
    left out (their keys appended to ``nulls``), numbers and numeric strings converted, JSON
    objects and arrays kept (``marked``: the body may hold JsonNumbers, which go back to
    floats inside them). Keys and values are checked as storable.check_values checks them;
    BadRequest names the first problem."""
    out = []
    for key, value in obj.items():
        # the common case first, as check_values: an ASCII key and a finite float, a bool or a
        # 64-bit integer (what ThingsBoard stores as they are)
        if not (type(key) is str and key.isascii() and 0 < len(key) <= MAX_KEY_BYTES):
            check_key(where, key)
        kind = type(value)
        if not ((kind is float and math.isfinite(value)) or kind is bool
                or (kind is int and INT64_MIN <= value <= INT64_MAX)):
            if value is None:  # parseProtoValues: a JsonNull is skipped
                if nulls is not None:
                    nulls.append(key)
                continue
            value = _value(where, key, value, type_cast, marked)
        out.append((key, value))
    return tuple(out)


def _value(where: str, key: str, value: Any, type_cast: bool, marked: bool) -> Any:
    kind = type(value)
    if kind is str:
        if type_cast and parsable(value):
            try:
                number = _number(value, type_cast=True)
            except (BadRequest, InvalidOperation):  # ThingsBoard keeps the string (its catch)
                number = None
            if number is not None and (type(number) is not float or math.isfinite(number)):
                return number
        check_text(f"{where}: value of {key!r}", value)
        return value
    if kind is JsonNumber:
        try:
            number = _number(value.text, type_cast=type_cast)
        except BadRequest as exc:
            raise BadRequest(f"{where}: value of {key!r}: {exc}") from exc
        return check_value(where, key, number)  # a double too large is not finite
    if kind is int:  # beyond 64 bits (a JSON integer: its digits are its plain string)
        if type_cast:
            return str(value)
        raise BadRequest(f"{where}: value of {key!r}: {_BIG}")
    if marked and (kind is dict or kind is list):
        value = plain_json(value)
    return check_value(where, key, value)


def parsable(text: str) -> bool:
    """commons-lang3 3.18's ``NumberUtils.isParsable``: an optional ``-``, then digits with at
    most one ``.``, not ending with it (``.5`` and ``-.5`` are parsable, ``5.``, ``+5``,
    ``1e3`` and `` 5`` are not). A digit is what Java's ``Character.isDigit`` takes of a
    UTF-16 unit: a decimal digit of any script in the Basic Multilingual Plane."""
    if not text or text[-1] == ".":
        return False
    body = text[1:] if text[0] == "-" else text
    if not body:
        return False
    whole, _, fraction = body.partition(".")
    if (whole and not whole.isdecimal()) or (fraction and not fraction.isdecimal()):
        return False
    return text.isascii() or all(ord(c) < 0x10000 for c in text)


def _number(text: str, *, type_cast: bool) -> int | float | str:
    """``JsonConverter.buildNumericKeyValueProto`` of a number's text: a long, a double, or
    (type cast on) the plain string of a number neither holds; BadRequest when type cast is
    off for such a number, or when its digits written out would be too many."""
    number = Decimal(text)
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # a finite number (JSON has no other)
    if abs(exponent) > MAX_PLAIN_DIGITS:
        raise BadRequest(f"number {text[:32]} has an exponent beyond what the edge writes out "
                         f"(at most {MAX_PLAIN_DIGITS} digits)")
    # BigDecimal.stripTrailingZeros().scale() <= 0: a whole value
    whole = exponent >= 0 or not any(digits[exponent:])
    simple_double = "." in text and "e" not in text and "E" not in text  # isSimpleDouble
    if whole and not simple_double:
        value = int(number)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    elif -exponent <= 16:  # BigDecimal.scale() <= 16
        return float(number)
    if not type_cast:
        raise BadRequest(_BIG)
    if not any(digits):  # BigDecimal has no negative zero
        number = number.copy_abs()
    return format(number, "f")  # BigDecimal.toPlainString


def plain_json(value: Any) -> Any:
    """``value`` (a JSON object or array of a body ``parse_values_json`` decoded) with every
    JsonNumber in it back to the float it holds, in place: inside a JSON value a number is
    only a number."""
    stack = [value]
    while stack:
        item = stack.pop()
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for place, child in children:
            if type(child) is JsonNumber:
                item[place] = float(child)
            elif isinstance(child, dict | list):
                stack.append(child)
    return value


def timestamp(where: str, raw: Any) -> int:
    """A ``{"ts", "values"}`` entry's ``ts`` as Gson's ``getAsLong`` reads it in
    ``JsonConverter.parseWithTs``: an integer; a number without its fraction (truncated toward
    zero: ``1719999999123.9`` is 1719999999123); a string of an optional sign and decimal
    digits (``Long.parseLong``). BadRequest for anything else (ThingsBoard fails the request
    too), and for a time before 1970 or beyond 2^63-1 ms, which ThingsBoard keeps (or wraps)
    and the edge does not."""
    kind = type(raw)
    ts: int
    if kind is int:
        ts = raw
    elif kind is JsonNumber:
        number = Decimal(raw.text)
        if number.adjusted() > 19:  # more than 20 digits before the point: out of range
            raise BadRequest(f"{where}: 'ts' {raw.text[:32]} is out of 0 to 2^63-1 ms")
        ts = int(number)  # BigDecimal.longValue drops the fraction
    elif kind is float:
        if not math.isfinite(raw):
            raise BadRequest(f"{where}: {_TS_RULE}; {raw} is not a finite number")
        ts = int(raw)
    elif kind is str:
        ts = _parse_long(where, raw)
    else:
        raise BadRequest(f"{where}: {_TS_RULE}")
    if ts < 0:
        raise BadRequest(f"{where}: 'ts' {ts} is before 1970: the edge keeps times of 0 to "
                         "2^63-1 ms since 1970")
    if ts > INT64_MAX:
        raise BadRequest(f"{where}: 'ts' {ts} is beyond 2^63-1 ms")
    return ts


def _parse_long(where: str, text: str) -> int:
    """Java's ``Long.parseLong``: an optional ``+`` or ``-``, then decimal digits (of any
    script in the Basic Multilingual Plane, as ``Character.digit`` reads them), within 64
    bits."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isdecimal() and (text.isascii() or all(ord(c) < 0x10000 for c in text))):
        raise BadRequest(f"{where}: {_TS_RULE}; {text[:32]!r} is not a string of digits")
    if len(digits.lstrip("0")) > 19:
        raise BadRequest(f"{where}: 'ts' {text[:32]!r} does not fit in 64 bits")
    value: int = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadRequest(f"{where}: 'ts' {text[:32]!r} does not fit in 64 bits")
    return value
