"""Device API body parsing: ThingsBoard's three telemetry shapes, attributes, key lists, and
every malformed body rejected with BadRequest (never a crash), plus a round-trip property.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_sync.api.payloads import (
    MAX_ENTRIES,
    MAX_KEY_BYTES,
    parse_attributes,
    parse_keys,
    parse_telemetry,
)
from edge_sync.common.json_body import parse_json
from edge_sync.errors import BadRequest
from edge_sync.storage import codec

NOW = 1_700_000_000_000


# -- accepted shapes ------------------------------------------------------------------------------


def test_plain_object_gets_now_as_ts() -> None:
    assert parse_telemetry({"t": 21.5, "on": True, "s": "x", "n": -3}, now_ms=NOW) == (
        (NOW, (("t", 21.5), ("on", True), ("s", "x"), ("n", -3))),
    )


def test_ts_values_object_keeps_its_ts() -> None:
    assert parse_telemetry({"ts": 1234, "values": {"a": 1, "b": "two"}}, now_ms=NOW) == (
        (1234, (("a", 1), ("b", "two"))),
    )


def test_list_of_both_shapes_in_body_order() -> None:
    body = [
        {"ts": 3, "values": {"a": 1}},
        {"b": 2},
        {"ts": 1, "values": {"c": 3, "d": 4}},
        {"e": 5.0},
    ]
    assert parse_telemetry(body, now_ms=NOW) == (
        (3, (("a", 1),)),
        (NOW, (("b", 2),)),
        (1, (("c", 3), ("d", 4))),
        (NOW, (("e", 5.0),)),
    )


def test_json_values_are_accepted_as_is() -> None:
    body = {"obj": {"x": [1, 2, {"y": None}]}, "arr": [1, "a", False]}
    assert parse_telemetry(body, now_ms=NOW) == (
        (NOW, (("obj", {"x": [1, 2, {"y": None}]}), ("arr", [1, "a", False]))),
    )


def test_ts_and_values_with_other_keys_use_ts_and_values() -> None:
    """JsonConverter.parseObject: jo.has("ts") && jo.has("values"), whatever else is there."""
    body = {"ts": 5, "values": {"a": 1}, "extra": 2}
    assert parse_telemetry(body, now_ms=NOW) == ((5, (("a", 1),)),)


def test_boundaries_accepted() -> None:
    key = "k" * MAX_KEY_BYTES
    assert parse_telemetry({key: 2**63 - 1, "m": -(2**63)}, now_ms=NOW) == (
        (NOW, ((key, 2**63 - 1), ("m", -(2**63)))),
    )
    assert parse_telemetry({"ts": 0, "values": {"a": 1}}, now_ms=NOW) == ((0, (("a", 1),)),)
    assert parse_telemetry({"ts": 2**63 - 1, "values": {"a": 1}}, now_ms=NOW)[0][0] == 2**63 - 1
    body = [{"a": i} for i in range(MAX_ENTRIES)]
    assert len(parse_telemetry(body, now_ms=NOW)) == MAX_ENTRIES


def test_attributes_and_keys() -> None:
    assert parse_attributes({"fw": "1.2.0", "n": 3}) == (("fw", "1.2.0"), ("n", 3))
    assert parse_attributes({}) == ()
    for bad, message in (([], "expected a JSON object"), ("x", "expected a JSON object"),
                         ({"": 1}, "keys must be 1 to 255 bytes")):
        with pytest.raises(BadRequest, match=f"^attributes: {message}"):
            parse_attributes(bad)
    assert parse_keys(None) is None
    assert parse_keys("a, b,,c ,") == ("a", "b", "c")
    assert parse_keys("") == ()


def test_parse_json_accepts_utf8_objects_and_arrays() -> None:
    assert parse_json('{"température": "21°C", "名": 1}'.encode()) == {"température": "21°C", "名": 1}
    assert parse_json(b'[{"a": 1}, {"ts": 2, "values": {"b": 2}}]') == [
        {"a": 1}, {"ts": 2, "values": {"b": 2}}]
    assert parse_json(b"\xef\xbb\xbf{\"a\": 1}") == {"a": 1}  # UTF-8 byte order mark


# -- rejected bodies ------------------------------------------------------------------------------


REJECTED: list[tuple[str, Any, str]] = [
    ("string", "hello", "expected a JSON object"),
    ("number", 5, "expected a JSON object"),
    ("null", None, "expected a JSON object"),
    ("bool", True, "expected a JSON object"),
    ("list of non-objects", [1], r"telemetry\[0\]: expected a JSON object"),
    ("NaN", {"a": float("nan")}, "not a finite number"),
    ("inf", {"a": float("inf")}, "not a finite number"),
    ("-inf", {"a": float("-inf")}, "not a finite number"),
    ("empty key", {"": 1}, "keys must be 1 to 255"),
    ("too long key", {"k" * (MAX_KEY_BYTES + 1): 1}, "keys must be 1 to 255"),
    ("bool ts", {"ts": True, "values": {"a": 1}}, "'ts' must be ms since 1970"),
    ("negative ts", {"ts": -1, "values": {"a": 1}}, "'ts' -1 is before 1970"),
    ("negative float ts", {"ts": -1.5, "values": {"a": 1}}, "'ts' -1 is before 1970"),
    ("negative string ts", {"ts": "-5", "values": {"a": 1}}, "'ts' -5 is before 1970"),
    ("fraction string ts", {"ts": "1.5", "values": {"a": 1}}, "'1.5' is not a string of digits"),
    ("blank string ts", {"ts": " 1", "values": {"a": 1}}, "' 1' is not a string of digits"),
    ("empty string ts", {"ts": "", "values": {"a": 1}}, "'' is not a string of digits"),
    ("string ts over 64 bits", {"ts": str(2**63), "values": {"a": 1}}, "does not fit in 64 bits"),
    ("ts over 63 bits", {"ts": 2**63, "values": {"a": 1}}, "'ts' 9223372036854775808 is beyond"),
    ("null ts", {"ts": None, "values": {"a": 1}}, "'ts' must be ms since 1970"),
    ("list ts", {"ts": [1], "values": {"a": 1}}, "'ts' must be ms since 1970"),
    ("NaN ts", {"ts": float("nan"), "values": {"a": 1}}, "nan is not a finite number"),
    ("values not object", {"ts": 1, "values": [1]}, r"telemetry\.values: expected a JSON object"),
    ("values null", {"ts": 1, "values": None}, r"telemetry\.values"),
    ("NaN in values", {"ts": 1, "values": {"a": float("nan")}}, "not a finite number"),
    ("bad entry in list", [{"ts": 1, "values": {"a": 1}}, {"ts": -5, "values": {"a": 1}}],
     r"telemetry\[1\]: 'ts' -5 is before 1970"),
    ("too many entries", [{"a": 1}] * (MAX_ENTRIES + 1), "more than 10000"),
]


@pytest.mark.parametrize(("body", "message"), [(b, m) for _, b, m in REJECTED],
                         ids=[name for name, _, _ in REJECTED])
def test_parse_telemetry_rejects(body: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_telemetry(body, now_ms=NOW)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty body"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"\xc3\x28", "not UTF-8"),
        (b'{"a": 1,}', "malformed JSON"),
        (b'{"a"', "malformed JSON"),
        (b"{'a': 1}", "malformed JSON"),
        (b"   ", "malformed JSON"),
        (b'{"a": 1} x', "malformed JSON"),
    ],
    ids=["empty", "deep-array", "deep-object", "invalid-utf8", "invalid-utf8-2", "trailing-comma",
         "truncated", "single-quotes", "whitespace", "trailing-garbage"],
)
def test_parse_json_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_json(raw)


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}',
                                 b'[{"ts": 1, "values": {"a": NaN}}]'])
def test_json_nan_and_infinity_get_through_parse_json_but_not_parse_telemetry(raw: bytes) -> None:
    body = parse_json(raw)  # json.loads accepts these non-standard tokens
    with pytest.raises(BadRequest, match="not a finite number"):
        parse_telemetry(body, now_ms=NOW)


# -- valid JSON the store cannot hold ---------------------------------------------------------------


def test_parse_json_rejects_utf8_encoded_surrogates() -> None:
    with pytest.raises(BadRequest, match="body is not UTF-8"):
        parse_json(b'{"a": "\xed\xa0\x80"}')


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"a": "\\ud800"}', "telemetry: value of 'a': text with a lone surrogate"),
    (b'{"\\udfff": 1}', "telemetry: a key: text with a lone surrogate"),
], ids=["in-a-value", "in-a-key"])
def test_lone_surrogate_escapes_are_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_telemetry(parse_json(raw), now_ms=NOW)


@pytest.mark.parametrize("body", [{"a": [2**64]}, {"a": {"b": -(2**63) - 1}},
                                  {"a": [[{"c": 10**30}]]}, {"a": [1, {"b": [-(10**30)]}]}],
                         ids=["list-2**64", "object-under-int64", "deep-huge", "deep-negative-huge"])
def test_nested_out_of_range_int_is_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="value of 'a': a number inside the JSON value does not "
                                         "fit in 64 bits"):
        parse_telemetry(body, now_ms=NOW)


@pytest.mark.parametrize("body", [{"a": [2**64 - 1]}, {"a": {"b": -(2**63)}},
                                  {"a": [[{"c": 2**63}]]}],
                         ids=["uint64-max", "int64-min", "deep-over-int64"])
def test_nested_int_within_what_the_store_holds_is_accepted_and_stored(body: dict[str, Any]) -> None:
    # Inside a JSON value an integer may be anything msgpack (the store's encoding) holds: int64
    # or uint64. It is kept as it is and comes back from the store's encoding unchanged.
    entries = parse_telemetry(body, now_ms=NOW)
    assert entries == ((NOW, (("a", body["a"]),)),)
    assert codec.unpack(codec.pack(entries), "telemetry") == [[NOW, [["a", body["a"]]]]]


# -- round-trip property ----------------------------------------------------------------------------


_keys = st.text(min_size=1, max_size=MAX_KEY_BYTES // 4)  # 4 bytes at most per character
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_bodies = st.dictionaries(_keys, _scalars, min_size=1, max_size=12).filter(
    lambda d: not {"ts", "values"} <= set(d)
)


def _typed(values: Any) -> list[tuple[str, type, Any]]:
    return [(k, type(v), v) for k, v in values]


@settings(max_examples=300, deadline=None)
@given(body=_bodies, now=st.integers(min_value=0, max_value=2**63 - 1))
def test_valid_scalar_dicts_round_trip_unchanged_in_order(body: dict[str, Any], now: int) -> None:
    # type cast off: a string stays a string (with it on, "12" would become 12)
    ((ts, values),) = parse_telemetry(body, now_ms=now, type_cast=False)
    assert ts == now
    assert _typed(values) == _typed(body.items())
    # The same through the wire format: JSON text, then parse_json.
    ((ts2, values2),) = parse_telemetry(parse_json(json.dumps(body).encode()), now_ms=now,
                                        type_cast=False)
    assert ts2 == now
    assert _typed(values2) == _typed(body.items())
    assert all(not isinstance(v, float) or math.isfinite(v) for _, v in values2)
    # And with an explicit ts, inside a list.
    assert parse_telemetry([{"ts": 7, "values": body}, body], now_ms=now, type_cast=False) == (
        (7, tuple(body.items())), (now, tuple(body.items())))
