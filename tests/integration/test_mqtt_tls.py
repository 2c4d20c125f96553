"""MQTT over TLS (MQTTS) in one process: a whole EdgeApp with the plain and the TLS listener
side by side, certificates made by the test (openssl), real clients (paho-mqtt with TLS).

- A device publishes over TLS (the server's certificate checked against the test CA, for the
  name localhost) and over the plain port: both acknowledged after commit and stored.
- With mqtt.tls.client_ca set, a client without a certificate, or with one from another CA, is
  refused: the server hangs up in the TLS 1.2 handshake, or, TLS 1.3, right after it without a
  CONNACK (asserted as such: the client's own failure to verify the server is not a
  refusal); a client whose certificate the CA signed is served, over both versions (its
  access token still names the device).
- A certificate that cannot be loaded stops EdgeApp with a configuration error naming the
  setting; so does an encrypted private key (OpenSSL would otherwise ask for its password on
  the terminal, or fail with "Invalid argument"), in its own file or in the certificate's.
"""

from __future__ import annotations

import socket
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
from tests.helpers.mqtt_raw import connect_packet
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


CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def tls_client(ca: Path, client: Pki | None, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context trusting ``ca``, with ``client``'s certificate if any, speaking only
    TLS ``version``."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = context.maximum_version = version
    if client is not None:
        context.load_cert_chain(str(client.server_cert), str(client.server_key))
    return context


def connack(port: int, context: ssl.SSLContext) -> bytes:
    """Handshake (the client checking the server's certificate for localhost: a failure there
    raises SSLCertVerificationError, never taken for a refusal), send CONNECT, and return what
    the server answered before it closed (up to the 4 bytes of a CONNACK)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(connect_packet("tls-raw", TOKEN))
        answer = b""
        while len(answer) < 4:
            try:
                chunk = tls.recv(4 - len(answer))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            answer += chunk
        return answer


def refused(port: int, ca: Path, client: Pki | None) -> None:
    """The server refuses ``client``'s certificate (none, or not signed by the client CA):
    over TLS 1.2, where the server checks it within the handshake, the server hangs up
    mid-handshake (an EOF, not the client's own verification failing); over TLS 1.3, where
    the client's side of the handshake completes first, the server closes without a CONNACK."""
    with pytest.raises(ssl.SSLEOFError):
        connack(port, tls_client(ca, client, ssl.TLSVersion.TLSv1_2))
    assert connack(port, tls_client(ca, client, ssl.TLSVersion.TLSv1_3)) == b""


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
    refused(port, ca, None)  # no certificate
    refused(port, ca, stranger)  # one another CA signed
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert connack(port, tls_client(ca, clients, version)) == CONNACK_ACCEPTED
    with MqttDevice(port, TOKEN, host="localhost",
                    tls=Tls(ca, clients.server_cert, clients.server_key)) as member:
        assert member.connect() == 0
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
