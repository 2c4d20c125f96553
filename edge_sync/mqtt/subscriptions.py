"""A connected device's MQTT subscriptions to what the edge sends it: server-side RPC requests
and shared attribute updates, in either form of the API (mqtt/topics.py: ``v1/devices/me/...``
or the short ``v2/...`` ones). Each subscription is one standing subscriber
(devices/standing.py) registered with the device's session once, when the SUBSCRIBE is taken
(``subscribe`` tells the device's entity actor before it returns, so before the connection
writes the SUBACK): everything the session hands out from then on comes to the server's loop,
in order, and is published; nothing falls between two waits. The RPC lifecycle and the
attribute flows stay in the device session (docs/device-rpc.md). No thread waits.

What a subscription gets is handed to ``send``, which publishes it at the QoS the subscription
was granted (mqtt/connection.py): at QoS 1 it stays in the client's session until the PUBACK.
An RPC subscription granted QoS 1 says so to the device's session (its subscriber ``acks``):
the session hands it each request in flight, still QUEUED (an RpcSent), and it goes to
``send_rpc`` with the request's identity, so the connection reports the PUBACK that delivers
it, or gives it back to the device's queue when its MQTT session loses it unacknowledged
(docs/device-rpc.md). At QoS 0 a request is recorded DELIVERED before it comes, as before.
As in ThingsBoard (MqttTransportHandler.processRpcSubscribe / processAttributesSubscribe),
a device has one subscription to its RPC requests and one to its attribute updates, whichever
forms it subscribes to: what comes is published on the topics of the form subscribed to last,
and the subscription ends when every form of it is unsubscribed.

A subscription serves only while its connection is open: RPC requests that come meanwhile wait
in the device's session (and expire there), and are published when a connection of the device
subscribes again, or resumes a kept session; shared attribute updates are not kept.

- **Unsubscribe, connection closed**: the subscriber is closed (the session forgets it and no
  longer counts it as a reason to keep the entity active). An RPC request the session took for
  it before (in flight, or recorded DELIVERED with its delivery commit on its way) is still
  handed to ``send``: on close, ``close`` waits up to ``drain_s`` (or the connection's one
  deadline, shared with its gateway's sub-devices) for such results before the connection
  gives its session back, so at QoS 1 a kept session sends it again on reconnect, and one not
  kept gives it back to the device's queue; at QoS 0 it is lost with the connection and its
  expiry is reported. One in flight that comes later still goes back to the device's queue;
  one recorded DELIVERED is logged at WARNING and dropped (it times out).
- **The session fails the subscriber** (its shard restarting, or a delivery that could not be
  recorded): a new subscriber is registered after ``retry_s``; queued RPC requests come then,
  shared attribute updates of the gap are not kept (as for a device that was not subscribed).
  An RPC subscriber that ``acks`` registers with the requests its connection's session still
  holds unacknowledged (``held``): a shard made again from disk, where they are QUEUED, counts
  them in flight by that session instead of sending them a second time on the connection.
- **The loop has closed** (the MQTT server stopped) before a request in flight reached it:
  it goes back to the device's queue (the subscriber's ``on_lost``), as one that comes after
  the connection's end.
"""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from edge_sync.api.device_service import DeviceService
from edge_sync.devices.rpc import RpcSent
from edge_sync.devices.standing import StandingSubscriber
from edge_sync.devices.subscribers import Subscriber
from edge_sync.errors import Unavailable
from edge_sync.mqtt import topics

RETRY_S = 1.0
"""The pause before registering again after the device's session failed the subscription (its
shard restarting)."""
DRAIN_S = 5.0
"""How long a closing connection waits for the results its subscriptions were already given
(RPC requests whose delivery is being recorded): commits take milliseconds; this bounds a
stuck one."""

Send = Callable[[str, bytes], None]
SendRpc = Callable[[str, bytes, RpcSent], None]
"""Publish an RPC request sent in flight: the connection reports its PUBACK (or its loss)."""
Held = Callable[[], Sequence[RpcSent]]
"""The RPC requests in flight the connection's session still holds unacknowledged."""
Poll = Callable[[uuid.UUID, Subscriber], None]
Shape = Callable[[Any, topics.Form], tuple[str, Any]]

