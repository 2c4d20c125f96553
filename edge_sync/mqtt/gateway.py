"""ThingsBoard's MQTT gateway API (``v1/gateway/...``) on one MQTT connection: a device marked
as a gateway (``Device.gateway``, ThingsBoard's ``additionalInfo.gateway``) publishes and
subscribes for many devices, each named in the payload. docs/mqtt-gateway.md describes it for
users; the wire format is mqtt/gateway_payloads.py.

This module owns the gateway side of a connection: which sub-devices it has connected (by
``v1/gateway/connect`` or by naming them in data), their data handed to the device API, their
server-side RPC requests and shared attribute updates relayed to the gateway, and their
attribute requests answered. What it reuses rather than repeats:

- A name the edge does not know creates the device (DeviceService.get_or_create_device,
  shared by every connection, so a new device is created once). Its data goes to the same
  entity actor right after its creation, so the creation's events come first in the log.
  Every device's data carries RequireDevice (one key lookup in the commit's transaction): a
  creation that fails leaves no data of a device the edge does not have, and a device the
  cloud deleted while the gateway kept it connected takes no more data; it leaves the
  gateway, and its next data gets or creates it again (ThingsBoard forgets a deleted device's
  gateway session too).
- Per device, its entries of one message are one command, told in message order; a QoS 1
  publish is acknowledged once every device's events (and creations) are committed. Each
  device's command is its own write (behind the device's creation and earlier data, in its
  entity's order), so a publish failing for one device may have stored the others' data: the
  client's resend stores them again (at least once; docs/mqtt-gateway.md).
- RPC requests and shared attribute updates come from the device sessions exactly as for a
  device's own subscriptions: one mqtt/subscriptions.Subscriptions per sub-device, whose
  device-topic publishes are re-addressed to the gateway topics. Attribute requests are read
  as every transport reads them (api/attribute_read.py); RPC answers go through
  DeviceService.answer_rpc.

Learnt from ThingsBoard's MQTT transport (read, not copied): MqttTransportHandler (which
devices are gateways, the topics served, errors), session/AbstractGatewaySessionHandler and
GatewaySessionHandler (the per-device handling, get-or-create on first sight, the aggregate
PUBACK), session/AbstractGatewayDeviceSessionContext and adaptors/JsonMqttAdaptor (what is
published to the gateway), adaptor/JsonConverter (telemetry, attributes, the response shapes)
and DefaultTransportApiService (GetOrCreateDeviceFromGatewayRequestMsg).

The server's loop thread only, except the commit callbacks (the queue's thread), which only
log, settle futures and hand work to the loop (call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from loguru import logger

from edge_sync.api.attribute_read import read_attributes
from edge_sync.api.device_service import DeviceService, follower
from edge_sync.common.json_body import parse_json, parse_values_json
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest, NotFound, Unavailable
from edge_sync.mqtt import gateway_payloads as wire
from edge_sync.mqtt import topics
from edge_sync.mqtt.dropped import TOPIC_KEY_CHARS, DroppedTopics, Sighting
from edge_sync.mqtt.subscriptions import DRAIN_S, Subscriptions
from edge_sync.storage.entity_store import Revoked
from edge_sync.storage.records import Device

Send = Callable[[str, bytes], None]

_log = logger.bind(component="mqtt-gateway")

DEVICE_FILTERS = {wire.RPC: topics.RPC_REQUEST_FILTER, wire.ATTRIBUTES: topics.ATTRIBUTES}
"""The gateway subscriptions the edge serves, and the device subscription each stands for."""

MAX_SUB_DEVICES = 10_000
"""The most devices one gateway connection has connected at once (each holds its entry and,
once the gateway subscribed, a wait on its session per subscription). A publish naming a
device more is refused whole (the connection closes, a WARNING names the limit); a device
the gateway disconnects (v1/gateway/disconnect) makes room. docs/mqtt-gateway.md."""

@dataclass(slots=True)
class _SubDevice:
    device: Device
    creation: Future[range] | None  # while its creation is not known to have committed
    subscriptions: Subscriptions


class Gateway:
    """The gateway side of one MQTT connection; the server's loop thread only."""

    def __init__(
        self,
        service: DeviceService,
        device: Device,
        send: Send,
        *,
        link_connected: Callable[[], bool] | None,
        polls: set[LongPoll],
        commit_timeout_s: float,
        dropped: DroppedTopics,
    ) -> None:
        self._service = service
        self._loop = asyncio.get_running_loop()
        self._device = device
        self._send = send
        self._link_connected = link_connected
        self._polls = polls
        self._commit_timeout = commit_timeout_s
        self._children: dict[str, _SubDevice] = {}
        self._topics: set[str] = set()  # gateway subscriptions served (keys of DEVICE_FILTERS)
        self._answers: set[asyncio.Task[None]] = set()  # attribute requests being answered
        self._dropped = dropped  # publishes on gateway topics the edge does not serve
        self._log = _log.bind(gateway=str(device.id))
        if device.gateway:
            self._log.info("gateway {} connected: it serves the gateway API for up to {} "
                           "devices", device.name, MAX_SUB_DEVICES)
        self._handlers: dict[str, Callable[[Any], Future[Any] | None]] = {
            wire.CONNECT: self._on_connect,
            wire.DISCONNECT: self._on_disconnect,
            wire.TELEMETRY: self._on_telemetry,
            wire.ATTRIBUTES: self._on_attributes,
            wire.ATTRIBUTES_REQUEST: self._on_attribute_request,
            wire.RPC: self._on_rpc_reply,
        }

    # -- what the connection calls ---------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> Future[Any] | None:
        """Take a publish under ``v1/gateway/``: the future of its commit (None when there is
        nothing to wait for). BadRequest: refused (the connection closes, nothing of it
        taken)."""
        if not self._device.gateway:
            raise BadRequest(f"device {self._device.name!r} is not a gateway (its "
                             "additionalInfo.gateway is not true); nothing published under "
                             "v1/gateway/ is taken")
        handler = self._handlers.get(topic)
        if handler is None:  # ThingsBoard acknowledges it (TOPIC_NAME_INVALID) and drops it
            self._log_dropped(topic)
            return None
        values = topic == wire.TELEMETRY or topic == wire.ATTRIBUTES
        return handler(parse_values_json(payload) if values else parse_json(payload))

    def subscribe(self, topic_filter: str) -> bool:
        """Start serving ``topic_filter``; False when the edge does not serve it."""
        if not self._device.gateway:
            self._log.bind(topic=topic_filter[:128]).warning(
                "device {} is not a gateway: gateway subscription refused", self._device.name)
            return False
        if topic_filter == wire.ATTRIBUTES_RESPONSE:  # answers are always published
            return True
        device_filter = DEVICE_FILTERS.get(topic_filter)
        if device_filter is None:
            return False
        if topic_filter not in self._topics:
            self._topics.add(topic_filter)
            for sub in self._children.values():
                sub.subscriptions.subscribe(device_filter)
        return True

    def unsubscribe(self, topic_filter: str) -> None:
        device_filter = DEVICE_FILTERS.get(topic_filter)
        if device_filter is None or topic_filter not in self._topics:
            return
        self._topics.discard(topic_filter)
        for sub in self._children.values():
            sub.subscriptions.unsubscribe(device_filter)

    def forget(self, revoked: Revoked) -> None:
        """After a commit that changed or removed these devices' access tokens, or removed the
        devices: those connected through the gateway leave it, their waits on their sessions
        end (one INFO line each: the device and why), and the gateway's next data or connect
        naming one connects it again (gets it, or creates a device of that name if it was
        deleted). ThingsBoard closes every session of a device whose credentials change or
        that is deleted, the gateway's session of it included
        (AbstractGatewayDeviceSessionContext.onRemoteSessionCloseCommand and onDeviceDeleted
        -> AbstractGatewaySessionHandler.deregisterSession); the gateway's own connection
        stays (it authenticated with the gateway's token)."""
        for name, sub in list(self._children.items()):
            revocation = revoked.get(sub.device.id)
            if revocation is None:
                continue
            del self._children[name]
            self._retire(sub)
            self._log.bind(device=str(sub.device.id), reason=revocation.reason).info(
                "device {} disconnected from gateway {}: {}; the gateway's next data or "
                "connect for it connects it again", name, self._device.name, revocation.why)

    @property
    def results_pending(self) -> int:
        """What the sub-devices' sessions took for their subscriptions and have not handed
        over yet."""
        return sum(sub.subscriptions.pending for sub in list(self._children.values()))

    async def close(self, deadline: float | None = None) -> None:
        """The connection ended: every sub-device is disconnected (one INFO line for all,
        DEBUG per device), answers not yet sent are dropped. The sub-devices' subscriptions
        wait for what their sessions took for them all at once, until one ``deadline`` (loop
        time; mqtt/subscriptions.py's DRAIN_S from now when None), not one after another."""
        for task in list(self._answers):
            task.cancel()
        children, self._children = self._children, {}
        if deadline is None:
            deadline = self._loop.time() + DRAIN_S
        draining = []
        for sub in children.values():
            if sub.subscriptions.pending:
                draining.append(sub.subscriptions.close(deadline))
            else:  # nothing on its way: returns at once
                await sub.subscriptions.close(deadline)
        if draining:
            await asyncio.gather(*draining)
        for name, sub in children.items():
            self._log.bind(device=str(sub.device.id)).debug(
                "device {} disconnected: its gateway {} disconnected", name, self._device.name)
        if self._device.gateway:
            self._log.bind(devices=len(children)).info(
                "gateway {} disconnected: the {} devices connected through it disconnected",
                self._device.name, len(children))
        for task in list(self._answers):
            with contextlib.suppress(BaseException):
                await task

    # -- topics ----------------------------------------------------------------------------------

    def _on_connect(self, body: Any) -> Future[Any] | None:
        name, type_ = wire.parse_connect(body)
        self._admit((name,))
        return self._sub_device(name, type_).creation

    def _on_disconnect(self, body: Any) -> Future[Any] | None:
        name = wire.parse_disconnect(body)
        sub = self._children.pop(name, None)
        if sub is None:  # ThingsBoard acknowledges it too
            self._log.debug("disconnect of device {!r}, which is not connected through this "
                            "gateway: nothing to do", name[:64])
            return None
        self._retire(sub)
        self._log.bind(device=str(sub.device.id)).debug(
            "device {} disconnected from gateway {}", name, self._device.name)
        return None

    def _on_telemetry(self, body: Any) -> Future[Any] | None:
        data = wire.parse_telemetry(body, now_ms=self._service.now_ms(),
                                    type_cast=self._service.type_cast)
        self._log_skipped(data.skipped, "telemetry", "neither a list nor an object")
        self._admit(name for name, _ in data.devices)
        commits: list[Future[Any] | None] = []
        for name, entries in data.devices:
            sub = self._sub_device(name)
            commits.append(sub.creation)
            if entries:
                commits.append(self._watch(name, sub, self._service.post_entries(
                    sub.device.id, entries, requires_device=True)))
        self._report_nulls(data.nulls)
        return all_of(commits)

    def _on_attributes(self, body: Any) -> Future[Any] | None:
        data = wire.parse_attributes(body, type_cast=self._service.type_cast)
        self._log_skipped(data.skipped, "attributes", "not an object")
        self._admit(name for name, _ in data.devices)
        commits: list[Future[Any] | None] = []
        for name, values in data.devices:
            sub = self._sub_device(name)
            commits.append(sub.creation)
            if values:
                commits.append(self._watch(name, sub, self._service.post_client_attributes(
                    sub.device.id, values, requires_device=True)))
        self._report_nulls(data.nulls)
        return all_of(commits)

    def _report_nulls(self, nulls: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        """The null values of the message's devices, skipped: counted and logged per device
        (api/null_values.py), each device connected through this gateway by now."""
        for name, keys in nulls:
            sub = self._children.get(name)
            if sub is not None:
                self._service.nulls_skipped(sub.device, "mqtt_gateway", keys)

    def _on_rpc_reply(self, body: Any) -> Future[Any] | None:
        reply = wire.parse_rpc_reply(body)
        self._admit((reply.device,))
        sub = self._sub_device(reply.device)
        answer = self._service.answer_rpc(sub.device.id, reply.request_id, reply.data)
        return all_of([sub.creation, answer])

    def _on_attribute_request(self, body: Any) -> Future[Any] | None:
        request = wire.parse_attribute_request(body)
        self._admit((request.device,))
        sub = self._sub_device(request.device)
        task = asyncio.create_task(self._answer(request, sub.device, sub.creation))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return sub.creation

    async def _answer(self, request: wire.AttributeRequest, device: Device,
                      creation: Future[range] | None) -> None:
        """Published on v1/gateway/attributes/response once read: client attributes from the
        store, shared ones through the cloud for keys the edge does not hold (as the device
        API reads them). A request that cannot be answered (the device not created, a read or
        a send that fails) is logged with the gateway's and the device's ids, and left
        unanswered, as a device's own."""
        log = self._log.bind(device=str(device.id), request_id=request.request_id)
        if creation is not None:
            try:  # a follower: the task's cancellation (the connection ends) cancels it alone
                await asyncio.wrap_future(follower(creation))
            except Exception as exc:
                log.warning("attribute request {} of device {} not answered: the device was "
                            "not created ({})", request.request_id, device.name, exc)
                return
        scope = "client" if request.client else "shared"
        try:
            result, missing = await read_attributes(
                self._service, device.id,
                client_keys=request.keys if request.client else None,
                shared_keys=None if request.client else request.keys,
                link_connected=None if request.client else self._link_connected,
                timeout_s=self._commit_timeout, polls=self._polls)
            if missing and not request.client:
                log.debug("attributes answered without {} shared keys the edge does not hold",
                          len(missing))
            answer = wire.attribute_response(request, result.get(scope, {}))
            self._send(wire.ATTRIBUTES_RESPONSE, _dumps(answer))
        except Exception as exc:
            log.warning("attribute request {} of device {} not answered: {}: {}",
                        request.request_id, device.name, type(exc).__name__, exc)

    # -- sub-devices -----------------------------------------------------------------------------

    def _admit(self, names: Iterable[str]) -> None:
        """BadRequest (nothing of the publish taken) when connecting the devices ``names``
        not connected yet would pass MAX_SUB_DEVICES."""
        new = {name for name in names if name not in self._children}
        if not new or len(self._children) + len(new) <= MAX_SUB_DEVICES:
            return
        message = (f"gateway {self._device.name} has {len(self._children)} devices connected "
                   f"through it, the most one gateway connection may have is "
                   f"{MAX_SUB_DEVICES} (MAX_SUB_DEVICES, docs/mqtt-gateway.md): a publish "
                   f"naming {len(new)} more is refused; disconnect the devices it no longer "
                   "serves (v1/gateway/disconnect)")
        self._log.warning(message)
        raise BadRequest(message)

    def _sub_device(self, name: str, type_: str = wire.DEFAULT_TYPE) -> _SubDevice:
        """The connected sub-device named ``name``; connected now (and created on the edge
        when it has no device of that name) if it is not yet. BadRequest: a name or type the
        edge refuses."""
        sub = self._children.get(name)
        if sub is not None and sub.creation is not None and sub.creation.done():
            if failure(sub.creation) is None:
                sub.creation = None
            else:  # not created: its next data asks again
                del self._children[name]
                self._retire(sub)
                sub = None
        if sub is not None:
            return sub
        found = self._service.get_or_create_device(name, type_=type_, created_by=self._device.id)
        device = found.device
        if found.new and found.creation is not None:
            found.creation.add_done_callback(self._created(device))
        subscriptions = Subscriptions(self._service, device.id, self._relay(name))
        sub = _SubDevice(device, found.creation, subscriptions)
        self._children[name] = sub
        if found.creation is not None:  # before the publish's outcome is known
            found.creation.add_done_callback(self._leave_if_failed(name, sub))
        for topic_filter in self._topics:
            subscriptions.subscribe(DEVICE_FILTERS[topic_filter])
        self._log.bind(device=str(device.id)).debug(
            "device {} connected through gateway {}{}", name, self._device.name,
            " (being created)" if found.creation is not None else "")
        return sub

    def _created(self, device: Device) -> Callable[[Future[range]], None]:
        log, gateway = self._log.bind(device=str(device.id)), self._device.name

        def done(creation: Future[range]) -> None:  # the queue's thread
            exc = failure(creation)
            if exc is None:
                log.info("device {} (type {}) created on the edge for gateway {}",
                         device.name, device.type, gateway)
            else:
                log.warning("device {} not created for gateway {}: {}", device.name, gateway,
                            exc)

        return done

    def _leave_if_failed(self, name: str, sub: _SubDevice) -> Callable[[Future[range]], None]:
        """When ``sub``'s creation fails, the loop is told to drop it (its next data asks for
        the device again)."""

        def done(creation: Future[range]) -> None:  # the queue's thread
            if failure(creation) is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to drop
                    self._loop.call_soon_threadsafe(self._gone, name, sub)

        return done

    def _watch(self, name: str, sub: _SubDevice, committed: Future[range]) -> Future[range]:
        """``committed``, a write of ``sub``'s data that requires the device: refused as not
        found, the device is gone (deleted by the cloud, or its creation failed), and leaves
        the gateway (the loop is told before the publish's outcome: the callback is the
        first on ``committed``)."""

        def done(future: Future[range]) -> None:  # the queue's thread
            if isinstance(failure(future), NotFound):
                with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to drop
                    self._loop.call_soon_threadsafe(self._gone, name, sub)

        committed.add_done_callback(done)
        return committed

    def _gone(self, name: str, sub: _SubDevice) -> None:
        """``sub`` is not on the edge (deleted by the cloud, or its creation failed): it leaves
        the gateway, its waits on the session end (its next data gets or creates a device of
        its name again)."""
        if self._children.get(name) is not sub:
            return  # dropped already
        del self._children[name]
        self._retire(sub)
        created = sub.creation is None or (sub.creation.done() and failure(sub.creation) is None)
        if not created:  # its creation's failure is logged where it was asked for
            self._log.bind(device=str(sub.device.id)).debug(
                "device {} disconnected from gateway {}: not created", name, self._device.name)
        else:
            self._log.bind(device=str(sub.device.id)).warning(
                "device {} no longer exists on the edge (deleted by the cloud): its data "
                "refused, disconnected from gateway {}; its next data creates it again", name,
                self._device.name)

    @staticmethod
    def _retire(sub: _SubDevice) -> None:
        """Its waits on the device's session end now: nothing more is taken for it."""
        for device_filter in DEVICE_FILTERS.values():
            sub.subscriptions.unsubscribe(device_filter)

    def _relay(self, name: str) -> Send:
        """What a sub-device's subscriptions publish on the device topics, re-addressed to
        the gateway: ``{"device": name, "data": ...}`` on v1/gateway/rpc (the request id moves
        from the topic into the data, as ThingsBoard sends it) or v1/gateway/attributes."""

        def send(topic: str, payload: bytes) -> None:
            body = json.loads(payload)
            if topic.startswith(topics.RPC_REQUEST_PREFIX):
                request_id = int(topic[len(topics.RPC_REQUEST_PREFIX):])
                message = wire.rpc_request(name, {"id": request_id, **body})
                self._send(wire.RPC, _dumps(message))
            elif topic == topics.ATTRIBUTES:
                self._send(wire.ATTRIBUTES, _dumps(wire.attribute_update(name, body)))

        return send

    def _log_dropped(self, topic: str) -> None:
        """Counted; one WARNING per topic not served, up to mqtt/dropped.py's limit."""
        sighting = self._dropped.drop(topic)
        if sighting is Sighting.NEW:
            self._log.bind(topic=topic[:TOPIC_KEY_CHARS]).warning(
                "gateway publish on a topic the edge does not serve acknowledged and dropped")
        elif sighting is Sighting.LIMIT:
            self._log.warning("gateway {} published on {} topics the edge does not serve: "
                              "further topics it does not serve are dropped unlogged",
                              self._device.name, len(self._dropped))

    def _log_skipped(self, names: Iterable[str], what: str, shape: str) -> None:
        for name in names:
            self._log.warning("{} of device {!r} skipped: {} (ThingsBoard skips it too)", what,
                              name[:64], shape)


def all_of(futures: Iterable[Future[Any] | None]) -> Future[Any] | None:
    """One future for several commits: done when all are, failed with the first failure seen.
    None when there is nothing to wait for."""
    pending = [f for f in futures if f is not None]
    if not pending:
        return None
    if len(pending) == 1:
        return pending[0]
    out: Future[Any] = Future()
    lock = threading.Lock()
    left = [len(pending)]

    def done(future: Future[Any]) -> None:  # any thread
        exc = failure(future)
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if out.done():
            return
        with contextlib.suppress(Exception):  # a concurrent settle won the race
            if exc is not None:
                out.set_exception(exc)
            elif last:
                out.set_result(None)

    for future in pending:
        future.add_done_callback(done)
    return out


def failure(future: Future[Any]) -> BaseException | None:
    """Why a done future failed (None: it succeeded); a cancelled one as Unavailable, where
    ``exception()`` would raise."""
    if future.cancelled():
        return Unavailable("a commit this publish waits for was cancelled")
    return future.exception()


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()

