"""parse_json takes off a UTF-8 byte order mark and decodes the rest with the C "utf-8" codec:
the same text and the same errors as the "utf-8-sig" codec it replaced (written in Python,
about twice the time of the whole parse of a small body)."""

from __future__ import annotations

import pytest

from edge_sync.common.json_body import parse_json
from edge_sync.errors import BadRequest

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(("raw", "value"), [
    (BOM + b'{"v": 123}', {"v": 123}),
    (BOM + '[{"température": "21°C"}]'.encode(), [{"température": "21°C"}]),
    (BOM + b' {"a": 1} ', {"a": 1}),
], ids=["object", "non-ascii", "whitespace"])
def test_a_body_with_a_byte_order_mark_is_read_as_without_it(raw: bytes, value: object) -> None:
    assert parse_json(raw) == value == parse_json(raw[len(BOM):])


def test_only_one_byte_order_mark_is_taken_off() -> None:
    """A second one is text, U+FEFF, which json.loads refuses (as before)."""
    with pytest.raises(BadRequest, match=r"^malformed JSON: Unexpected UTF-8 BOM .* at line 1 "
                                         r"column 1$"):
        parse_json(BOM + BOM + b'{"a": 1}')


def test_a_byte_order_mark_alone_is_malformed_json_not_an_empty_body() -> None:
    with pytest.raises(BadRequest, match=r"^malformed JSON: Expecting value at line 1 column 1$"):
        parse_json(BOM)


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"a": "\xff"}', "body is not UTF-8: invalid start byte at byte 7"),
    (b'{"a": "\xed\xa0\x80"}', "body is not UTF-8: invalid continuation byte at byte 7"),
    (b'{"a": "\xc3', "body is not UTF-8: unexpected end of data at byte 7"),
    # the position counts from after the byte order mark, as the "utf-8-sig" codec counted
    (BOM + b'{"a": "\xff"}', "body is not UTF-8: invalid start byte at byte 7"),
    # a truncated byte order mark is invalid UTF-8
    (b"\xef\xbb", "body is not UTF-8: unexpected end of data at byte 0"),
], ids=["invalid-start", "surrogate", "truncated", "after-a-bom", "truncated-bom"])
def test_a_body_that_is_not_utf8_is_refused_with_the_same_message(raw: bytes,
                                                                    message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_json(raw)
    assert str(caught.value) == message
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)
