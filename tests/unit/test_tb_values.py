"""How the device API reads values and timestamps (api/tb_values.py), case by case against
ThingsBoard's JsonConverter (parseProtoValues, buildNumericKeyValueProto, parseWithTs; its own
JsonConverterTest cases included), through parse_values_json as every device path decodes a
body; and the null values' count and rate-limited log line (api/null_values.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from edge_sync.api.null_values import MAX_DEVICES_REMEMBERED, NULL_LOG_INTERVAL_S, NullValues
from edge_sync.api.payloads import parse_attributes, parse_telemetry
from edge_sync.api.tb_values import parsable
from edge_sync.common.json_body import JsonNumber, NumberTexts, parse_json, parse_values_json
from edge_sync.errors import BadRequest
from edge_sync.metrics import Metrics
from tests.helpers.log_capture import log_records

NOW = 1_700_000_000_000


def values_of(raw: str, *, type_cast: bool = True) -> dict[str, Any]:
    """The pairs stored of ``{"v": <raw>}`` (``raw`` a JSON value's text)."""
    ((_, pairs),) = parse_telemetry(parse_values_json(f'{{"v": {raw}}}'.encode()), now_ms=NOW,
                                    type_cast=type_cast)
    return dict(pairs)


def stored(raw: str, *, type_cast: bool = True) -> tuple[type, Any]:
    value = values_of(raw, type_cast=type_cast)["v"]
    return type(value), value


# -- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "kind", "value"), [
    # JsonConverterTest
    ("1E+1", int, 10),
    ("101E-1", float, 10.1),
    ("1E1", int, 10),
    ("42.0", float, 42.0),
    ("1.1", float, 1.1),
    ("11", int, 11),
    ("9.9701010061400066E19", str, "99701010061400066000"),
    ("99701010061400066001", str, "99701010061400066001"),
    ("1E19", str, "10000000000000000000"),
    # a whole value written with an exponent is a long, one with a point and no exponent a
    # double (isSimpleDouble)
    ("1.5e3", int, 1500),
    ("-2e0", int, -2),
    ("1e-3", float, 0.001),
    ("100.0", float, 100.0),
    ("-0", int, 0),
    ("9223372036854775807", int, 2**63 - 1),
    ("-9223372036854775808", int, -(2**63)),
    ("9223372036854775808", str, "9223372036854775808"),
    ("-123456789012345678901234567890", str, "-123456789012345678901234567890"),
    # at most 16 decimals: a double; more: the plain string (BigDecimal.toPlainString)
    ("0.1234567890123456", float, 0.1234567890123456),
    ("0.30000000000000004", str, "0.30000000000000004"),
    ("100.000000000000000000", str, "100.000000000000000000"),
    ("1e-17", str, "0.00000000000000001"),
    ("1.0e19", str, "10000000000000000000"),
    ("1e400", str, "1" + "0" * 400),
    ("-0.00000000000000000", str, "0.00000000000000000"),  # BigDecimal has no negative zero
], ids=lambda x: str(x)[:24])
def test_numbers_are_stored_as_thingsboard_stores_them(raw: str, kind: type, value: Any) -> None:
    assert stored(raw) == (kind, value)


