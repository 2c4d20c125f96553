"""Pattern substitution in node configuration text (an alarm's type, a dynamic severity), as
ThingsBoard's ``TbNodeUtils.processPattern(String, TbMsg)`` does it:

1. ``${*}`` becomes the whole metadata as JSON (``{}`` when it has none), then each metadata
   key's ``${key}`` its value; a ``${...}`` naming no key stays as it is.
2. ``$[*]`` becomes the whole message data as JSON, then, when the data is an object, each
   ``$[a.b.c]`` the value found by walking that dotted path through nested objects, when it
   ends at a value (text, number, boolean, null) rendered as Jackson's ``JsonNode.asText()``
   does: text as it is, ``true``/``false``, ``null``, numbers as Java prints them (``20``,
   ``20.5``, ``1.0E7``). A path that ends at an object or a list, goes through anything other
   than an object, or has an empty part (``$[a..b]``, ``$[]``) stays as it is.

``has_pattern`` tells a text no message can change (no ``${...}``, no ``$[...]``) from one a
message may: validation uses it to refuse a dynamic severity that could never be a severity.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_DATA = re.compile(r"\$\[(.*?)]")  # TbNodeUtils.DATA_PATTERN: (\$\[)(.*?)(]), no DOTALL


_ANY = re.compile(r"\$\{.*}|\$\[.*]", re.DOTALL)
"""What ``process_pattern`` could replace: a ``${`` with a ``}`` after it (``${*}``, a metadata
key, which may be any text), or a ``$[`` with a ``]`` after it (``$[*]``, a data path)."""


def has_pattern(text: str) -> bool:
    """Whether some message could make ``process_pattern`` give anything but ``text``; False:
    every message gives ``text`` itself (metadata substitution, the only step that could add a
    ``$[...]``, has nothing to replace then)."""
    return _ANY.search(text) is not None


def process_pattern(pattern: str, data: Any, metadata: Mapping[str, str]) -> str:
    """``pattern`` with the message's ``${...}`` and ``$[...]`` substituted (module doc)."""
    if "$" not in pattern:
        return pattern
    result = pattern
    if "${*}" in result:
        result = result.replace("${*}", java_json(dict(metadata)) if metadata else "{}")
    for key, value in metadata.items():  # TbNodeUtils.processTemplate
        result = result.replace("${" + key + "}", value)
    if "$[*]" in result:
        result = result.replace("$[*]", java_json(data))
    if isinstance(data, dict) and "$[" in result:
        # matched in the text as it is now, each match replaced everywhere in turn, as the
        # Java loop does (its Matcher reads the string the loop started with)
        for found in list(_DATA.finditer(result)):
            group = found.group(1)
            node: Any = data
            for key in _java_split_dots(group):
                if key and isinstance(node, dict):
                    node = node.get(key, _MISSING)
                else:
                    node = _MISSING
                    break
            if node is not _MISSING and not isinstance(node, (dict, list)):
                result = result.replace("$[" + group + "]", as_text(node))
    return result


_MISSING = object()


def _java_split_dots(text: str) -> list[str]:
    """Java's ``text.split("\\\\.")``: trailing empty parts dropped (``"a."`` -> ``["a"]``),
    an empty text one empty part."""
    parts = text.split(".")
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if parts == [""] and text:  # only dots: Java gives no parts at all
        return []
    return parts


def as_text(value: Any) -> str:
    """A JSON value node's text, as Jackson's ``JsonNode.asText()`` gives it."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return java_double(value)
    return str(value)


def java_double(value: float) -> str:
    """Java's ``Double.toString``: plain from 10^-3 up to 10^7 with at least one decimal
    (``20.0``), otherwise computerized scientific notation (``1.0E7``, ``1.5E-4``); the
    shortest digits that read back as the same double."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    parts = Decimal(repr(abs(value))).as_tuple()  # repr: the shortest digits
    exponent = len(parts.digits) + int(parts.exponent) - 1  # that of the leading digit
    digits = "".join(map(str, parts.digits)).rstrip("0") or "0"
    if -3 <= exponent < 7:
        if exponent >= 0:
            whole = digits[:exponent + 1].ljust(exponent + 1, "0")
            return f"{sign}{whole}.{digits[exponent + 1:] or '0'}"
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exponent}"


def java_json(value: Any) -> str:
    """Compact JSON text as ThingsBoard's Java writes it (Jackson, Gson's ``toJson``): no
    spaces, non-ASCII as it is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
