"""A ThingsBoard gateway on a real MQTT 3.1.1 client (paho-mqtt): a device whose connection
speaks for other devices on the ``v1/gateway/...`` topics. On top of MqttDevice (CONNACK,
PUBACKs, SUBACK codes, what the server published, a closed connection): publish and wait for
the PUBACK, and wait for the n-th message on a topic that matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.helpers.mqtt_device import MqttDevice
from tests.helpers.wait import wait_until

CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
ATTRIBUTES_REQUEST = "v1/gateway/attributes/request"
ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
RPC = "v1/gateway/rpc"

DEADLINE_S = 10.0


class MqttGateway(MqttDevice):
    def __enter__(self) -> MqttGateway:
        return self

    def send(self, topic: str, body: Any, *, timeout: float = DEADLINE_S) -> int:
        """Publish at QoS 1 and wait for its PUBACK; its message id. AssertionError when the
        server closed the connection instead."""
        mid = self.publish(topic, body).mid
        wait_until(lambda: mid in self.acked_ids() or self.disconnected.is_set(),
                   timeout=timeout, what=f"PUBACK of {topic}")
        assert mid in self.acked_ids(), f"{topic}: connection closed without a PUBACK"
        return mid

    def refused(self, topic: str, body: Any, *, timeout: float = DEADLINE_S) -> int:
        """Publish at QoS 1 and wait for the server to close the connection; its message id
        (AssertionError when it was acknowledged instead)."""
        mid = self.publish(topic, body).mid
        wait_until(self.disconnected.is_set, timeout=timeout, what=f"connection closed on {topic}")
        assert mid not in self.acked_ids(), f"{topic}: acknowledged, then closed"
        return mid

    def bodies(self, topic: str) -> list[Any]:
        with self._lock:
            return [body for t, body in self.messages if t == topic]

    def wait_for(self, topic: str, match: Callable[[Any], bool] = lambda _b: True, *,
                 timeout: float = DEADLINE_S) -> Any:
        """The first message on ``topic`` that ``match``es."""
        def found() -> list[Any]:
            return [b for b in self.bodies(topic) if match(b)][:1]
        return wait_until(found, timeout=timeout, what=f"a matching message on {topic}",
                          show=lambda: self.bodies(topic))[0]
