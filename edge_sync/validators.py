"""Checks of untrusted input that the edge and the reference cloud share, so a name, a key or an
integer is accepted or refused the same way on both sides.

Text limits count UTF-8 bytes, not characters: names, tokens and keys end up inside LMDB keys
(511 bytes at most), and a limit in characters would let 255 four-byte characters through.
"""

from __future__ import annotations

from typing import Any, TypeGuard

MAX_NAME_BYTES = 255
"""Entity names and types, access tokens, alarm types."""

MAX_KEY_BYTES = 255
"""Telemetry and attribute keys."""

MAX_LABEL_BYTES = 1024
"""Device labels (may be empty)."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

UINT64_MAX = 2**64 - 1
"""The largest integer msgpack (the store's encoding) holds; the smallest is INT64_MIN."""


def utf8_length(text: str) -> int | None:
    """Length of ``text`` in UTF-8 bytes; None when it cannot be encoded (a lone surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def text_fits(value: object, max_bytes: int, *, allow_empty: bool = False) -> TypeGuard[str]:
    """A str of at most ``max_bytes`` UTF-8 bytes, not blank unless ``allow_empty`` (then "" is
    accepted, a string of spaces is not)."""
    if not isinstance(value, str):
        return False
    if value == "" and allow_empty:
        return True
    if not value.strip():
        return False
    length = utf8_length(value)
    return length is not None and length <= max_bytes


def key_fits(value: object) -> TypeGuard[str]:
    """A telemetry or attribute key: a non-empty str of at most MAX_KEY_BYTES UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        return False
    length = utf8_length(value)
    return length is not None and length <= MAX_KEY_BYTES


def is_int64(value: Any) -> bool:
    """An int (not a bool) in the signed 64-bit range: ThingsBoard's long, protobuf's int64."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX


def is_storable_int(value: int) -> bool:
    """An integer msgpack can hold (int64 or uint64), for numbers nested in JSON values."""
    return INT64_MIN <= value <= UINT64_MAX
