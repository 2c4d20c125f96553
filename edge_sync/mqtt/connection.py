"""One device's MQTT 3.1.1 connection, on the MQTT server's loop: CONNECT with the access token
as username; PUBLISH of telemetry, client attributes, RPC answers and attribute requests;
SUBSCRIBE / UNSUBSCRIBE (served by mqtt/subscriptions.py); PINGREQ, DISCONNECT.

The delivery contract of the HTTP API holds: a QoS 1 PUBLISH is acknowledged (PUBACK) only once
its events are committed, and PUBACKs leave in the order the PUBLISHes came (MQTT 3.1.1 §4.6),
so one slow commit holds back the acknowledgements behind it, never the reading. A QoS 0
PUBLISH joins the same group commit and is not waited for. What ThingsBoard does is followed:
an unknown token gets CONNACK 5 (not authorized); a body that cannot be parsed closes the
connection (the PUBACKs of the publishes before it are sent first); a topic outside the API is
acknowledged and dropped; a publish whose commit fails (storage full, a restarting component,
no confirmation within the commit timeout) closes the connection without its PUBACK. A packet
larger than ``max_message_bytes`` closes the connection before its body is read. Packets are
decoded and encoded by amqtt's codec; nothing here parses bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from amqtt.adapters import StreamReaderAdapter
from amqtt.errors import AMQTTError
from amqtt.mqtt import packet_dict
from amqtt.mqtt.connack import (
    CONNECTION_ACCEPTED,
    NOT_AUTHORIZED,
    UNACCEPTABLE_PROTOCOL_VERSION,
    ConnackPacket,
)
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.pingresp import PingRespPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.mqtt.unsuback import UnsubackPacket
from amqtt.mqtt.unsubscribe import UnsubscribePacket
from loguru import logger

from edge_sync.api.attribute_read import read_attributes
from edge_sync.api.device_service import DeviceService
from edge_sync.api.payloads import parse_keys, parse_request_id
from edge_sync.common.json_body import parse_json
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest, Conflict, NotFound, Unauthorized
from edge_sync.mqtt import topics
from edge_sync.mqtt.gateway import Gateway
from edge_sync.mqtt.subscriptions import Subscriptions
from edge_sync.mqtt.topics import Publish, classify
from edge_sync.storage.records import Device

_log = logger.bind(component="mqtt")

PROTOCOL_LEVELS = (3, 4)
"""MQTT 3.1 and 3.1.1; any other level is refused with CONNACK 1."""
SUBSCRIBE_FAILURE = 0x80


class _Close(Exception):
    """End the connection: ``graceful`` sends the PUBACKs already due first."""

    def __init__(self, reason: str, *, graceful: bool = False) -> None:
        super().__init__(reason)
        self.graceful = graceful


class MqttConnection:
    """The server's loop thread only."""

    def __init__(
        self,
        service: DeviceService,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_message_bytes: int,
        commit_timeout_s: float,
        connect_timeout_s: float,
        link_connected: Callable[[], bool] | None = None,
        polls: set[LongPoll] | None = None,
    ) -> None:
        self._service = service
        self._link_connected = link_connected  # None: no cloud link (attribute requests)
        self._polls: set[LongPoll] = polls if polls is not None else set()
        self._reader = StreamReaderAdapter(reader)
        self._writer = writer
        self._max = max_message_bytes
        self._commit_timeout = commit_timeout_s
        self._connect_timeout = connect_timeout_s
        peer = writer.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._log = _log.bind(peer=self._peer)
        self._token = ""
        self._device: Device | None = None
        self._acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._ack_task: asyncio.Task[None] | None = None
        self._other_topics: set[str] = set()
        self._subscriptions: Subscriptions | None = None
        self._gateway: Gateway | None = None
        self._requests: set[asyncio.Task[None]] = set()  # attribute requests being answered

    async def run(self) -> None:
        graceful = False
        try:
            await self._serve()
        except _Close as close:
            graceful = close.graceful
            self._log.bind(device=self._device_id()).warning("closing the connection: {}", close)
        except (asyncio.IncompleteReadError, ConnectionError, AMQTTError, TimeoutError) as exc:
            self._log.bind(device=self._device_id()).debug("connection ended: {!r}", exc)
        finally:
            await self._finish(graceful)

    # -- reading -------------------------------------------------------------------------------

    async def _serve(self) -> None:
        connect = await asyncio.wait_for(self._read_connect(), self._connect_timeout)
        if connect is None:
            return
        keep_alive = self._connect(connect)
        self._ack_task = asyncio.create_task(self._ack_in_order())
        idle = keep_alive * 1.5 if keep_alive else None
        while True:
            header = await asyncio.wait_for(self._header(), idle)
            if header is None:
                return
            kind = header.packet_type
            if kind == PUBLISH:
                publish = await PublishPacket.from_stream(self._reader, fixed_header=header)
                self._publish(publish)
            elif kind == PINGREQ:
                self._writer.write(PingRespPacket.build().to_bytes())
            elif kind == DISCONNECT:
                return
            elif kind == SUBSCRIBE:
                subscribe = await SubscribePacket.from_stream(self._reader, fixed_header=header)
                self._subscribe(subscribe)
            elif kind == UNSUBSCRIBE:
                packet = await UnsubscribePacket.from_stream(self._reader, fixed_header=header)
                self._unsubscribe(packet)
            elif kind in packet_dict and kind != CONNECT:
                await packet_dict[kind].from_stream(self._reader, fixed_header=header)
            else:
                raise _Close(f"unexpected packet of type {kind}")
            await self._writer.drain()

    async def _read_connect(self) -> ConnectPacket | None:
        """The first packet, which must be CONNECT (None: closed before it)."""
        header = await self._header()
        if header is None:
            return None
        if header.packet_type != CONNECT:
            raise _Close(f"first packet is of type {header.packet_type}, not CONNECT")
        return await ConnectPacket.from_stream(self._reader, fixed_header=header)

    async def _header(self) -> MQTTFixedHeader | None:
        header = await MQTTFixedHeader.from_stream(self._reader)
        if header is not None and header.remaining_length > self._max:
            raise _Close(f"packet of {header.remaining_length} bytes is larger than the limit "
                         f"of {self._max} bytes (mqtt.max_message_bytes)")
        return header

    def _connect(self, connect: ConnectPacket) -> int:
        """Authenticate the token of CONNECT and answer CONNACK; the keep-alive in seconds."""
        if connect.proto_level not in PROTOCOL_LEVELS:
            self._send(ConnackPacket.build(0, UNACCEPTABLE_PROTOCOL_VERSION))
            raise _Close(f"protocol level {connect.proto_level} refused (CONNACK 1)")
        token = connect.username or ""
        try:
            device = self._service.authenticate(token) if token else None
        except Unauthorized:
            device = None
        if device is None:
            self._send(ConnackPacket.build(0, NOT_AUTHORIZED))
            what = "unknown access token" if token else "no access token (username)"
            raise _Close(f"{what}: refused with CONNACK 5")
        self._token, self._device = token, device
        self._subscriptions = Subscriptions(self._service, device.id, self._publish_to_device)
        self._gateway = Gateway(self._service, device, self._publish_to_device,
                                link_connected=self._link_connected, polls=self._polls,
                                commit_timeout_s=self._commit_timeout)
        self._send(ConnackPacket.build(0, CONNECTION_ACCEPTED))
        self._log.bind(device=str(device.id)).info("device {} connected over MQTT", device.name)
        return int(connect.keep_alive)

    def _publish(self, publish: PublishPacket) -> None:
        topic = publish.topic_name or ""
        qos = publish.qos or 0
        if qos > 1:
            raise _Close(f"QoS {qos} on {topic} is not served", graceful=True)
        kind, request_id = classify(topic)
        if kind is Publish.GATEWAY:
            self._gateway_publish(publish, topic, qos)
            return
        if kind is Publish.OTHER:
            if topic not in self._other_topics:
                self._other_topics.add(topic)
                self._log.bind(device=self._device_id(), topic=topic[:128]).warning(
                    "publish to a topic outside the device API acknowledged and dropped")
            if qos == 1:
                self._ack_now(publish.packet_id)
            return
        try:
            body = parse_json(publish.data or b"")
            if kind is Publish.ATTRIBUTES_REQUEST:
                self._attributes_request(request_id, body)
                committed: Future[Any] | None = None
            elif kind is Publish.RPC_RESPONSE:
                committed = _answered(self._service.post_rpc_response(
                    self._token, parse_request_id(request_id), body))
            elif kind is Publish.TELEMETRY:
                committed = self._service.post_telemetry(self._token, body)
            else:
                committed = self._service.post_attributes(self._token, body)
        except BadRequest as exc:
            raise _Close(f"invalid {kind.value} on {topic}: {exc}", graceful=True) from exc
        except Exception as exc:
            raise _Close(f"{kind.value} on {topic} not accepted: {exc}", graceful=True) from exc
        if committed is None:
            if qos == 1:
                self._ack_now(publish.packet_id)
        elif qos == 1:
            assert publish.packet_id is not None  # the codec reads it for QoS 1
            self._acks.put_nowait((publish.packet_id, asyncio.wrap_future(committed)))
        else:
            committed.add_done_callback(self._qos0_done(topic))

    def _gateway_publish(self, publish: PublishPacket, topic: str, qos: int) -> None:
        """A publish on ThingsBoard's gateway API (mqtt/gateway.py), acknowledged as any other:
        after the commit of what it holds."""
        assert self._gateway is not None
        try:
            committed = self._gateway.publish(topic, publish.data or b"")
        except BadRequest as exc:
            raise _Close(f"invalid gateway publish on {topic}: {exc}", graceful=True) from exc
        except Exception as exc:
            raise _Close(f"gateway publish on {topic} not accepted: {exc}",
                         graceful=True) from exc
        if qos == 0:
            if committed is not None:
                committed.add_done_callback(self._qos0_done(topic))
        elif committed is None:
            self._ack_now(publish.packet_id)
        else:
            assert publish.packet_id is not None
            self._acks.put_nowait((publish.packet_id, asyncio.wrap_future(committed)))

    def _attributes_request(self, request_id: str, body: Any) -> None:
        """Answered on the response topic of the same id once read (through the cloud for
        shared keys the edge does not hold, as the HTTP API's GET attributes)."""
        if not isinstance(body, dict):
            raise BadRequest("an attributes request is a JSON object")
        keys = {}
        for name, field in (("clientKeys", "client_keys"), ("sharedKeys", "shared_keys")):
            raw = body.get(name)
            if raw is not None and not isinstance(raw, str):
                raise BadRequest(f"{name} must be a comma-separated string")
            keys[field] = parse_keys(raw)
        device = self._device
        assert device is not None

        async def answer() -> None:
            result, missing = await read_attributes(
                self._service, device.id, **keys, link_connected=self._link_connected,
                timeout_s=self._commit_timeout, polls=self._polls)
            if missing:
                self._log.bind(device=str(device.id), missing=len(missing)).debug(
                    "attributes answered without {} shared keys the edge does not hold",
                    len(missing))
            self._publish_to_device(f"{topics.ATTRIBUTES_RESPONSE_PREFIX}{request_id}",
                                    json.dumps(result, separators=(",", ":")).encode())

        task = asyncio.create_task(answer())
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def _subscribe(self, subscribe: SubscribePacket) -> None:
        """Granted QoS 0 for the topics the edge serves (it publishes at QoS 0), 0x80 else."""
        topics_ = subscribe.payload.topics if subscribe.payload is not None else []
        packet_id = subscribe.variable_header.packet_id if subscribe.variable_header else 0
        assert self._subscriptions is not None
        assert self._gateway is not None
        codes = []
        for topic_filter, _qos in topics_:
            if topic_filter.startswith(topics.GATEWAY_PREFIX):
                served = self._gateway.subscribe(topic_filter)
            else:
                served = self._subscriptions.subscribe(topic_filter)
            if served:
                codes.append(0)
            else:
                codes.append(SUBSCRIBE_FAILURE)
                self._log.bind(device=self._device_id(), topic=str(topic_filter)[:128]).warning(
                    "subscription to a topic the edge does not serve refused")
        self._send(SubackPacket.build(packet_id, codes))

    def _unsubscribe(self, packet: UnsubscribePacket) -> None:
        assert self._subscriptions is not None
        assert self._gateway is not None
        for topic_filter in packet.payload.topics if packet.payload is not None else []:
            if topic_filter.startswith(topics.GATEWAY_PREFIX):
                self._gateway.unsubscribe(topic_filter)
            else:
                self._subscriptions.unsubscribe(topic_filter)
        self._send(UnsubackPacket.build(packet.variable_header.packet_id))

    def _publish_to_device(self, topic: str, payload: bytes) -> None:
        self._send(PublishPacket.build(topic, payload, None, False, 0, False))

    # -- acknowledging -------------------------------------------------------------------------

    def _ack_now(self, packet_id: int | None) -> None:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        self._acks.put_nowait((packet_id or 0, done))

    async def _ack_in_order(self) -> None:
        """PUBACK each QoS 1 publish once committed, in arrival order; a failure closes the
        connection with nothing after it acknowledged. ``None`` in the queue: all due sent."""
        while True:
            item = await self._acks.get()
            if item is None:
                return
            packet_id, committed = item
            try:
                await asyncio.wait_for(committed, self._commit_timeout)
            except Exception as exc:
                message = ("not confirmed in time" if isinstance(exc, TimeoutError)
                           else str(exc) or type(exc).__name__)
                self._log.bind(device=self._device_id()).warning(
                    "publish {} not committed, closing without its PUBACK: {}", packet_id, message)
                self._writer.close()
                return
            self._send(PubackPacket.build(packet_id))

    def _qos0_done(self, topic: str) -> Any:
        device = self._device_id()

        def done(future: Future[range]) -> None:  # the committing actor's thread
            exc = future.exception()
            if exc is not None:
                _log.bind(device=device, topic=topic).warning(
                    "QoS 0 publish not committed: {}", exc)

        return done

    # -- the end -------------------------------------------------------------------------------

    async def _finish(self, graceful: bool) -> None:
        if self._subscriptions is not None:
            await self._subscriptions.close()
        if self._gateway is not None:
            await self._gateway.close()
        for request in list(self._requests):
            request.cancel()
        task = self._ack_task
        if task is not None:
            if graceful:
                self._acks.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, self._commit_timeout)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        if self._device is not None:
            self._log.bind(device=str(self._device.id)).info(
                "device {} disconnected from MQTT", self._device.name)

    def _send(self, packet: Any) -> None:
        if not self._writer.is_closing():
            self._writer.write(packet.to_bytes())

    def _device_id(self) -> str:
        return str(self._device.id) if self._device is not None else "unknown"


def _answered(committed: Future[range]) -> Future[Any]:
    """An RPC answer's commit, where an answer nobody awaits (unknown id, expired, answered
    already: nothing queued) still gets its PUBACK: a resend could not help. Logged."""
    out: Future[Any] = Future()

    def done(future: Future[range]) -> None:
        exc = future.exception()
        if isinstance(exc, NotFound | Conflict):
            _log.warning("RPC answer dropped: {}", exc)
            out.set_result(None)
        elif exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(future.result())

    committed.add_done_callback(done)
    return out
