"""The MQTT server's counters are the agent's: what its sessions drop (kept sessions, QoS 1
messages never acknowledged), the publishes it acknowledged and dropped (topics it does not
serve) and how often it held a flooding client back are exposed in the agent's /metrics, the
registry the admin API renders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_app import DEADLINE_S, AppFactory, no_connections
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.mqtt_raw import PUBACK, RawClient, publish_packet


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


def test_the_mqtt_counters_are_in_the_agents_metrics(make_app: AppFactory) -> None:
    app = make_app()
    families = {f.name: f.type for f in text_string_to_metric_families(
        app.metrics.exposition().decode())}
    for name in ("edge_sync_mqtt_sessions_dropped", "edge_sync_mqtt_unacked_dropped",
                 "edge_sync_mqtt_reads_paused", "edge_sync_mqtt_publishes_dropped"):
        assert families[name] == "counter", name
    assert families["edge_sync_mqtt_connections"] == "gauge"
    assert app.metrics.snapshot()["edge_sync_mqtt_unacked_dropped_total"] == 0


def test_publishes_outside_the_device_api_are_counted_and_logged_for_a_thousand_topics(
        make_app: AppFactory) -> None:
    """2,000 QoS 1 publishes, each on a topic of its own outside the device API: every one is
    acknowledged, dropped and counted; the first 1,000 topics are logged once each, then one
    line says the rest go unlogged (the connection once remembered and logged every topic)."""
    app = make_app()
    device, created = app.service.create_device("wanderer", token="wanderer")
    created.result(DEADLINE_S)
    count, filler = 2_000, "x" * 2_000
    logs = Logs()
    try:
        with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
            assert client.connect("w1", "wanderer") == (0, 0)
            client.send(b"".join(publish_packet(f"elsewhere/{i}/{filler}", b"{}", qos=1,
                                                packet_id=i + 1) for i in range(count)))
            acked = [client.read() for _ in range(count)]
        no_connections(app)
    finally:
        logs.close()
    assert [(p.kind, p.packet_id) for p in acked] == [(PUBACK, i + 1) for i in range(count)]
    snapshot = app.metrics.snapshot()
    assert metric_total(snapshot, "edge_sync_mqtt_publishes_dropped_total",
                        reason="unknown_topic") == count
    assert metric_total(snapshot, "edge_sync_mqtt_publishes_dropped_total",
                        reason="unknown_gateway_topic") == 0
    logged = logs.matching("publish to a topic outside the device API acknowledged and dropped",
                           device=str(device.id))
    assert [r["extra"]["topic"] for r in logged] == [
        f"elsewhere/{i}/{filler}"[:128] for i in range(1_000)]
    assert [r["message"] for r in logs.matching("further such topics are dropped unlogged")] == [
        "device published on more than 1000 topics outside the device API: further such "
        "topics are dropped unlogged"]
