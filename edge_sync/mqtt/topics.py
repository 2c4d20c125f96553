"""ThingsBoard's device MQTT topics that the edge serves (names as in ThingsBoard's
MqttTopics), how a published topic maps onto the device API, and MQTT's topic filter matching
(which subscription an outgoing message falls under).

Two forms of the same API (ThingsBoard's TopicType): the v1 topics (``v1/devices/me/...``)
and the short v2 ones (``v2/t``, ``v2/a``, ``v2/a/req/{id}``, ``v2/r/res/{id}``, ...), with
their explicit JSON variants (``v2/t/j``, ``v2/a/req/j/{id}``, ...). A v2 publish is served as
its v1 form; what the edge sends back (an attribute response, the answer to a client-side RPC)
goes on the response topic of the form the request came in, and what a subscription gets on
the topics of the form subscribed to last (MqttTransportHandler's attrReqTopicType,
toServerRpcSubTopicType, attrSubTopicType, rpcSubTopicType). The PROTOBUF variants (``.../p``)
and custom device-profile topics are not served (``not_served``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"
"""Published by the device: client attributes; subscribed: shared attribute updates."""
ATTRIBUTES_REQUEST_PREFIX = "v1/devices/me/attributes/request/"
ATTRIBUTES_RESPONSE_PREFIX = "v1/devices/me/attributes/response/"
ATTRIBUTES_RESPONSE_FILTER = ATTRIBUTES_RESPONSE_PREFIX + "+"
RPC_REQUEST_PREFIX = "v1/devices/me/rpc/request/"
RPC_REQUEST_FILTER = RPC_REQUEST_PREFIX + "+"
RPC_RESPONSE_PREFIX = "v1/devices/me/rpc/response/"
RPC_RESPONSE_FILTER = RPC_RESPONSE_PREFIX + "+"
CLAIM = "v1/devices/me/claim"
GATEWAY_PREFIX = "v1/gateway/"
"""ThingsBoard's gateway API (mqtt/gateway.py): one connection speaking for many devices."""
PROVISION_REQUEST = "/provision/request"
PROVISION_RESPONSE = "/provision/response"
"""A provision-only session's topics (mqtt/provision.py)."""
V2_PREFIX = "v2/"


@dataclass(frozen=True, slots=True)
class Form:
    """The topics the edge publishes on for one form of the API (ThingsBoard's TopicType)."""

    name: str
    attributes: str
    """Shared attribute updates."""
    attributes_response_prefix: str
    rpc_request_prefix: str
    """Server-side RPC requests (the request id follows)."""
    rpc_response_prefix: str
    """Answers to the device's client-side RPC requests (the request id follows)."""


V1 = Form("v1", ATTRIBUTES, ATTRIBUTES_RESPONSE_PREFIX, RPC_REQUEST_PREFIX, RPC_RESPONSE_PREFIX)
V2 = Form("v2", "v2/a", "v2/a/res/", "v2/r/req/", "v2/r/res/")
V2_JSON = Form("v2 JSON", "v2/a/j", "v2/a/res/j/", "v2/r/req/j/", "v2/r/res/j/")

RPC_SUBSCRIPTIONS = {form.rpc_request_prefix + "+": form for form in (V1, V2, V2_JSON)}
"""Server-side RPC requests: the filter subscribed to, and the form they are then sent in."""
ATTRIBUTE_SUBSCRIPTIONS = {form.attributes: form for form in (V1, V2, V2_JSON)}
"""Shared attribute updates, likewise."""
ANSWER_SUBSCRIPTIONS = frozenset(
    prefix + "+" for form in (V1, V2, V2_JSON)
    for prefix in (form.attributes_response_prefix, form.rpc_response_prefix))
"""Granted as ThingsBoard grants them (processSubscribe): attribute responses and the answers
to client-side RPC are published whether subscribed or not, at the QoS granted when
subscribed."""


