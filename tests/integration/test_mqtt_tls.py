"""MQTT over TLS (MQTTS) in one process: a whole EdgeApp with the plain and the TLS listener
side by side, certificates made by the test (openssl), real clients (paho-mqtt with TLS).

- A device publishes over TLS (the server's certificate checked against the test CA, for the
  name localhost) and over the plain port: both acknowledged after commit and stored.
- With mqtt.tls.client_ca set, a client without a certificate, or with one from another CA, is
  refused during the handshake; a client whose certificate the CA signed is served (its
  access token still names the device).
- A certificate that cannot be loaded stops EdgeApp with a configuration error naming the
  setting; so does an encrypted private key (OpenSSL would otherwise ask for its password on
  the terminal, or fail with "Invalid argument"), in its own file or in the certificate's.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.errors import ConfigError
from tests.helpers.mqtt_app import AppFactory, no_connections, publish_once, values
from tests.helpers.mqtt_device import MqttDevice, Tls
from tests.helpers.tls import Pki, make_pki

DEADLINE_S = 10.0
TOKEN = "tls-token-1"

@pytest.fixture
def server_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", host="localhost", name="server")


@pytest.fixture
def make_app(tmp_path: Path, server_pki: Pki) -> Iterator[Callable[..., EdgeApp]]:
    with AppFactory(tmp_path) as apps:

        def make(**env: str) -> EdgeApp:
            app = apps(EDGE_MQTT_TLS_ENABLED="true", EDGE_MQTT_TLS_HOST="127.0.0.1",
                       EDGE_MQTT_TLS_PORT="0", EDGE_MQTT_TLS_CERT=str(server_pki.server_cert),
                       EDGE_MQTT_TLS_KEY=str(server_pki.server_key), **env)
            _, created = app.service.create_device("tls-dev", token=TOKEN)
            created.result(DEADLINE_S)
            return app

        yield make


def telemetry(app: EdgeApp) -> list[object]:
    return values(app, app.service.authenticate(TOKEN).id)


def served(dev: MqttDevice) -> bool:
    """Whether the server accepted the client: CONNACK 0, or refused it (handshake failed or
    the connection closed before CONNACK)."""
    try:
        reason = dev.connect()
    except (ssl.SSLError, OSError):
        return False
    return reason == 0


def test_tls_and_plain_listeners_serve_side_by_side(make_app: Callable[..., EdgeApp],
                                                     server_pki: Pki) -> None:
    app = make_app()
    assert app.mqtt_tls_port != app.mqtt_port
    with MqttDevice(app.mqtt_tls_port, TOKEN, host="localhost",
                    tls=Tls(server_pki.ca_cert)) as secure:
        assert secure.connect() == 0
        publish_once(secure, 1)
    with MqttDevice(app.mqtt_port, TOKEN) as plain:
        assert plain.connect() == 0
        publish_once(plain, 2)
    assert telemetry(app) == [1, 2]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_client_ca_requires_a_certificate_it_signed(make_app: Callable[..., EdgeApp], server_pki: Pki,
                                                      tmp_path: Path) -> None:
    clients = make_pki(tmp_path / "clients", host="device-1", name="client")
    stranger = make_pki(tmp_path / "stranger", host="device-2", name="stranger")
    app = make_app(EDGE_MQTT_TLS_CLIENT_CA=str(clients.ca_cert))
    port, ca = app.mqtt_tls_port, server_pki.ca_cert
    with MqttDevice(port, TOKEN, host="localhost", tls=Tls(ca)) as anonymous:
        assert not served(anonymous)
    with MqttDevice(port, TOKEN, host="localhost",
                    tls=Tls(ca, stranger.server_cert, stranger.server_key)) as outsider:
        assert not served(outsider)
    with MqttDevice(port, TOKEN, host="localhost",
                    tls=Tls(ca, clients.server_cert, clients.server_key)) as member:
        assert served(member)
        publish_once(member, 3)
    assert telemetry(app) == [3]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_certificate_that_cannot_be_loaded_is_a_configuration_error(
        tmp_path: Path, server_pki: Pki) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_MQTT_ENABLED": "false",
        "EDGE_MQTT_TLS_ENABLED": "true", "EDGE_MQTT_TLS_CERT": str(bogus),
    })
    with pytest.raises(ConfigError, match=r"^mqtt\.tls\.cert: cannot load"):
        EdgeApp(cfg)
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_MQTT_ENABLED": "false",
        "EDGE_MQTT_TLS_ENABLED": "true", "EDGE_MQTT_TLS_CERT": str(server_pki.server_cert),
        "EDGE_MQTT_TLS_KEY": str(server_pki.server_key), "EDGE_MQTT_TLS_CLIENT_CA": str(bogus),
    })
    with pytest.raises(ConfigError, match=r"^mqtt\.tls\.client_ca: cannot load"):
        EdgeApp(cfg)
    assert not (tmp_path / "edge").exists()  # refused before the store was opened


def test_an_encrypted_private_key_is_a_configuration_error(tmp_path: Path,
                                                          server_pki: Pki) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(server_pki.server_key), "-aes256",
                    "-passout", "pass:secret", "-out", str(encrypted)], check=True,
                   capture_output=True)
    assert "ENCRYPTED" in encrypted.read_text()
    both = tmp_path / "both.pem"  # the key in the certificate's file
    both.write_text(server_pki.server_cert.read_text() + encrypted.read_text())
    for cert, key in ((server_pki.server_cert, encrypted), (both, None)):
        cfg = load_edge_config(env={
            "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_MQTT_ENABLED": "false",
            "EDGE_MQTT_TLS_ENABLED": "true", "EDGE_MQTT_TLS_CERT": str(cert),
            **({"EDGE_MQTT_TLS_KEY": str(key)} if key is not None else {}),
        })
        with pytest.raises(ConfigError) as refused:
            EdgeApp(cfg)
        message = str(refused.value)
        assert message.startswith(f"mqtt.tls.key: the private key in {key or cert} is encrypted")
        assert "encrypted private keys are not supported" in message
    assert not (tmp_path / "edge").exists()
