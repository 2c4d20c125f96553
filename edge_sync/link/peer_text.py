"""Text the cloud chose (an UplinkResponseMsg's errorMsg, a stream's status details) as the edge
stores and logs it: one line and bounded, whatever the peer sent. ThingsBoard's errorMsg is the
root cause's message followed by its stack frames, one per line, and nothing bounds its length,
so a dead letter's reason or a log line would otherwise take all of it, line breaks and all.

Control characters (line breaks, tabs, escapes, U+2028 and U+2029) are written as escapes
(``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``), so the text stays readable and a log line cannot
be split or forged; text over the limit is cut, with a marker saying how long it was.
"""

from __future__ import annotations

MAX_ERROR_CHARS = 2000
"""What the edge stores of the cloud's text (a dead letter's reason)."""
MAX_LOGGED_ERROR_CHARS = 500
"""What a log line carries of it."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES: dict[int, str] = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
_MIN_LIMIT = 64


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters: control characters escaped; when it
    does not fit, as much as fits (never half an escape) and `` ... (N chars in all)``."""
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit {limit} is below {_MIN_LIMIT}")
    head = text[:limit].translate(_ESCAPES)
    if len(text) <= limit and len(head) <= limit:
        return head
    marker = f" ... ({len(text)} chars in all)"
    budget = limit - len(marker)
    out: list[str] = []
    used = 0
    for ch in text[:budget]:
        piece = _ESCAPES.get(ord(ch), ch)
        if used + len(piece) > budget:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + marker


def rejection_reason(error: str) -> str:
    """A dead letter's reason for an event the cloud refused with ``error`` (its errorMsg):
    one line, at most MAX_ERROR_CHARS."""
    return one_line(f"rejected by the cloud: {error or 'no detail'}", MAX_ERROR_CHARS)
