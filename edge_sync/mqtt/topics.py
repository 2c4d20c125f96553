"""ThingsBoard's device MQTT topics that the edge serves (names as in ThingsBoard's
MqttTopics), how a published topic maps onto the device API, and MQTT's topic filter matching
(which subscription an outgoing message falls under)."""

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


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` falls under ``topic_filter`` (MQTT 3.1.1 §4.7: ``+`` is one level,
    a trailing ``#`` any number of levels, the parent level included)."""
    if topic_filter == topic:
        return True
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return i == len(parts) - 1
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)