RPC, ATTRIBUTES = "rpc", "attributes"

_log = logger.bind(component="mqtt")


class Subscriptions:
    """One device's subscriptions on one connection. The server's loop thread only."""

    def __init__(self, service: DeviceService, device_id: uuid.UUID, send: Send, *,
                 send_rpc: SendRpc | None = None, held: Held | None = None,
                 retry_s: float = RETRY_S, drain_s: float = DRAIN_S) -> None:
        """``send_rpc``: where RPC requests sent in flight go (None: this owner never asks for
        them; one that comes all the same is published with ``send`` and reported delivered).
        ``held``: the requests in flight its session still holds unacknowledged, told to the
        device's session at each registration (None: none)."""
        self._service = service
        self._device = device_id
        self._send = send
        self._send_rpc = send_rpc
        self._held = held
        self._retry_s = retry_s
        self._drain_s = drain_s
        self._loop = asyncio.get_running_loop()
        self._serving: dict[str, _Subscription] = {}  # by kind: RPC, ATTRIBUTES
        self._ended: list[_Subscription] = []  # unsubscribed, earlier results still on their way
        self._closed = False

    def subscribe(self, topic_filter: str, qos: int = 0) -> bool:
        """Serve ``topic_filter``, granted ``qos`` (registered with the device's session before
        this returns); False when the edge does not serve it. An RPC subscription at QoS 1
        takes its requests in flight when this owner has ``send_rpc``."""
        form = topics.RPC_SUBSCRIPTIONS.get(topic_filter)
        if form is not None:
            self._start(RPC, topic_filter, form, self._service.poll_rpc, _rpc_request,
                        qos if self._send_rpc is not None else 0)
            return True
        form = topics.ATTRIBUTE_SUBSCRIPTIONS.get(topic_filter)
        if form is not None:
            self._start(ATTRIBUTES, topic_filter, form, self._service.poll_attributes,
                        _attribute_update, 0)
            return True
        return topic_filter in topics.ANSWER_SUBSCRIPTIONS  # answers are always sent

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop serving ``topic_filter``: once every form of its subscription is unsubscribed,
        nothing more is taken for it; what was taken already is still published."""
        kind = RPC if topic_filter in topics.RPC_SUBSCRIPTIONS else ATTRIBUTES
        subscription = self._serving.get(kind)
        if subscription is None or not subscription.drop_filter(topic_filter):
            return
        del self._serving[kind]
        subscription.end()
        self._ended = [s for s in self._ended if s.pending]
        if subscription.pending:
            self._ended.append(subscription)

    @property
    def pending(self) -> int:
        """Results the device's session took for these subscriptions and not yet handed
        over (``close`` waits for them)."""
        return sum(s.pending for s in (*self._serving.values(), *self._ended))

    async def close(self, deadline: float | None = None) -> None:
        """The connection ends: nothing more is taken; what was taken already is published
        if it comes by ``deadline`` (loop time; ``drain_s`` from now when None), and logged
        and dropped if it comes later. Returns at once, without suspending, when nothing was
        taken."""
        drain_s = self._drain_s if deadline is None else max(0.0, deadline - self._loop.time())
        self._closed = True
        subscriptions = [*self._serving.values(), *self._ended]
        self._serving.clear()
        self._ended.clear()
        for subscription in subscriptions:
            subscription.end()
        if not any(s.pending for s in subscriptions):  # the usual case: nothing on its way
            for subscription in subscriptions:
                subscription.finish()
            return
        _log.bind(device=str(self._device)).debug(
            "waiting up to {:g} s for {} results taken for the subscriptions of a closing "
            "connection", drain_s, sum(s.pending for s in subscriptions))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.drained() for s in subscriptions)), drain_s)
        except TimeoutError:
            late = sum(s.pending for s in subscriptions)
            _log.bind(device=str(self._device), late=late).warning(
                "{} results taken for this connection's subscriptions did not come within "
                "{:g} s of its end: they are not published", late, drain_s)
        finally:
            for subscription in subscriptions:
                subscription.finish()

    def _start(self, kind: str, topic_filter: str, form: topics.Form, poll: Poll,
               shape: Shape, qos: int) -> None:
        if self._closed:
            return
        subscription = self._serving.get(kind)
        if subscription is not None:  # another form, or the same again: its topics from now
            subscription.add_filter(topic_filter, form, qos)
            return
        subscription = _Subscription(self._loop, self._device, kind, topic_filter, form, qos,
                                     poll, shape, self._send, self._send_rpc, self._held,
                                     self._service, self._retry_s)
        self._serving[kind] = subscription
        subscription.register()


class _State(enum.Enum):
    OPEN = "open"  # registered with the session (or about to be again)
    ENDED = "ended"  # unsubscribed or closing: takes nothing more, publishes what it took
    FINISHED = "finished"  # its connection is gone: what still comes is logged and dropped


class _Subscription:
    """One topic filter's standing subscription to the device's session. The loop only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, device: uuid.UUID, kind: str,
                 topic_filter: str, form: topics.Form, qos: int, poll: Poll, shape: Shape,
                 send: Send, send_rpc: SendRpc | None, held: Held | None,
                 service: DeviceService, retry_s: float) -> None:
        self._loop = loop
        self._device = device
        self._poll = poll
        self._shape = shape
        self._send = send
        self._send_rpc = send_rpc
        self._held = held
        self._service = service
        self._retry_s = retry_s
        self._rpc = kind == RPC
        self._filters = {topic_filter: form}  # the forms subscribed to, the last one last
        self._qos = {topic_filter: qos}  # the QoS granted to each
        self._form = form  # what is published goes in it (kept once all are unsubscribed)
        self._state = _State.OPEN
        self._current: StandingSubscriber | None = None
        self._subscribers: list[StandingSubscriber] = []  # the current one, and failed ones
        # whose earlier claims are still on their way
        self._retry: asyncio.TimerHandle | None = None
        self._failures = 0  # failures since the last result
        self._log = _log.bind(device=str(device), topic=topic_filter)

    @property
    def pending(self) -> int:
        """Results claimed by the session and not yet come."""
        return sum(s.pending for s in self._subscribers)

    @property
    def _acks(self) -> bool:
        """Whether its requests are to come in flight: an RPC subscription granted QoS 1 in
        any of its forms (what is published goes at the highest QoS of the filters it
        matches: Session.qos_for)."""
        return self._rpc and max(self._qos.values(), default=0) >= 1

    def add_filter(self, topic_filter: str, form: topics.Form, qos: int) -> None:
        """Another form subscribed to (or the same again): what comes is published in it."""
        self._filters.pop(topic_filter, None)
        self._filters[topic_filter] = self._form = form
        self._qos[topic_filter] = qos
        if self._current is not None:
            self._current.acks = self._acks

    def drop_filter(self, topic_filter: str) -> bool:
        """A form unsubscribed: True when none is left (the subscription ends); else what
        comes goes in the last form still subscribed to."""
        if self._filters.pop(topic_filter, None) is None:
            return False
        self._qos.pop(topic_filter, None)
        if not self._filters:
            return True
        self._form = next(reversed(self._filters.values()))
        if self._current is not None:
            self._current.acks = self._acks
        return False

    def register(self) -> None:
        """A new standing subscriber, told to the device's session now."""
        self._retry = None
        if self._state is not _State.OPEN:
            return
        subscriber: StandingSubscriber

        def failed(exc: BaseException) -> None:
            self._failed(subscriber, exc)

        subscriber = StandingSubscriber(self._loop, self._published, failed,
                                        on_lost=self._lost)
        subscriber.acks = self._acks
        if subscriber.acks and self._held is not None:
            subscriber.holding = tuple(self._held())
        self._current = subscriber
        self._subscribers = [s for s in self._subscribers if s.pending]
        self._subscribers.append(subscriber)
        try:  # a session that cannot be reached fails the subscriber; this raises no more
            self._poll(self._device, subscriber)
        except Exception as exc:
            subscriber.close()
            self._failed(subscriber, exc)

    def end(self) -> None:
        """Take nothing more (unsubscribed, or the connection closes)."""
        if self._state is _State.OPEN:
            self._state = _State.ENDED
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._current = None
        for subscriber in self._subscribers:
            subscriber.close()

    async def drained(self) -> None:
        """After ``end``: every result claimed before has come."""
        for subscriber in list(self._subscribers):
            await subscriber.drained()

    def finish(self) -> None:
        """The connection is gone: results that still come are not published."""
        self.end()
        self._state = _State.FINISHED

    def _failed(self, subscriber: StandingSubscriber, exc: BaseException) -> None:
        if subscriber is not self._current or self._state is not _State.OPEN:
            return  # replaced already, or no longer wanted
        self._current = None
        self._failures += 1
        # a shard restarting is logged by the shard; a failure that repeats (storage full:
        # no delivery can be recorded) is logged once until something is published again
        quiet = isinstance(exc, Unavailable) or self._failures > 1
        self._log.log("DEBUG" if quiet else "WARNING", "subscription dropped by the device's "
                      "session ({}): registered again in {:g} s", exc, self._retry_s)
        self._retry = self._loop.call_later(self._retry_s, self.register)

    def _published(self, value: Any) -> None:
        """A result, on the loop, in the order the session gave it."""
        self._failures = 0
        if isinstance(value, RpcSent):
            self._sent(value)
            return
        topic, body = self._shape(value, self._form)
        if self._state is _State.FINISHED:
            if self._rpc:
                self._log.bind(rpc_id=value.get("id")).warning(
                    "RPC request {} was taken for a connection that has closed since: not "
                    "published (it times out unanswered)", value.get("id"))
            else:
                self._log.debug("shared attribute update for a closed connection dropped")
            return
        if self._state is _State.ENDED and self._rpc:
            self._log.bind(rpc_id=value.get("id")).info(
                "RPC request {} was taken before its subscription ended: published all the "
                "same", value.get("id"))
        try:
            self._send(topic, json.dumps(body, separators=(",", ":")).encode())
        except Exception as exc:  # the connection's writer: never expected to raise
            self._log.opt(exception=exc).error("publish to the device failed: {}", exc)


    def _sent(self, sent: RpcSent) -> None:
        """An RPC request in flight: published for the connection to report its PUBACK; given
        back to the device's queue when the connection has closed (never written)."""
        if self._state is _State.FINISHED:  # the device's entity logs it back in the queue
            self._service.rpc_unsent(self._device, (sent,), "its connection closed before it "
                                     "was written")
            return
        if self._state is _State.ENDED:
            self._log.bind(rpc_id=sent.request_id).info(
                "RPC request {} was taken before its subscription ended: published all the "
                "same", sent.request_id)
        topic, body = self._shape(sent.body, self._form)
        payload = json.dumps(body, separators=(",", ":")).encode()
        try:
            if self._send_rpc is not None:
                self._send_rpc(topic, payload, sent)
            else:  # not expected: this owner does not take requests in flight
                self._send(topic, payload)
                self._service.rpc_acknowledged(sent)
        except Exception as exc:  # the connection's writer: never expected to raise
            self._log.opt(exception=exc).error("publish to the device failed: {}", exc)
            self._service.rpc_unsent(self._device, (sent,), f"its publish failed: {exc}")

    def _lost(self, value: Any) -> None:
        """A result that came once the loop had closed (any thread): a request in flight goes
        back to the device's queue, never written; anything else is dropped with the loop (a
        request recorded DELIVERED times out, as one that comes after the connection's end)."""
        if isinstance(value, RpcSent):
            self._service.rpc_unsent(self._device, (value,), "its MQTT server stopped before "
                                     "it was written")


def _rpc_request(request: dict[str, Any], form: topics.Form) -> tuple[str, Any]:
    """ThingsBoard's shape: the id in the topic, method and params in the body."""
    body = {k: v for k, v in request.items() if k != "id"}
    return f"{form.rpc_request_prefix}{request['id']}", body


def _attribute_update(update: Any, form: topics.Form) -> tuple[str, Any]:
    return form.attributes, update
