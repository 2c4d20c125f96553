"""The MQTT server's counters are the agent's: what its sessions drop (kept sessions, QoS 1
messages never acknowledged) and how often it held a flooding client back are exposed in the
agent's /metrics, the registry the admin API renders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.mqtt_app import AppFactory


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


def test_the_mqtt_counters_are_in_the_agents_metrics(make_app: AppFactory) -> None:
    app = make_app()
    families = {f.name: f.type for f in text_string_to_metric_families(
        app.metrics.exposition().decode())}
    for name in ("edge_sync_mqtt_sessions_dropped", "edge_sync_mqtt_unacked_dropped",
                 "edge_sync_mqtt_reads_paused"):
        assert families[name] == "counter", name
    assert families["edge_sync_mqtt_connections"] == "gauge"
    assert app.metrics.snapshot()["edge_sync_mqtt_unacked_dropped_total"] == 0
