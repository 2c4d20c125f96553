"""The MQTT server's counters are the agent's: what its sessions drop (kept sessions, QoS 1
messages never acknowledged) and how often it held a flooding client back are exposed in the
agent's /metrics, the registry the admin API renders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mqtt_app import AppFactory


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


def test_the_mqtt_counters_are_in_the_agents_metrics(make_app: AppFactory) -> None:
    app = make_app()
    text = app.metrics.render_prometheus()
    for name in ("edge_mqtt_sessions_dropped_total", "edge_mqtt_unacked_dropped_total",
                 "edge_mqtt_reads_paused_total"):
        assert f"# TYPE {name} counter" in text, name
    assert app.metrics.snapshot()["edge_mqtt_unacked_dropped_total"] == 0
