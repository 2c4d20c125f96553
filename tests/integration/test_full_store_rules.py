"""A full store (policy refuse, ``store.max_size = 0``) under a rule chain that raises and
clears an alarm (tests/fixtures/rules/alarm_threshold.json), in a whole EdgeApp (real LMDB, the
device HTTP API and the MQTT server on loopback):

- the alarm lines tell what was stored: a clear whose Append the store refused is not logged
  "cleared" (the alarm stays active: its rule state was not saved), only "not stored" at DEBUG;
- every refused device message is counted in /metrics, also one the chain keeps local (it
  makes no event): ``edge_sync_appends_refused_total{reason="storage_full"}``, the HTTP 507
  answers, and the MQTT publishes whose connection closed without their PUBACK
  (``edge_sync_mqtt_publishes_not_committed_total{reason="storage_full"}``), also those of the
  bursts still owed when the first refusal closed the connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from tests.helpers.agent import HttpClient
from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_app import DEADLINE_S, AppFactory, no_connections
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.mqtt_raw import RawClient, publish_packet
from tests.helpers.wait import wait_until

CHAIN = Path(__file__).resolve().parents[1] / "fixtures" / "rules" / "alarm_threshold.json"
ALARM = "High Temperature"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    with AppFactory(tmp_path) as apps:
        yield apps(EDGE_RULES_FILE=str(CHAIN))


def post(app: EdgeApp, token: str, body: Any, kind: str = "telemetry") -> int:
    """The device's HTTP post of ``kind`` (telemetry, attributes); its status."""
    with HttpClient(app.http_port, timeout=DEADLINE_S) as http:
        return http.post_json(f"/api/v1/{token}/{kind}", body).status


def alarm_lines(logs: Logs) -> list[tuple[str, str]]:
    return [(r["level"].name, r["message"].split(": storage full")[0]) for r in logs.records
            if r["message"].startswith(f"alarm {ALARM!r}")]


def test_a_clear_the_full_store_refused_is_not_logged_cleared(app: EdgeApp) -> None:
    device, created = app.service.create_device("boiler")
    created.result(DEADLINE_S)
    store, cap = app.store, app.store.max_size
    logs = Logs()
    try:
        assert post(app, device.token, {"temperature": 95}) == 200
        store.max_size = 0  # the cap reached: every new record is refused
        assert post(app, device.token, {"temperature": 20}) == 507
        refused_clear = alarm_lines(logs)
        store.max_size = cap
        assert post(app, device.token, {"temperature": 21}) == 200  # the alarm was still active
    finally:
        store.max_size = cap
        logs.close()
    assert refused_clear == [
        ("INFO", f"alarm {ALARM!r} created (CRITICAL)"),
        ("DEBUG", f"alarm {ALARM!r} cleared not stored"),
    ]
    assert alarm_lines(logs) == [*refused_clear, ("INFO", f"alarm {ALARM!r} cleared")]
    snap = app.metrics.snapshot()
    assert snap['edge_sync_appends_refused_total{reason="storage_full"}'] == 1
    assert metric_total(snap, "edge_sync_events_total", outcome="refused") == 1  # the clear


def test_every_refused_device_message_is_counted_also_local_only_and_mqtt(app: EdgeApp) -> None:
    """Attributes and cool telemetry stay on the edge (no event): refused, they used to be
    counted nowhere; an MQTT publish refused is now counted too."""
    device, created = app.service.create_device("boiler")
    created.result(DEADLINE_S)
    store, cap = app.store, app.store.max_size
    try:
        store.max_size = 0
        assert post(app, device.token, {"temperature": 20}) == 507  # nothing to clear: local
        assert post(app, device.token, {"fw": "1.2"}, "attributes") == 507
        for topic in (ATTRIBUTES, TELEMETRY):
            with MqttDevice(app.mqtt_port, device.token) as client:
                assert client.connect() == 0
                info = client.publish(topic, {"temperature": 20, "fw": "1.3"})
                assert client.disconnected.wait(DEADLINE_S)  # closed, no PUBACK
                assert info.mid not in client.acked_ids()
        no_connections(app)
    finally:
        store.max_size = cap
    snap = app.metrics.snapshot()
    assert snap['edge_sync_appends_refused_total{reason="storage_full"}'] == 4
    assert snap['edge_sync_device_requests_total{protocol="http",code="507"}'] == 2
    assert snap['edge_sync_mqtt_publishes_not_committed_total{reason="storage_full"}'] == 2
    assert metric_total(snap, "edge_sync_events_total", outcome="refused") == 0  # no events


def test_publishes_owed_when_a_refusal_closes_the_connection_are_counted_not_committed(
        app: EdgeApp) -> None:
    """Six publishes in one read, telemetry and attributes in turn: six commands (a burst holds
    one kind), all handed to the store before the first refusal closes the connection. The
    five owed then are refused too: each publish is counted not committed, as each command
    is counted refused."""
    device, created = app.service.create_device("boiler")
    created.result(DEADLINE_S)
    store, cap = app.store, app.store.max_size
    try:
        store.max_size = 0
        with RawClient(app.mqtt_port, timeout=DEADLINE_S) as raw:
            assert raw.connect("burst", device.token) == (0, 0)
            raw.send(b"".join(
                publish_packet((TELEMETRY, ATTRIBUTES)[n % 2],
                               json.dumps({"temperature": 20, "fw": f"1.{n}"}).encode(),
                               qos=1, packet_id=n + 1) for n in range(6)))
            assert raw.closed_by_server()
        no_connections(app)

        def counted() -> int:
            return int(app.metrics.snapshot()[
                'edge_sync_mqtt_publishes_not_committed_total{reason="storage_full"}'])
        wait_until(lambda: counted() == 6, timeout=DEADLINE_S,
                   what="the six publishes counted not committed", show=counted)
    finally:
        store.max_size = cap
    snap = app.metrics.snapshot()
    assert snap['edge_sync_appends_refused_total{reason="storage_full"}'] == 6
    assert snap['edge_sync_mqtt_publishes_not_committed_total{reason="storage_full"}'] == 6