class Publish(enum.Enum):
    """What a device's PUBLISH asks for."""

    TELEMETRY = "telemetry"
    ATTRIBUTES = "attributes"
    ATTRIBUTES_REQUEST = "attributes request"
    RPC_RESPONSE = "rpc response"
    CLIENT_RPC = "client-side rpc request"
    """The device's own RPC request (mqtt/client_rpc.py), answered on the form's response
    topic."""
    GATEWAY = "gateway"
    """Under ``v1/gateway/``: served by mqtt/gateway.py."""
    OTHER = "other"
    """A topic outside what the edge serves: acknowledged and dropped, as ThingsBoard does."""


Route = tuple[Publish, str, Form]
"""The kind of publish, the request id of its topic (empty when it has none), and the form it
came in (where an answer to it goes)."""

_TELEMETRY: Route = (Publish.TELEMETRY, "", V1)
_ATTRIBUTES: Route = (Publish.ATTRIBUTES, "", V1)
_GATEWAY: Route = (Publish.GATEWAY, "", V1)
_OTHER: Route = (Publish.OTHER, "", V1)
_V2_EXACT: dict[str, Route] = {
    "v2/t": (Publish.TELEMETRY, "", V2), "v2/t/j": (Publish.TELEMETRY, "", V2_JSON),
    "v2/a": (Publish.ATTRIBUTES, "", V2), "v2/a/j": (Publish.ATTRIBUTES, "", V2_JSON)}
_V2_PREFIXES: tuple[tuple[str, Publish, Form], ...] = (  # the JSON variants before their base
    ("v2/r/res/j/", Publish.RPC_RESPONSE, V2_JSON), ("v2/r/res/p/", Publish.OTHER, V2),
    ("v2/r/res/", Publish.RPC_RESPONSE, V2),
    ("v2/a/req/j/", Publish.ATTRIBUTES_REQUEST, V2_JSON), ("v2/a/req/p/", Publish.OTHER, V2),
    ("v2/a/req/", Publish.ATTRIBUTES_REQUEST, V2),
    ("v2/r/req/j/", Publish.CLIENT_RPC, V2_JSON), ("v2/r/req/p/", Publish.OTHER, V2),
    ("v2/r/req/", Publish.CLIENT_RPC, V2))


def classify(topic: str) -> Route:
    """What a publish on ``topic`` asks for (ThingsBoard's MqttTransportHandler
    .processDevicePublish, for a device whose profile names no custom topics)."""
    if topic == TELEMETRY:
        return _TELEMETRY
    if topic == ATTRIBUTES:
        return _ATTRIBUTES
    if topic.startswith(RPC_RESPONSE_PREFIX):
        return Publish.RPC_RESPONSE, topic[len(RPC_RESPONSE_PREFIX):], V1
    if topic.startswith(GATEWAY_PREFIX):
        return _GATEWAY
    if topic.startswith(ATTRIBUTES_REQUEST_PREFIX):
        return Publish.ATTRIBUTES_REQUEST, topic[len(ATTRIBUTES_REQUEST_PREFIX):], V1
    if topic.startswith(RPC_REQUEST_PREFIX):
        return Publish.CLIENT_RPC, topic[len(RPC_REQUEST_PREFIX):], V1
    if topic.startswith(V2_PREFIX):
        route = _V2_EXACT.get(topic)
        if route is not None:
            return route
        for prefix, kind, form in _V2_PREFIXES:
            if topic.startswith(prefix):
                return (kind, topic[len(prefix):], form) if kind is not Publish.OTHER else _OTHER
    return _OTHER


def not_served(topic: str) -> str | None:
    """For a topic ThingsBoard serves and the edge does not (acknowledged and dropped): what
    it is, for the log line; None for a topic outside ThingsBoard's device API too."""
    if topic == CLAIM:
        return "device claiming"
    if topic in ("v2/t/p", "v2/a/p") or any(
            topic.startswith(p) for p in ("v2/r/res/p/", "v2/a/req/p/", "v2/r/req/p/")):
        return "PROTOBUF payloads"
    if topic.startswith(("v2/fw/", "v2/sw/")):
        return "firmware and software updates"
    return None


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
