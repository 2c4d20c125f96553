"""The TLS side of the device MQTT API (MQTTS, ThingsBoard's ``transport.mqtt.ssl``): the
server's SSL context from the ``mqtt.tls`` files, built once at start-up so a certificate that
cannot be loaded is a configuration error, not a failed listener.

The client certificate, when ``client_ca`` is set, is required and checked against that CA; it
does not name the device (the access token does: the store keeps tokens only).

An encrypted private key is refused: without a password OpenSSL would ask for one on the
terminal (``edge-sync run`` waiting for it) or fail with an unhelpful "Invalid argument", and
the settings have no place for a password.
"""

from __future__ import annotations

import ssl

from edge_sync.config import MqttTlsConfig
from edge_sync.errors import ConfigError

__all__ = ["server_context"]


class _Encrypted(Exception):
    """OpenSSL asked for the private key's password."""


def _no_password() -> bytes:
    """The ``password`` of load_cert_chain: called only for an encrypted key."""
    raise _Encrypted


def server_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """ConfigError naming the setting when a file cannot be loaded, or the key is
    encrypted."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert is not None  # MqttTlsConfig requires it when enabled
    try:
        context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    except _Encrypted:
        where = tls.key if tls.key is not None else tls.cert
        raise ConfigError(f"mqtt.tls.key: the private key in {where} is encrypted: encrypted "
                          "private keys are not supported (decrypt it, e.g. `openssl pkey -in "
                          "encrypted.key -out mqtt.key`, and keep that file readable by the "
                          "agent only)") from None
    except (OSError, ssl.SSLError) as exc:
        names = "mqtt.tls.cert" + (" / mqtt.tls.key" if tls.key is not None else "")
        raise ConfigError(f"{names}: cannot load the server certificate and key from "
                          f"{tls.cert}{f' and {tls.key}' if tls.key else ''}: {exc}") from exc
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.tls.client_ca: cannot load CA certificates from "
                              f"{tls.client_ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context
