"""ThingsBoard's device MQTT topics that the edge serves (names as in ThingsBoard's
MqttTopics), and how a published topic maps onto the device API."""

from __future__ import annotations

import enum

TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"
"""Published by the device: client attributes; subscribed: shared attribute updates."""
ATTRIBUTES_REQUEST_PREFIX = "v1/devices/me/attributes/request/"
ATTRIBUTES_RESPONSE_PREFIX = "v1/devices/me/attributes/response/"
ATTRIBUTES_RESPONSE_FILTER = ATTRIBUTES_RESPONSE_PREFIX + "+"
RPC_REQUEST_PREFIX = "v1/devices/me/rpc/request/"
RPC_REQUEST_FILTER = RPC_REQUEST_PREFIX + "+"
RPC_RESPONSE_PREFIX = "v1/devices/me/rpc/response/"
GATEWAY_PREFIX = "v1/gateway/"
"""ThingsBoard's gateway API (mqtt/gateway.py): one connection speaking for many devices."""


class Publish(enum.Enum):
    """What a device's PUBLISH asks for."""

    TELEMETRY = "telemetry"
    ATTRIBUTES = "attributes"
    ATTRIBUTES_REQUEST = "attributes request"
    RPC_RESPONSE = "rpc response"
    GATEWAY = "gateway"
    """Under ``v1/gateway/``: served by mqtt/gateway.py."""
    OTHER = "other"
    """A topic outside what the edge serves: acknowledged and dropped, as ThingsBoard does."""


def classify(topic: str) -> tuple[Publish, str]:
    """The kind of publish, and the request id of the topic (empty when it has none)."""
    if topic == TELEMETRY:
        return Publish.TELEMETRY, ""
    if topic == ATTRIBUTES:
        return Publish.ATTRIBUTES, ""
    if topic.startswith(RPC_RESPONSE_PREFIX):
        return Publish.RPC_RESPONSE, topic[len(RPC_RESPONSE_PREFIX):]
    if topic.startswith(GATEWAY_PREFIX):
        return Publish.GATEWAY, ""
    if topic.startswith(ATTRIBUTES_REQUEST_PREFIX):
        return Publish.ATTRIBUTES_REQUEST, topic[len(ATTRIBUTES_REQUEST_PREFIX):]
    return Publish.OTHER, ""
