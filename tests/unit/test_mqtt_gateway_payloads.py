"""The gateway API's wire format alone (mqtt/gateway_payloads.py): what a gateway publishes,
parsed as ThingsBoard's MQTT transport reads it, every refusal a BadRequest naming what is
wrong; what the edge publishes to it, in ThingsBoard's shapes. And the one future a publish
naming several devices is acknowledged on (mqtt/gateway.all_of)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from edge_sync.errors import BadRequest, Unavailable
from edge_sync.mqtt import gateway_payloads as wire
from edge_sync.mqtt.gateway import all_of

NOW = 1_700_000_000_000


# -- connect / disconnect ------------------------------------------------------------------------


def test_connect_takes_the_name_and_the_type_or_default() -> None:
    assert wire.parse_connect({"device": "Dev A", "type": "thermometer"}) == (
        "Dev A", "thermometer")
    assert wire.parse_connect({"device": "Dev A"}) == ("Dev A", "default")
    assert wire.parse_connect({"device": "Dev A", "type": None}) == ("Dev A", "default")
    assert wire.parse_connect({"device": "Dev A", "type": ""}) == ("Dev A", "default")
    assert wire.parse_disconnect({"device": "Dev A"}) == "Dev A"


@pytest.mark.parametrize("body, message", [
    ([], "connect: expected a JSON object"),
    ({}, 'connect: no "device"'),
    ({"device": 5}, "connect: the device name must be a string"),
    ({"device": ""}, "is not 1 to 255 bytes"),
    ({"device": "  "}, "is not 1 to 255 bytes"),
    ({"device": "é" * 128}, "is not 1 to 255 bytes"),  # 256 bytes of UTF-8
    ({"device": "ok", "type": 3}, "device type must be 1 to 255 bytes"),
    ({"device": "ok", "type": "t" * 256}, "device type must be 1 to 255 bytes"),
])
def test_connect_refusals_say_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        wire.parse_connect(body)


def test_a_name_of_255_bytes_is_taken() -> None:
    assert wire.parse_disconnect({"device": "é" * 127 + "x"}) == "é" * 127 + "x"


# -- telemetry -----------------------------------------------------------------------------------


def test_telemetry_in_every_shape_per_device_in_message_order() -> None:
    data = wire.parse_telemetry({
        "A": [{"ts": 1, "values": {"v": 1}}, {"v": 2}, {"ts": 3, "values": {"v": 3, "w": "x"}}],
        "B": {"v": 10},
        "C": {"ts": 7, "values": {"j": {"nested": [1, 2]}}},
        "D": [],
    }, now_ms=NOW)
    assert data.devices == (
        ("A", ((1, (("v", 1),)), (NOW, (("v", 2),)), (3, (("v", 3), ("w", "x"))))),
        ("B", ((NOW, (("v", 10),)),)),
        ("C", ((7, (("j", {"nested": [1, 2]}),)),)),
        ("D", ()),
    )
    assert data.skipped == ()


def test_gateway_metadata_is_dropped_from_each_entry() -> None:
    meta = {"connector": "modbus", "receivedTs": 1, "publishedTs": 2}
    data = wire.parse_telemetry({"A": [{"ts": 1, "values": {"v": 1}, "metadata": meta},
                                       {"v": 2, "metadata": meta}]}, now_ms=NOW)
    assert data.devices == (("A", ((1, (("v", 1),)), (NOW, (("v", 2),)))),)
    with pytest.raises(BadRequest, match=r"telemetry of device 'A'\[0\]: \"metadata\" must be"):
        wire.parse_telemetry({"A": [{"v": 1, "metadata": "x"}]}, now_ms=NOW)


def test_values_thingsboard_skips_are_skipped_and_named() -> None:
    data = wire.parse_telemetry({"A": [{"v": 1}], "B": 5, "C": "text", "D": None}, now_ms=NOW)
    assert [name for name, _ in data.devices] == ["A"]
    assert data.skipped == ("B", "C", "D")
    with pytest.raises(BadRequest, match="no device with a list or an object"):
        wire.parse_telemetry({"B": 5}, now_ms=NOW)
    with pytest.raises(BadRequest, match="no device with a list or an object"):
        wire.parse_telemetry({}, now_ms=NOW)


def test_null_values_are_skipped_and_named_per_device_and_empty_entries_store_nothing() -> None:
    """JsonConverter.parseProtoValues skips a JsonNull; an entry left without a pair stores
    nothing, and its device is still named (connected) by the message."""
    data = wire.parse_telemetry({"A": [{"v": None, "w": 1}, {"x": None}], "B": {}, "C": [{}]},
                                now_ms=NOW)
    assert data.devices == (("A", ((NOW, (("w", 1),)),)), ("B", ()), ("C", ()))
    assert data.nulls == (("A", ("v", "x")),)
    attributes = wire.parse_attributes({"A": {"k": None, "fw": "1.2.0"}, "B": {"n": None}})
    assert attributes.devices == (("A", (("fw", "1.2.0"),)), ("B", ()))
    assert attributes.nulls == (("A", ("k",)), ("B", ("n",)))


def test_values_are_cast_as_thingsboard_casts_them_unless_type_cast_is_off() -> None:
    body = {"A": [{"ts": "1700000000000", "values": {"t": "21.5", "n": 2**64, "s": "on"}}]}
    assert wire.parse_telemetry(body, now_ms=NOW).devices == (
        ("A", ((1_700_000_000_000, (("t", 21.5), ("n", str(2**64)), ("s", "on"))),)),)
    with pytest.raises(BadRequest, match=r"device 'A'.*value of 'n': Big integer values are "
                                         r"not supported!"):
        wire.parse_telemetry(body, now_ms=NOW, type_cast=False)
    assert wire.parse_attributes({"A": {"t": "21.5"}}, type_cast=False).devices == (
        ("A", (("t", "21.5"),)),)


@pytest.mark.parametrize("body, message", [
    ([{"A": [{"v": 1}]}], "gateway telemetry: expected a JSON object"),
    ({"A": [5]}, r"telemetry of device 'A': telemetry\[0\]: expected a JSON object"),
    ({"A": [{"ts": -1, "values": {"v": 1}}]}, "'ts' -1 is before 1970"),
    ({"A": [{"ts": "x", "values": {"v": 1}}]}, "'ts' must be ms since 1970"),
    ({"": [{"v": 1}]}, "is not 1 to 255 bytes"),
    ({"x" * 256: [{"v": 1}]}, "is not 1 to 255 bytes"),
    ({"ok": [{"v": 1}], "bad": [{"v": float("nan")}]}, "device 'bad'.*not a finite number"),
])
def test_telemetry_refusals_name_the_device_and_the_problem(body: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        wire.parse_telemetry(body, now_ms=NOW)


# -- attributes ----------------------------------------------------------------------------------


def test_attributes_per_device_and_what_is_skipped() -> None:
    data = wire.parse_attributes({"A": {"fw": "1.2.0", "n": 2}, "B": {}, "C": [1], "D": 3})
    assert data.devices == (("A", (("fw", "1.2.0"), ("n", 2))), ("B", ()))
    assert data.skipped == ("C", "D")
    with pytest.raises(BadRequest, match="no device with an object of attributes"):
        wire.parse_attributes({"C": [1]})
    with pytest.raises(BadRequest, match="attributes of device 'A': attributes: value of 'k'"):
        wire.parse_attributes({"A": {"k": float("nan")}})
    with pytest.raises(BadRequest, match="gateway attributes: expected a JSON object"):
        wire.parse_attributes("A")


# -- attribute requests and their answers ------------------------------------------------------


def test_attribute_requests_with_one_key_several_or_all() -> None:
    one = wire.parse_attribute_request({"id": 1, "device": "A", "client": True, "key": "fw"})
    assert one == wire.AttributeRequest(1, "A", True, ("fw",)) and not one.multiple
    several = wire.parse_attribute_request(
        {"id": 2, "device": "A", "client": False, "keys": ["a", "b", "a"]})
    assert several == wire.AttributeRequest(2, "A", False, ("a", "b")) and several.multiple
    single_list = wire.parse_attribute_request(
        {"id": 3, "device": "A", "client": False, "keys": ["a"]})
    assert not single_list.multiple
    everything = wire.parse_attribute_request({"id": 4, "device": "A", "client": True,
                                               "keys": []})
    assert everything.keys is None and not everything.multiple
    key_first = wire.parse_attribute_request(
        {"id": 5, "device": "A", "client": True, "key": "k", "keys": ["x", "y"]})
    assert key_first.keys == ("k",)


@pytest.mark.parametrize("body, message", [
    ({"device": "A", "client": True, "key": "k"}, '"id" must be a 32-bit integer'),
    ({"id": "1", "device": "A", "client": True, "key": "k"}, '"id" must be a 32-bit integer'),
    ({"id": 2**31, "device": "A", "client": True, "key": "k"}, '"id" must be a 32-bit'),
    ({"id": 1, "device": "A", "key": "k"}, '"client" must be true'),
    ({"id": 1, "device": "A", "client": "yes", "key": "k"}, '"client" must be true'),
    ({"id": 1, "device": "A", "client": True}, 'no "key" nor "keys"'),
    ({"id": 1, "device": "A", "client": True, "keys": "a,b"}, '"keys" must be a list'),
    ({"id": 1, "device": "A", "client": True, "keys": [1]}, "key 1 is not 1 to 255 bytes"),
    ({"id": 1, "client": True, "key": "k"}, 'no "device"'),
])
def test_attribute_request_refusals(body: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        wire.parse_attribute_request(body)


def test_answers_are_value_for_one_key_values_for_more_and_bare_for_none() -> None:
    one = wire.AttributeRequest(1, "A", True, ("fw",))
    assert wire.attribute_response(one, {"fw": "1.0"}) == {"id": 1, "device": "A",
                                                            "value": "1.0"}
    assert wire.attribute_response(one, {}) == {"id": 1, "device": "A"}
    more = wire.AttributeRequest(2, "A", False, ("a", "b"))
    assert wire.attribute_response(more, {"a": 1}) == {"id": 2, "device": "A",
                                                       "values": {"a": 1}}
    everything = wire.AttributeRequest(3, "A", True, None)
    assert wire.attribute_response(everything, {"a": 1}) == {"id": 3, "device": "A",
                                                             "value": 1}
    assert wire.attribute_response(everything, {"a": 1, "b": 2}) == {
        "id": 3, "device": "A", "values": {"a": 1, "b": 2}}


# -- RPC -----------------------------------------------------------------------------------------


def test_rpc_replies_and_requests() -> None:
    assert wire.parse_rpc_reply({"device": "A", "id": 7, "data": {"ok": True}}) == wire.RpcReply(
        "A", 7, {"ok": True})
    assert wire.parse_rpc_reply({"device": "A", "id": 0, "data": None}).data is None
    for body, message in (({"device": "A", "id": 7}, 'no "data"'),
                          ({"device": "A", "id": -1, "data": 1}, '"id" must be an integer'),
                          ({"device": "A", "id": True, "data": 1}, '"id" must be an integer'),
                          ({"id": 1, "data": 1}, 'no "device"'),
                          ({"device": "A", "id": 1, "data": [2**70]},
                           "RPC reply of device 'A'.*does not fit in 64 bits"),
                          ({"device": "A", "id": 1, "data": {"t": "\ud800"}},
                           "RPC reply of device 'A'")):
        with pytest.raises(BadRequest, match=message):
            wire.parse_rpc_reply(body)
    assert wire.rpc_request("A", {"id": 7, "method": "m", "params": {"p": 1}}) == {
        "device": "A", "data": {"id": 7, "method": "m", "params": {"p": 1}}}
    assert wire.attribute_update("A", {"k": 1, "deleted": ["x"]}) == {
        "device": "A", "data": {"k": 1, "deleted": ["x"]}}


# -- all_of --------------------------------------------------------------------------------------


def test_all_of_waits_for_every_commit_and_fails_with_the_first_failure() -> None:
    assert all_of([None, None]) is None
    single: Future[Any] = Future()
    assert all_of([None, single]) is single
    a: Future[Any] = Future()
    b: Future[Any] = Future()
    both = all_of([a, None, b])
    assert both is not None
    a.set_result(range(1, 2))
    assert not both.done()
    b.set_result(range(2, 3))
    assert both.result(0) is None
    c: Future[Any] = Future()
    d: Future[Any] = Future()
    failed = all_of([c, d])
    assert failed is not None
    d.set_exception(BadRequest("refused"))
    assert isinstance(failed.exception(0), BadRequest)
    c.set_result(range(0))  # later outcomes change nothing
    assert isinstance(failed.exception(0), BadRequest)


def test_all_of_settles_when_a_commit_it_waits_for_was_cancelled() -> None:
    a: Future[Any] = Future()
    b: Future[Any] = Future()
    both = all_of([a, b])
    assert both is not None
    assert a.cancel()
    b.set_result(range(1, 2))
    assert isinstance(both.exception(0), Unavailable)
