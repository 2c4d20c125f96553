"""A device that talks MQTT 3.1.1 (or MQTT 5: ``protocol=mqtt.MQTTv5``, with clean start, a
session expiry interval, a Receive Maximum and a Maximum Packet Size) to the agent through a
real client (paho-mqtt): connect with its access token as username (plain or TLS, clean
session or not), publish, subscribe, and see what the server answered (CONNACK code and
session-present flag, PUBACKs, what it published and with which QoS and DUP flag, a connection
the server closed). No automatic reconnect, so a closed connection stays closed and nothing is
resent behind the test's back; a client made with ``manual_ack`` acknowledges the server's QoS
1 messages only when the test says so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.wait import wait_until

TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"


@dataclass(frozen=True)
class Tls:
    """paho's tls_set: the CA to trust, and the client's own certificate and key if any."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class MqttDevice:
    def __init__(self, port: int, token: str, *, client_id: str = "",
                 clean_session: bool | None = None, host: str = "127.0.0.1",
                 tls: Tls | None = None, manual_ack: bool = False,
                 protocol: int = mqtt.MQTTv311, clean_start: bool = True,
                 session_expiry: int | None = None, receive_max: int | None = None,
                 max_packet_size: int | None = None) -> None:
        self.port = port
        self.host = host
        self.protocol = protocol
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.receive_max = receive_max
        self.max_packet_size = max_packet_size
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=protocol,
                                  reconnect_on_failure=False, manual_ack=manual_ack)
        self.client.username_pw_set(token)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca),
                                certfile=str(tls.cert) if tls.cert else None,
                                keyfile=str(tls.key) if tls.key else None)
        self.connack: Any = None
        self.connack_properties: Any = None  # MQTT 5: the CONNACK's properties
        self.reason_codes: dict[int, list[int]] = {}  # SUBACK codes as sent, by message id
        self.disconnect_reason: Any = None  # MQTT 5: the server's DISCONNECT reason code
        self.unsubscribe_codes: dict[int, list[int]] = {}  # MQTT 5: UNSUBACK codes by message id
        self.ack_codes: dict[int, int] = {}  # MQTT 5: the PUBACK's reason code by message id
        self.session_present: bool | None = None
        self.received: list[mqtt.MQTTMessage] = []  # what the server published, as paho got it
        self.acked: list[int] = []  # message ids, in the order their PUBACKs arrived
        self.granted: dict[int, list[int]] = {}  # SUBACK return codes by message id
        self.unsubscribed: set[int] = set()  # message ids of the UNSUBACKs that came
        self.messages: list[tuple[str, Any]] = []  # (topic, JSON body) the server published
        self.disconnected = threading.Event()
        self.on_ack: Callable[[int], None] | None = None  # called in paho's thread per PUBACK
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message

    def connect(self, *, timeout: float = 10.0) -> Any:
        """Connect and wait for CONNACK (or the connection's end): paho's reason code."""
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                properties.SessionExpiryInterval = self.session_expiry
            if self.receive_max is not None:
                properties.ReceiveMaximum = self.receive_max
            if self.max_packet_size is not None:
                properties.MaximumPacketSize = self.max_packet_size
            self.client.connect(self.host, self.port, keepalive=30, clean_start=self.clean_start,
                                properties=properties)
        else:
            self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None or self.disconnected.is_set(),
                   timeout=timeout, what="CONNACK")
        return self.connack

    def publish(self, topic: str, body: Any, *, qos: int = 1) -> mqtt.MQTTMessageInfo:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.publish(topic, payload, qos=qos)

    def subscribe(self, topic: str, *, qos: int = 0, timeout: float = 10.0) -> list[int]:
        """Subscribe at ``qos`` and wait for SUBACK: its return codes (the QoS granted, or
        0x80 = refused)."""
        _, mid = self.client.subscribe(topic, qos=qos)
        return wait_until(lambda: self.granted.get(mid), timeout=timeout, what=f"SUBACK {topic}")

    def unsubscribe(self, topic: str, *, timeout: float = 10.0) -> None:
        """Unsubscribe and wait for UNSUBACK."""
        _, mid = self.client.unsubscribe(topic)
        wait_until(lambda: mid in self.unsubscribed, timeout=timeout, what=f"UNSUBACK {topic}")

    def wait_message(self, topic: str, *, timeout: float = 10.0) -> Any:
        """The body of the first message the server published on ``topic``."""
        def found() -> tuple[Any] | None:
            with self._lock:
                return next(((body,) for t, body in self.messages if t == topic), None)
        return wait_until(found, timeout=timeout, what=f"a message on {topic}")[0]

    def received_on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.received if m.topic == topic]

    def acked_ids(self) -> list[int]:
        with self._lock:
            return list(self.acked)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # paho's network thread
    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack_properties = properties
        self.session_present = bool(flags.session_present)
        self.connack = reason

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.ack_codes[mid] = int(reason.value)
        if self.on_ack is not None:
            self.on_ack(mid)
        with self._lock:
            self.acked.append(mid)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        self.reason_codes[mid] = [int(c.value) for c in codes]
        self.granted[mid] = [int(c.value) if c.value < 0x80 else 0x80 for c in codes]

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        self.unsubscribe_codes[mid] = [int(c.value) for c in codes]
        self.unsubscribed.add(mid)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.received.append(msg)
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()