@pytest.mark.parametrize(("raw", "kind", "value"), [
    ('"21.5"', float, 21.5),
    ('"21"', int, 21),
    ('"21.0"', float, 21.0),
    ('"007"', int, 7),
    ('"-3"', int, -3),
    ('"-.5"', float, -0.5),
    ('".5"', float, 0.5),
    ('"1.10"', float, 1.1),
    ('"\u0663\u0662"', int, 32),  # Arabic-Indic digits: Character.isDigit, BigDecimal read them
    ('"99999999999999999999"', str, "99999999999999999999"),
    ('"00099999999999999999999"', str, "99999999999999999999"),  # its plain digits
    ('"0.12345678901234567"', str, "0.12345678901234567"),
    # not parsable (NumberUtils.isParsable): kept as they are
    ('"5."', str, "5."),
    ('"+5"', str, "+5"),
    ('"1e3"', str, "1e3"),
    ('" 5"', str, " 5"),
    ('"1.2.0"', str, "1.2.0"),
    ('"-"', str, "-"),
    ('""', str, ""),
    ('"0x1F"', str, "0x1F"),
    ('"NaN"', str, "NaN"),
    ('"\U0001d7ce"', str, "\U0001d7ce"),  # a digit beyond the BMP: two UTF-16 units in Java
    # a double too large to hold: the string stays (ThingsBoard would store Infinity)
    ('"1' + "0" * 400 + '.5"', str, "1" + "0" * 400 + ".5"),
], ids=lambda x: str(x)[:24])
def test_numeric_strings_are_cast_as_thingsboard_casts_them(raw: str, kind: type,
                                                            value: Any) -> None:
    assert stored(raw) == (kind, value)


def test_with_type_cast_off_strings_stay_and_numbers_past_a_long_or_a_double_are_refused() -> None:
    """ThingsBoard with transport.json.type_cast_enabled false: "Big integer values are not
    supported!" for a number beyond 64 bits or with more than 16 decimals."""
    assert stored('"21.5"', type_cast=False) == (str, "21.5")
    assert stored("1.5e3", type_cast=False) == (int, 1500)
    assert stored("0.25", type_cast=False) == (float, 0.25)
    for raw in ("99701010061400066001", "9.9701010061400066E19", "0.30000000000000004"):
        with pytest.raises(BadRequest, match=r"^telemetry: value of 'v': Big integer values are "
                                             r"not supported!"):
            values_of(raw, type_cast=False)
    with pytest.raises(BadRequest, match="Big integer values"):
        parse_attributes({"n": 2**64}, type_cast=False)


def test_numbers_the_edge_cannot_write_out_or_hold_are_refused_naming_the_value() -> None:
    with pytest.raises(BadRequest, match=r"^telemetry: value of 'v': number 1e100000 has an "
                                         r"exponent beyond"):
        values_of("1e100000")
    with pytest.raises(BadRequest, match=r"^telemetry: value of 'v' is not a finite number$"):
        values_of("1" + "0" * 400 + ".5")  # a double: Infinity in ThingsBoard


def test_null_values_are_skipped_and_their_keys_reported() -> None:
    nulls: list[str] = []
    body = parse_values_json(b'[{"a": null, "b": 1}, {"ts": 5, "values": {"c": null}}, {"d": null}]')
    assert parse_telemetry(body, now_ms=NOW, nulls=nulls) == ((NOW, (("b", 1),)),)
    assert nulls == ["a", "c", "d"]
    nulls.clear()
    assert parse_attributes({"k": None, "fw": "1.2.0"}, nulls=nulls) == (("fw", "1.2.0"),)
    assert nulls == ["k"]


@pytest.mark.parametrize("raw", [b"{}", b"[]", b"[{}, {}]", b'{"ts": 1, "values": {}}',
                                 b'{"a": null}', b'[{"ts": 1, "values": {"a": null}}]'])
def test_a_body_with_no_pair_left_gives_no_entry(raw: bytes) -> None:
    assert parse_telemetry(parse_values_json(raw), now_ms=NOW) == ()


# -- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ts", "expected"), [
    ("1719999999123", 1719999999123),
    ("1719999999123.456", 1719999999123),  # time.time() * 1000
    ("1719999999123.999999", 1719999999123),  # truncated, not rounded
    ("1.719999999123456e12", 1719999999123),
    ('"1719999999123"', 1719999999123),
    ('"+1719999999123"', 1719999999123),  # Long.parseLong takes a plus sign
    ('"0001719999999123"', 1719999999123),
    ('"\u0661\u0662"', 12),  # Long.parseLong reads any script's digits
    ('"-0"', 0),
    ("-0.5", 0),  # BigDecimal.longValue: toward zero
    ("0", 0),
    ("9223372036854775807", 2**63 - 1),
    ('"9223372036854775807"', 2**63 - 1),
], ids=lambda x: str(x)[:24])
def test_ts_is_read_as_gsons_get_as_long_reads_it(ts: str, expected: int) -> None:
    raw = f'{{"ts": {ts}, "values": {{"a": 1}}}}'.encode()
    assert parse_telemetry(parse_values_json(raw), now_ms=NOW) == ((expected, (("a", 1),)),)


