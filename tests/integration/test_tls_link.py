"""The cloud link over TLS (CLOUD_RPC_SSL_ENABLED with CLOUD_RPC_SSL_CERT as the trusted root):
events reach the reference cloud; an edge that trusts another root never connects, says why,
and delivers everything once the right root is configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.status import collect_status
from tests.helpers.tls import Pki, make_pki
from tests.helpers.wait import wait_until

DEADLINE = 30.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def cloud(tmp_path: Path, pki: Pki) -> Iterator[CloudServer]:
    cfg = load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_PORT": "0", "CLOUD_ADMIN_PORT": "0",
        "EDGES_RPC_SSL_ENABLED": "true", "EDGES_RPC_SSL_CERT": str(pki.server_cert),
        "EDGES_RPC_SSL_PRIVATE_KEY": str(pki.server_key),
    })
    server = CloudServer(cfg).start()
    server.service.create_edge("tls-edge", routing_key="tls-edge", secret="tls-secret")
    yield server
    server.stop()


def edge(tmp_path: Path, cloud: CloudServer, root: Path) -> EdgeApp:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_MQTT_ENABLED": "false",
        "CLOUD_ROUTING_KEY": "tls-edge", "CLOUD_ROUTING_SECRET": "tls-secret",
        "CLOUD_RPC_HOST": "localhost", "CLOUD_RPC_PORT": str(cloud.port),
        "CLOUD_RPC_SSL_ENABLED": "true", "CLOUD_RPC_SSL_CERT": str(root),
        "CLOUD_RPC_TIMEOUT": "2000",
        "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100", "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "500",
    })
    return EdgeApp(cfg).start()


def pending(app: EdgeApp) -> int:
    return int(collect_status(app.store, now_ms=0)["queue"]["pending"])


def test_events_reach_the_cloud_over_tls(tmp_path: Path, cloud: CloudServer, pki: Pki) -> None:
    app = edge(tmp_path, cloud, pki.ca_cert)
    try:
        device, created = app.service.create_device("tls-dev")
        created.result(10)
        for i in range(50):
            app.service.post_telemetry(device.token, {"i": i}).result(10)
        wait_until(lambda: pending(app) == 0, timeout=DEADLINE, what="the queue to drain over TLS")
        applied = cloud.service.events("tls-edge", after=0, limit=0)
        values = [e.body["values"]["i"] for e in applied if e.action == "TIMESERIES_UPDATED"]
        assert values == list(range(50))
        assert app.link_board.value["state"] == "CONNECTED"
    finally:
        app.stop()


def test_wrong_root_never_connects_and_recovers_with_the_right_one(
        tmp_path: Path, cloud: CloudServer, pki: Pki) -> None:
    other = make_pki(tmp_path / "other", name="other")
    app = edge(tmp_path, cloud, other.ca_cert)
    try:
        device, created = app.service.create_device("tls-dev")
        created.result(10)
        app.service.post_telemetry(device.token, {"i": 1}).result(10)
        wait_until(lambda: app.metrics.snapshot().get("edge_sync_link_connect_attempts_total", 0) >= 2,
                   timeout=DEADLINE, what="two failed attempts")
        assert app.link_board.value["state"] in ("BACKOFF", "CONNECTING")
        assert app.metrics.snapshot().get("edge_sync_link_connects_accepted_total", 0) == 0
        assert pending(app) == 3  # ADDED, CREDENTIALS_UPDATED and the point: kept, not sent
        assert cloud.service.events("tls-edge", after=0, limit=0) == []
    finally:
        app.stop()
    fixed = edge(tmp_path, cloud, pki.ca_cert)  # same store, right root
    try:
        wait_until(lambda: pending(fixed) == 0, timeout=DEADLINE, what="the queue to drain after the fix")
        assert len(cloud.service.events("tls-edge", after=0, limit=0)) == 3
    finally:
        fixed.stop()
