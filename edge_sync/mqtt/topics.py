"""ThingsBoard's device MQTT topics that the edge serves (names as in ThingsBoard's
MqttTopics), and how a published topic maps onto the device API."""

from __future__ import annotations

import enum

TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"


class Publish(enum.Enum):
    """What a device's PUBLISH asks for."""

    TELEMETRY = "telemetry"
    ATTRIBUTES = "attributes"
    OTHER = "other"
    """A topic outside what the edge serves: acknowledged and dropped, as ThingsBoard does."""


def classify(topic: str) -> Publish:
    if topic == TELEMETRY:
        return Publish.TELEMETRY
    if topic == ATTRIBUTES:
        return Publish.ATTRIBUTES
    return Publish.OTHER
