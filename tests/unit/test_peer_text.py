"""The cloud's text as the edge stores and logs it (link/peer_text.py): one line, control
characters escaped, cut to the limit with a marker, never in the middle of an escape."""

from __future__ import annotations

import pytest

from edge_sync.link.peer_text import MAX_ERROR_CHARS, one_line, rejection_reason


def test_short_text_is_kept_with_its_control_characters_escaped() -> None:
    text = "Device name should be specified!\n\tat a.B.c(B.java:1)\r\n\x1b[0m\u2028\x85end"
    assert one_line(text) == ("Device name should be specified!\\n\\tat a.B.c(B.java:1)\\r\\n"
                              "\\x1b[0m\\u2028\\x85end")
    assert one_line("plain text") == "plain text"
    assert one_line("") == ""


def test_long_text_is_cut_to_the_limit_with_its_length() -> None:
    text = "x" * 1_048_576
    out = one_line(text, 100)
    assert out == "x" * (100 - len(" ... (1048576 chars in all)")) + " ... (1048576 chars in all)"
    assert len(out) == 100
    assert one_line("y" * 100, 100) == "y" * 100  # exactly the limit: whole


def test_escapes_that_push_text_over_the_limit_cut_it_at_a_whole_escape() -> None:
    text = "\n" * 80  # 80 characters, 160 once escaped
    out = one_line(text, 100)
    marker = " ... (80 chars in all)"
    assert out.endswith(marker) and len(out) <= 100
    assert out[:-len(marker)] == "\\n" * ((100 - len(marker)) // 2)  # no lone backslash


def test_a_rejection_reason_is_one_line_within_the_stored_limit() -> None:
    reason = rejection_reason("Value out of range\n" + "\tat a.B.c(B.java:1)\n" * 60_000)
    assert len(reason) == MAX_ERROR_CHARS and "\n" not in reason
    assert reason.startswith("rejected by the cloud: Value out of range\\n\\tat a.B.c")
    assert rejection_reason("") == "rejected by the cloud: no detail"


def test_a_limit_too_small_for_the_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="below 64"):
        one_line("text", 10)
