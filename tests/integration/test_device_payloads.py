"""What devices post, read as ThingsBoard's transports read it (JsonConverter: null values
skipped, ``ts`` as Gson's getAsLong reads it, numeric strings cast, numbers beyond a long or a
double kept as their digits, ``ts`` and ``values`` beside other keys; empty bodies acknowledged),
on each device path of a whole EdgeApp (real LMDB, the real aiohttp device API and MQTT server
on loopback): HTTP (http.client), MQTT and the MQTT gateway (paho-mqtt). A publish ThingsBoard
takes is acknowledged and the connection stays open: before, such a publish closed it without
its PUBACK, and a clean-session-0 client sent it again on every reconnect, for ever. Null values
are counted by transport and logged with their device. An empty ``clientKeys`` /
``sharedKeys`` reads every attribute, as ThingsBoard's DeviceApiController does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Action, StoredEvent
from tests.helpers.agent import HttpClient, Response
from tests.helpers.mqtt_app import AppFactory, events_of, log_of, no_connections
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import ATTRIBUTES as GATEWAY_ATTRIBUTES
from tests.helpers.mqtt_gateway import TELEMETRY as GATEWAY_TELEMETRY
from tests.helpers.mqtt_gateway import Logs, MqttGateway
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
TOKEN = "payload-token-1"
GATEWAY_TOKEN = "payload-gateway-1"
TS = 1_719_999_999_123
NULLS = "edge_sync_device_null_values_total"

CAST_BODY = (b'{"s": "21.5", "i": "007", "v": "1.2.0", "big": 123456789012345678901234567890, '
             b'"e": 1.5e3, "p": 0.30000000000000004, "n": -3, "j": {"q": 1e3}}')
CAST_STORED = {"s": 21.5, "i": 7, "v": "1.2.0", "big": "123456789012345678901234567890",
               "e": 1500, "p": "0.30000000000000004", "n": -3, "j": {"q": 1000.0}}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


@pytest.fixture
def app(make_app: AppFactory) -> EdgeApp:
    return make_app()


@pytest.fixture
def device_id(app: EdgeApp) -> uuid.UUID:
    device, created = app.service.create_device("payload-dev", token=TOKEN)
    created.result(DEADLINE_S)
    return device.id


@pytest.fixture
def http(app: EdgeApp) -> Iterator[HttpClient]:
    client = HttpClient(app.http_port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def logs() -> Iterator[Logs]:
    recorded = Logs()
    try:
        yield recorded
    finally:
        recorded.close()


def post(http: HttpClient, body: Any, what: str = "telemetry") -> Response:
    return http.post_json(f"/api/v1/{TOKEN}/{what}", body)


def telemetry(app: EdgeApp, device_id: uuid.UUID) -> list[tuple[int, dict[str, Any]]]:
    return [(e.ts, e.body["values"]) for e in events_of(app, device_id,
                                                        Action.TIMESERIES_UPDATED)]


def attributes(app: EdgeApp, device_id: uuid.UUID) -> list[dict[str, Any]]:
    return [e.body["kv"] for e in events_of(app, device_id, Action.ATTRIBUTES_UPDATED)]


def typed(values: dict[str, Any]) -> list[tuple[str, type, Any]]:
    return [(k, type(v), v) for k, v in values.items()]


def null_counts(app: EdgeApp) -> dict[str, float]:
    return {t: app.metrics.value(NULLS, transport=t) for t in ("http", "mqtt", "mqtt_gateway")}


# -- HTTP ------------------------------------------------------------------------------------------


def test_http_null_values_are_skipped_counted_and_logged_with_the_device(
        app: EdgeApp, device_id: uuid.UUID, http: HttpClient, logs: Logs) -> None:
    assert post(http, {"a": None, "b": 1}).status == 200
    assert post(http, {"fw": None, "hw": "r2"}, "attributes").status == 200
    assert telemetry(app, device_id)[0][1] == {"b": 1}
    assert attributes(app, device_id) == [{"hw": "r2"}]
    assert null_counts(app) == {"http": 2, "mqtt": 0, "mqtt_gateway": 0}
    # one line (the second null came within the interval), naming the device
    lines = logs.matching("posted null values", device=str(device_id))
    assert [(r["level"].name, r["extra"]["transport"], r["message"]) for r in lines] == [
        ("INFO", "http", "device payload-dev posted null values, skipped as ThingsBoard skips "
                         "them: 'a' (0 more skipped since this device's last such line)")]


def test_http_ts_is_read_as_thingsboard_reads_it(app: EdgeApp, device_id: uuid.UUID,
                                                 http: HttpClient) -> None:
    assert post(http, b'{"ts": 1719999999123.456, "values": {"n": 1}}').status == 200
    assert post(http, {"ts": str(TS + 1), "values": {"n": 2}}).status == 200
    assert post(http, b'{"ts": 1.719999999125e12, "values": {"n": 3}}').status == 200
    assert telemetry(app, device_id) == [(TS, {"n": 1}), (TS + 1, {"n": 2}), (TS + 2, {"n": 3})]
    for ts, message in ((-1, "telemetry: 'ts' -1 is before 1970: the edge keeps times of 0 to "
                             "2^63-1 ms since 1970"),
                        ("12:00", "telemetry: 'ts' must be ms since 1970: an integer, a number "
                                  "(its fraction is dropped) or a string of digits; '12:00' is "
                                  "not a string of digits")):
        resp = post(http, {"ts": ts, "values": {"n": 4}})
        assert (resp.status, resp.json()["message"]) == (400, message)
    assert len(telemetry(app, device_id)) == 3


@pytest.mark.parametrize("body", [b"{}", b"[]", b'{"ts": 1719999999123, "values": {}}',
                                  b'[{}, {"ts": 1, "values": {}}]', b'{"a": null}'],
                         ids=["object", "list", "values", "entries", "only-null"])
def test_http_a_body_with_nothing_to_store_is_200_and_stores_nothing(
        app: EdgeApp, device_id: uuid.UUID, http: HttpClient, body: bytes) -> None:
    assert post(http, body).status == 200
    assert post(http, b"{}", "attributes").status == 200
    assert post(http, {"after": 1}).status == 200
    assert [values for _, values in telemetry(app, device_id)] == [{"after": 1}]
    assert attributes(app, device_id) == []


def test_http_values_are_stored_as_thingsboard_stores_them(
        app: EdgeApp, device_id: uuid.UUID, http: HttpClient) -> None:
    assert post(http, CAST_BODY).status == 200
    assert post(http, CAST_BODY, "attributes").status == 200
    ((_, stored),) = telemetry(app, device_id)
    assert typed(stored) == typed(CAST_STORED)
    assert typed(attributes(app, device_id)[0]) == typed(CAST_STORED)


def test_http_ts_and_values_beside_other_keys_are_the_entry(
        app: EdgeApp, device_id: uuid.UUID, http: HttpClient) -> None:
    assert post(http, {"ts": TS, "values": {"n": 1}, "deviceName": "x"}).status == 200
    assert telemetry(app, device_id) == [(TS, {"n": 1})]


def test_with_type_cast_off_strings_stay_and_numbers_beyond_a_long_or_a_double_are_400(
        make_app: AppFactory) -> None:
    app = make_app(EDGE_DEVICES_TYPE_CAST="false")
    device, created = app.service.create_device("payload-dev", token=TOKEN)
    created.result(DEADLINE_S)
    with HttpClient(app.http_port) as http:
        assert post(http, {"s": "21.5", "e": 1e3}).status == 200
        resp = post(http, {"big": 2**64})
        assert resp.status == 400
        assert resp.json()["message"].startswith("telemetry: value of 'big': Big integer values "
                                                 "are not supported!")
    assert typed(telemetry(app, device.id)[0][1]) == [("s", str, "21.5"), ("e", float, 1000.0)]


def test_http_empty_key_lists_read_every_attribute(app: EdgeApp, device_id: uuid.UUID,
                                                   http: HttpClient) -> None:
    """DeviceApiController.getDeviceAttributes: a parameter that is empty (StringUtils.isEmpty)
    is as absent; both absent read every attribute."""
    assert post(http, {"fw": "1.2.0", "mode": "eco"}, "attributes").status == 200
    everything = {"client": {"fw": "1.2.0", "mode": "eco"}, "shared": {}}
    for query in ("clientKeys=&sharedKeys=", "clientKeys=", "sharedKeys=", "clientKeys=,"):
        resp = http.request("GET", f"/api/v1/{TOKEN}/attributes?{query}")
        assert (resp.status, resp.json()) == (200, everything), query
    resp = http.request("GET", f"/api/v1/{TOKEN}/attributes?clientKeys=fw&sharedKeys=")
    assert resp.json() == {"client": {"fw": "1.2.0"}}


# -- MQTT ------------------------------------------------------------------------------------------


def test_mqtt_publishes_thingsboard_takes_are_acknowledged_and_the_connection_stays(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """Each of these closed the connection without its PUBACK: a paho client with clean
    session 0 resent it on every reconnect and never got past it."""
    bodies: list[bytes] = [
        b'{"a": null, "n": 1}',
        b'{"ts": 1719999999123.456, "values": {"n": 2}}',  # time.time() * 1000
        b'{"ts": "1719999999124", "values": {"n": 3}}',
        b"{}", b"[]", b'{"ts": 1719999999125, "values": {}}',
        b'{"big": 18446744073709551616, "n": 4}',
    ]
    with MqttDevice(app.mqtt_port, TOKEN, client_id="lockout", clean_session=False) as dev:
        assert dev.connect() == 0
        infos = [dev.publish(TELEMETRY, body) for body in bodies]
        infos.append(dev.publish(ATTRIBUTES, b'{"fw": null, "hw": "r2"}'))
        infos.append(dev.publish(TELEMETRY, b'{"q": null, "n": 5}', qos=2))
        wait_until(lambda: len(dev.acked_ids()) == len(infos) or dev.disconnected.is_set(),
                   timeout=DEADLINE_S, what="every acknowledgement")
        assert dev.acked_ids() == [i.mid for i in infos]
        assert not dev.disconnected.is_set()
    stored = telemetry(app, device_id)
    assert [v for _, v in stored] == [
        {"n": 1}, {"n": 2}, {"n": 3}, {"big": "18446744073709551616", "n": 4}, {"n": 5}]
    assert [ts for ts, _ in stored[1:3]] == [TS, TS + 1]
    assert attributes(app, device_id) == [{"hw": "r2"}]
    assert null_counts(app) == {"http": 0, "mqtt": 3, "mqtt_gateway": 0}
    no_connections(app)


def test_mqtt_values_are_stored_as_thingsboard_stores_them(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        infos = [dev.publish(TELEMETRY, CAST_BODY), dev.publish(ATTRIBUTES, CAST_BODY)]
        wait_until(lambda: len(dev.acked_ids()) == 2, timeout=DEADLINE_S, what="2 PUBACKs")
        assert dev.acked_ids() == [i.mid for i in infos]
    ((_, stored),) = telemetry(app, device_id)
    assert typed(stored) == typed(CAST_STORED)
    assert typed(attributes(app, device_id)[0]) == typed(CAST_STORED)
    no_connections(app)


# -- the MQTT gateway ------------------------------------------------------------------------------


def test_gateway_data_is_read_as_the_device_apis_read_it(app: EdgeApp, logs: Logs) -> None:
    gateway_device, created = app.service.create_device("gw", token=GATEWAY_TOKEN, gateway=True)
    created.result(DEADLINE_S)
    with MqttGateway(app.mqtt_port, GATEWAY_TOKEN) as gateway:
        assert gateway.connect() == 0
        gateway.send(GATEWAY_TELEMETRY, json.dumps({
            "Pump": [{"ts": "1719999999123", "values": {"rpm": "1450", "temp": None}},
                     {"ts": 1719999999124.9, "values": {"rpm": 1460}, "extra": 1}],
            "Valve": [{}]}).encode())
        gateway.send(GATEWAY_ATTRIBUTES, b'{"Pump": {"fw": null, "hw": "r2"}, "Meter": {"k": null}}')
        assert not gateway.disconnected.is_set()
    events = {name: device_events(app, name) for name in ("Pump", "Valve", "Meter")}
    assert [(e.ts, e.body["values"]) for e in events["Pump"]
            if e.action == Action.TIMESERIES_UPDATED] == [(TS, {"rpm": 1450}), (TS + 1, {"rpm": 1460})]
    assert [e.body["kv"] for e in events["Pump"] if e.action == Action.ATTRIBUTES_UPDATED] == [
        {"hw": "r2"}]
    # named by the message: connected (created), nothing stored
    for name in ("Valve", "Meter"):
        assert [e.action for e in events[name]] == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    assert null_counts(app) == {"http": 0, "mqtt": 0, "mqtt_gateway": 3}
    pump = next(e.entity_id for e in events["Pump"])
    lines = logs.matching("posted null values", transport="mqtt_gateway")
    assert [(r["extra"]["device"], r["message"]) for r in lines] == [
        (str(pump), "device Pump posted null values, skipped as ThingsBoard skips them: 'temp' "
                    "(0 more skipped since this device's last such line)"),
        (str(next(e.entity_id for e in events["Meter"])),
         "device Meter posted null values, skipped as ThingsBoard skips them: 'k' (0 more "
         "skipped since this device's last such line)")]
    assert gateway_device.id not in {e.entity_id for es in events.values() for e in es}
    no_connections(app)


def device_events(app: EdgeApp, name: str) -> list[StoredEvent]:
    """The events of the device named ``name``, in log order (none when there is no such
    device)."""
    with app.store.read() as txn:
        device = EntityStore(app.store).device_by_name(txn, name)
    return [] if device is None else [e for e in log_of(app) if e.entity_id == device.id]