@pytest.mark.parametrize(("ts", "message"), [
    ('"abc"', "'ts' must be ms since 1970: an integer, a number (its fraction is dropped) or a "
              "string of digits; 'abc' is not a string of digits"),
    ('"1e3"', "'1e3' is not a string of digits"),
    ('"9223372036854775808"', "'ts' '9223372036854775808' does not fit in 64 bits"),
    ("-1", "'ts' -1 is before 1970: the edge keeps times of 0 to 2^63-1 ms since 1970"),
    ('"-1719999999123"', "'ts' -1719999999123 is before 1970"),
    ("9223372036854775808", "'ts' 9223372036854775808 is beyond 2^63-1 ms"),
    ("1e19", "'ts' 10000000000000000000 is beyond 2^63-1 ms"),
    ("1e400", "'ts' 1e400 is out of 0 to 2^63-1 ms"),
    ("true", "'ts' must be ms since 1970"),
    ("null", "'ts' must be ms since 1970"),
    ("{}", "'ts' must be ms since 1970"),
], ids=lambda x: str(x)[:24])
def test_a_ts_the_edge_cannot_keep_is_refused_saying_why(ts: str, message: str) -> None:
    raw = f'{{"ts": {ts}, "values": {{"a": 1}}}}'.encode()
    with pytest.raises(BadRequest) as caught:
        parse_telemetry(parse_values_json(raw), now_ms=NOW)
    assert str(caught.value).startswith("telemetry: '"), str(caught.value)
    assert message in str(caught.value), str(caught.value)


# -- decoding --------------------------------------------------------------------------------------


def test_parse_values_json_keeps_the_text_of_numbers_a_float_does_not_say() -> None:
    plain = parse_values_json(b'{"a": 21.5, "b": 0.1234567890123456, "c": "online"}')
    assert plain == {"a": 21.5, "b": 0.1234567890123456, "c": "online"}
    assert [type(v) for v in plain.values()] == [float, float, str]
    # text in a string that looks like such a number: decoded the slower way, same values
    looks = parse_values_json(b'{"c": "1e3", "d": ".12345678901234567", "e": 1.5}')
    assert type(looks) is NumberTexts and looks.body == {"c": "1e3", "d": ".12345678901234567",
                                                         "e": 1.5}
    assert type(looks.body["e"]) is float
    # a ts with a point: its number's text is kept when a double rounds it to a whole number
    ts = parse_values_json(b'{"ts" : 17.999999999999999999, "values": {"a": 2.0}}')
    assert type(ts) is NumberTexts and type(ts.body["ts"]) is JsonNumber
    assert type(ts.body["values"]["a"]) is float
    marked = parse_values_json(b'{"a": 1e3, "b": 0.30000000000000004, "c": 21.5, "d": [1E2]}')
    assert type(marked) is NumberTexts
    a, b, c, d = marked.body.values()
    assert (type(a), a.text, type(b), b.text, type(c)) == (
        JsonNumber, "1e3", JsonNumber, "0.30000000000000004", float)
    assert type(d[0]) is JsonNumber and d[0] == 100.0
    assert parse_json(b'{"a": 1e3}') == {"a": 1000.0}  # other APIs: plain floats
    # without a point: an exponent is still seen; without a point or an e, nothing to see
    assert type(parse_values_json(b'{"v": 1E3}')) is NumberTexts
    assert parse_values_json(b'{"v": 12345, "w": [1, 2]}') == {"v": 12345, "w": [1, 2]}


