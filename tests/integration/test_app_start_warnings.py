"""What EdgeApp warns about when it starts, read from its log, in one process (a whole EdgeApp
with its MQTT listeners on loopback, certificates made by the test with openssl).

mqtt.tls.client_ca makes the TLS listener require a client certificate; the plain listener,
on by default, still takes an access token without one. With both, the start logs one WARNING
naming the setting that turns the plain listener off; with the plain listener off, or no
client certificate required, it logs none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.tls import Pki, make_pki

Start = Callable[..., list[Any]]


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Pki, Pki]:
    """The server's certificates, and a CA for client certificates."""
    return (make_pki(tmp_path / "pki", host="localhost", name="server"),
            make_pki(tmp_path / "clients", name="clients"))


@pytest.fixture
def start(tmp_path: Path, pki: tuple[Pki, Pki]) -> Iterator[Start]:
    """Start an EdgeApp with the TLS listener on and ``env`` on top; the WARNING records of
    the app component logged while it started."""
    server, _ = pki
    apps: list[EdgeApp] = []
    logs = Logs()

    def run(**env: str) -> list[Any]:
        cfg = load_edge_config(env={
            "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "1",
            "EDGE_MQTT_HOST": "127.0.0.1", "EDGE_MQTT_PORT": "0",
            "EDGE_MQTT_TLS_ENABLED": "true", "EDGE_MQTT_TLS_HOST": "127.0.0.1",
            "EDGE_MQTT_TLS_PORT": "0", "EDGE_MQTT_TLS_CERT": str(server.server_cert),
            "EDGE_MQTT_TLS_KEY": str(server.server_key), **env,
        })
        before = len(logs.records)
        apps.append(EdgeApp(cfg).start())
        return [r for r in logs.records[before:]
                if r["level"].name == "WARNING" and r["extra"].get("component") == "app"]

    try:
        yield run
    finally:
        logs.close()
        for app in apps:
            app.stop()


def test_a_client_ca_beside_the_plain_listener_is_warned_about_once(
        start: Start, pki: tuple[Pki, Pki]) -> None:
    _, clients = pki
    (warning,) = start(EDGE_MQTT_ENABLED="true", EDGE_MQTT_TLS_CLIENT_CA=str(clients.ca_cert))
    message = warning["message"]
    assert "mqtt.tls.client_ca requires a client certificate" in message
    assert "plain MQTT listener" in message and "without a certificate" in message
    assert "EDGE_MQTT_ENABLED=false (mqtt.enabled: false)" in message
    assert isinstance(warning["extra"]["mqtt_port"], int)
    assert isinstance(warning["extra"]["mqtt_tls_port"], int)


def test_no_warning_with_the_plain_listener_off(start: Start, pki: tuple[Pki, Pki]) -> None:
    _, clients = pki
    assert start(EDGE_MQTT_ENABLED="false", EDGE_MQTT_TLS_CLIENT_CA=str(clients.ca_cert)) == []


def test_no_warning_when_no_client_certificate_is_required(start: Start) -> None:
    assert start(EDGE_MQTT_ENABLED="true") == []
