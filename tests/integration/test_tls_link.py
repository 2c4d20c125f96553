"""The cloud link over TLS (CLOUD_RPC_SSL_ENABLED with CLOUD_RPC_SSL_CERT as the trusted root):
events reach the reference cloud; an edge that trusts another root never connects, says why,
and delivers everything once the right root is configured. Over a slow link (a proxy adding
latency) the TLS handshake has cloud.rpc.timeout_ms to finish: it connects, and a wrong root
is still reported as the certificate error it is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.status import collect_status
from tests.chaos.proxy import FaultProxy
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


def edge(tmp_path: Path, cloud: CloudServer, root: Path, *, port: int | None = None,
         timeout_ms: int = 2000) -> EdgeApp:
    """An edge trusting ``root``, dialing localhost:``port`` (the cloud's by default)."""
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_MQTT_ENABLED": "false",
        "CLOUD_ROUTING_KEY": "tls-edge", "CLOUD_ROUTING_SECRET": "tls-secret",
        "CLOUD_RPC_HOST": "localhost", "CLOUD_RPC_PORT": str(port or cloud.port),
        "CLOUD_RPC_SSL_ENABLED": "true", "CLOUD_RPC_SSL_CERT": str(root),
        "CLOUD_RPC_TIMEOUT": str(timeout_ms),
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


# -- a slow link -----------------------------------------------------------------------------------

LATENCY_MS = 150
"""Added by the proxy each way: a TLS handshake's round trip takes 300 ms and more, longer than
the 200 ms gRPC gave a connection attempt when its minimum connect timeout was left at the
reconnect backoff's 200 ms."""


@pytest.fixture
def slow_link(cloud: CloudServer) -> Iterator[FaultProxy]:
    with FaultProxy(target=("127.0.0.1", cloud.port)) as proxy:
        proxy.latency(LATENCY_MS)
        yield proxy


def test_a_tls_handshake_slower_than_200_ms_still_connects(
        tmp_path: Path, cloud: CloudServer, pki: Pki, slow_link: FaultProxy) -> None:
    app = edge(tmp_path, cloud, pki.ca_cert, port=slow_link.port, timeout_ms=5000)
    try:
        device, created = app.service.create_device("tls-dev")
        created.result(10)
        app.service.post_telemetry(device.token, {"i": 1}).result(10)
        wait_until(lambda: pending(app) == 0, timeout=DEADLINE,
                   what="the queue to drain over a TLS link with a 300 ms round trip",
                   show=lambda: app.link_board.value)
        assert len(cloud.service.events("tls-edge", after=0, limit=0)) == 3
        assert app.link_board.value["state"] == "CONNECTED"
        assert app.metrics.snapshot()["edge_sync_link_connect_attempts_total"] == 1
    finally:
        app.stop()


def test_a_wrong_root_over_a_slow_link_is_reported_as_the_certificate_error(
        tmp_path: Path, cloud: CloudServer, slow_link: FaultProxy) -> None:
    """What the operator reads on every failed attempt is what the handshake found (the
    cloud's certificate is not signed by the trusted root), not that gRPC gave up on it."""
    other = make_pki(tmp_path / "other", name="other")
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING",
                      filter=lambda r: r["extra"].get("component") == "link"
                      and r["extra"].get("state") == "BACKOFF")
    app = edge(tmp_path, cloud, other.ca_cert, port=slow_link.port, timeout_ms=5000)
    try:
        wait_until(lambda: len(lines) >= 3, timeout=DEADLINE, what="three failed attempts",
                   show=lambda: lines)
    finally:
        app.stop()
        logger.remove(sink)
    for line in lines:
        assert line.startswith("link CONNECTING -> BACKOFF: stream ended: UNAVAILABLE: "), line
        for words in ("handshake failed", "CERTIFICATE_VERIFY_FAILED",
                      "unable to get local issuer certificate"):
            assert words in line, (words, line)
    assert slow_link.stats()["accepted"] >= 3