def test_a_json_value_holds_plain_numbers_whatever_their_text() -> None:
    """Inside a JSON object or array ThingsBoard keeps the JSON text; the edge keeps numbers."""
    ((_, pairs),) = parse_telemetry(parse_values_json(
        b'{"j": {"a": 1e3, "b": [0.30000000000000004, {"c": 2E0}]}, "n": 1e3}'), now_ms=NOW)
    j = dict(pairs)["j"]
    assert j == {"a": 1000.0, "b": [0.30000000000000004, {"c": 2.0}]}
    assert [type(x) for x in (j["a"], j["b"][0], j["b"][1]["c"])] == [float, float, float]
    assert dict(pairs)["n"] == 1000 and type(dict(pairs)["n"]) is int


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("-1", True), ("1.5", True), (".5", True), ("-.5", True), ("007", True),
    ("\u0663", True), ("", False), ("-", False), (".", False), ("5.", False), ("-5.", False),
    ("1.2.3", False), ("+1", False), ("1e3", False), (" 1", False), ("1 ", False), ("--1", False),
    ("\U0001d7ce", False), ("½", False), ("²", False),
])
def test_parsable_is_commons_lang_number_utils_is_parsable(text: str, expected: bool) -> None:
    assert parsable(text) is expected


# -- null values: counted, logged once per device and interval --------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now_ms(self) -> int:
        return int(self.t * 1000)

    def monotonic(self) -> float:
        return self.t


def test_null_values_are_counted_per_transport_and_logged_once_per_device_and_interval() -> None:
    metrics, clock = Metrics(), _Clock()
    nulls = NullValues(metrics, clock)
    a, b = uuid.uuid4(), uuid.uuid4()
    with log_records() as records:
        nulls.skipped(a, "pump", "http", ["t", "p"])
        nulls.skipped(a, "pump", "mqtt", ["t"])  # within the interval: counted, not logged
        nulls.skipped(b, "valve", "mqtt_gateway", [f"k{i}" for i in range(7)])
        clock.t += NULL_LOG_INTERVAL_S
        nulls.skipped(a, "pump", "mqtt", ["x"])
    lines = [(r["level"].name, r["message"], r["extra"]["device"], r["extra"]["transport"])
             for r in records if r["extra"].get("component") == "device-api"]
    assert lines == [
        ("INFO", "device pump posted null values, skipped as ThingsBoard skips them: 't', 'p' "
                 "(0 more skipped since this device's last such line)", str(a), "http"),
        ("INFO", "device valve posted null values, skipped as ThingsBoard skips them: 'k0', "
                 "'k1', 'k2', 'k3', 'k4' and 2 more (0 more skipped since this device's last "
                 "such line)", str(b), "mqtt_gateway"),
        ("INFO", "device pump posted null values, skipped as ThingsBoard skips them: 'x' (1 more "
                 "skipped since this device's last such line)", str(a), "mqtt"),
    ]
    counts = {t: metrics.value("edge_sync_device_null_values_total", transport=t)
              for t in ("http", "mqtt", "mqtt_gateway")}
    assert counts == {"http": 2, "mqtt": 2, "mqtt_gateway": 7}


def test_the_devices_remembered_are_bounded_the_least_recent_forgotten_first() -> None:
    clock = _Clock()
    nulls = NullValues(None, clock)
    devices = [uuid.uuid4() for _ in range(MAX_DEVICES_REMEMBERED + 1)]
    with log_records() as records:
        for device in devices:
            nulls.skipped(device, "d", "http", ["k"])
        nulls.skipped(devices[1], "d", "http", ["k"])  # remembered: not logged
        nulls.skipped(devices[0], "d", "http", ["k"])  # forgotten: logged again at once
    logged = [r["extra"]["device"] for r in records if r["extra"].get("component") == "device-api"]
    assert logged == [str(d) for d in devices] + [str(devices[0])]
