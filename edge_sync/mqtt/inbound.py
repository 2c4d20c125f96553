"""What a device's PUBLISH asks for, handed to the device service: telemetry and client
attributes (their commit is the future returned; or parsed here, and sent by the connection
with the other publishes of the same read burst as one command: mqtt/burst.py), RPC answers
(any body: one that is not JSON is carried as its text, as ThingsBoard's
JsonMqttAdaptor.processToDeviceRpcResponseMsg takes it; an answer nobody awaits still counts
as done: a resend could not help), attribute requests
(answered on the response topic of the same id once read), client-side RPC requests (answered
at once: api/client_rpc.py), the gateway API (mqtt/gateway.py), and topics outside the API
(acknowledged and dropped as ThingsBoard does, counted, one WARNING per topic and connection up
to mqtt/dropped.py's limit; the line names what a topic ThingsBoard serves and the edge does
not is: claiming, PROTOBUF payloads, firmware). A v2 topic is served as its v1 form, and its
answers go on the v2 response topics (mqtt/topics.py). The connection decides what the outcome
means on the wire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from loguru import logger

from edge_sync.api import client_rpc
from edge_sync.api.attribute_read import read_attributes
from edge_sync.api.device_service import DeviceService
from edge_sync.api.payloads import Entry, Values, parse_keys, parse_request_id
from edge_sync.common.json_body import parse_json, parse_values_json
from edge_sync.devices.rpc import answer_of
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest
from edge_sync.mqtt.dropped import TOPIC_KEY_CHARS, DroppedTopics, Sighting
from edge_sync.mqtt.gateway import Gateway
from edge_sync.mqtt.topics import Form, Publish, classify, not_served
from edge_sync.storage.records import Device

__all__ = ["Inbound", "attribute_values", "telemetry_entries"]

_log = logger.bind(component="mqtt")

Send = Callable[[str, bytes], None]


class Inbound:
    """The publishes of one authenticated device's connection; the server's loop thread."""

    def __init__(self, service: DeviceService, device: Device, token: str,
                 gateway: Callable[[], Gateway], send: Send, *,
                 link_connected: Callable[[], bool] | None,
                 polls: set[LongPoll], read_timeout_s: float, dropped: DroppedTopics,
                 session_limits: dict[str, Any]) -> None:
        self._service = service
        self._device = device
        self._token = token
        self._gateway = gateway  # made on first use
        self._send = send
        self._link_connected = link_connected
        self._polls = polls
        self._read_timeout = read_timeout_s
        self._log = _log.bind(device=str(device.id))
        self._dropped = dropped  # publishes on topics outside the device API
        self._requests: set[asyncio.Task[None]] = set()  # attribute requests being answered
        self._session_limits = session_limits  # the answer to getSessionLimits
        self._client_rpc_logged = False  # a client-side RPC not served: logged once

    def accept(self, topic: str, data: bytes) -> Future[Any] | None:
        """Take a publish: the future of the commit that holds it, None when there is nothing
        to wait for. BadRequest: invalid (the connection closes); any other exception: not
        accepted. Every publish checks the connection's access token first (Unauthorized: the
        token was changed or removed by the cloud, or the device deleted, since the CONNECT):
        the registry closes such a connection once the change commits (mqtt/registry.py), and
        this check refuses what comes before it does."""
        kind, request_id, form = classify(topic)
        if kind is Publish.TELEMETRY:
            return self._service.post_telemetry(self._token, parse_values_json(data),
                                                transport="mqtt")
        if kind is Publish.ATTRIBUTES:
            return self._service.post_attributes(self._token, parse_values_json(data),
                                                 transport="mqtt")
        if kind is not Publish.RPC_RESPONSE:  # the device service checks that one's
            self._service.authenticate(self._token)
        if kind is Publish.GATEWAY:
            return self._gateway().publish(topic, data)
        if kind is Publish.RPC_RESPONSE:  # any body: one that is not JSON goes as its text
            return self._service.post_rpc_response(self._token, parse_request_id(request_id),
                                                   answer_of(data))
        if kind is Publish.ATTRIBUTES_REQUEST:
            self._attributes_request(request_id, form, parse_json(data))
            return None
        if kind is Publish.CLIENT_RPC:
            self._client_rpc(parse_request_id(request_id), form, parse_json(data))
            return None
        sighting = self._dropped.drop(topic)
        if sighting is Sighting.NEW:
            what = not_served(topic)
            log = self._log.bind(topic=topic[:TOPIC_KEY_CHARS])
            if what is None:
                log.warning("publish to a topic outside the device API acknowledged and dropped")
            else:
                log.warning("publish on a topic of {}, which the edge does not serve, "
                            "acknowledged and dropped", what)
        elif sighting is Sighting.LIMIT:
            self._log.warning("device published on more than {} topics outside the device API: "
                              "further such topics are dropped unlogged", len(self._dropped))
        return None

    def close(self) -> None:
        for request in list(self._requests):
            request.cancel()

    def _client_rpc(self, request_id: int, form: Form, body: Any) -> None:
        """The device's own RPC request, answered at once on the response topic of its form
        (api/client_rpc.py): getSessionLimits with the edge's limits, as ThingsBoard's
        MqttTransportHandler.onGetSessionLimitsRpc answers it; any other method with
        ``{"error": ...}`` (logged at WARNING once per connection)."""
        method = client_rpc.method_of(body)
        if method == client_rpc.SESSION_LIMITS:
            answer: Any = self._session_limits
        else:
            answer = client_rpc.not_served()
            level = "DEBUG" if self._client_rpc_logged else "WARNING"
            self._client_rpc_logged = True
            self._log.bind(rpc_id=request_id).log(
                level, "client-side RPC {!r} of device {} answered with an error: {}",
                method[:64], self._device.name, client_rpc.NOT_SERVED)
        self._send(f"{form.rpc_response_prefix}{request_id}",
                   json.dumps(answer, separators=(",", ":")).encode())

    def _attributes_request(self, request_id: str, form: Form, body: Any) -> None:
        """Answered on the response topic of the same id and form once read (through the
        cloud for shared keys the edge does not hold, as the HTTP API's GET attributes). A
        request that cannot be answered (a read or a send that fails) is logged with the
        device and the request id, and left unanswered, as the gateway's
        (mqtt/gateway.py)."""
        if not isinstance(body, dict):
            raise BadRequest("an attributes request is a JSON object")
        keys = {}
        for name, field in (("clientKeys", "client_keys"), ("sharedKeys", "shared_keys")):
            raw = body.get(name)
            if raw is not None and not isinstance(raw, str):
                raise BadRequest(f"{name} must be a comma-separated string")
            keys[field] = parse_keys(raw)
        device_id = self._device.id

        async def answer() -> None:
            try:
                result, missing = await read_attributes(
                    self._service, device_id, **keys, link_connected=self._link_connected,
                    timeout_s=self._read_timeout, polls=self._polls)
                if missing:
                    self._log.bind(missing=len(missing)).debug(
                        "attributes answered without {} shared keys the edge does not hold",
                        len(missing))
                self._send(f"{form.attributes_response_prefix}{request_id}",
                           json.dumps(result, separators=(",", ":")).encode())
            except Exception as exc:  # as the gateway's: logged, left unanswered
                self._log.bind(request_id=request_id[:64]).warning(
                    "attribute request {} of device {} not answered: {}: {}", request_id[:64],
                    self._device.name, type(exc).__name__, exc)

        task = asyncio.create_task(answer())
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)


def telemetry_entries(service: DeviceService, device: Device, data: bytes) -> tuple[Entry, ...]:
    """A telemetry body's entries, as the device service reads them (a body without ``ts``
    stamped with the service's clock now, null values skipped and reported); BadRequest:
    invalid."""
    return service.telemetry_entries(device, parse_values_json(data), "mqtt")


def attribute_values(service: DeviceService, device: Device, data: bytes) -> Values:
    """A client attributes body's values, as the device service reads them; BadRequest:
    invalid."""
    return service.attribute_values(device, parse_values_json(data), "mqtt")
