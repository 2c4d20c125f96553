"""The TLS side of the device MQTT API (MQTTS, ThingsBoard's ``transport.mqtt.ssl``): the
server's SSL context from the ``mqtt.tls`` files, built once at start-up so a certificate that
cannot be loaded is a configuration error, not a failed listener.

The client certificate, when ``client_ca`` is set, is required and checked against that CA; it
does not name the device (the access token does: the store keeps tokens only).
"""

from __future__ import annotations

import ssl

from edge_sync.config import MqttTlsConfig
from edge_sync.errors import ConfigError

__all__ = ["server_context"]


def server_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """ConfigError naming the setting when a file cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert is not None  # MqttTlsConfig requires it when enabled
    try:
        context.load_cert_chain(tls.cert, tls.key)
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
