"""The lifecycle of the server-side RPC requests of one device, as ThingsBoard's persistent RPC:

    QUEUED --delivered--> DELIVERED --answered--> SUCCESSFUL
       |                     |
       |                     +--expirationTime passed, no answer--> TIMEOUT
       +--answered (the device got it, its delivery not recorded)--> SUCCESSFUL
       +--expirationTime passed before delivery--> EXPIRED
    a request the edge cannot deliver at all (no method) is FAILED at once.

A failure the cloud is told of (EXPIRED, TIMEOUT, FAILED) is reported with an ``error`` that
names one of ThingsBoard's RpcError constants (edge_sync.common.wire.RPC_ERRORS):
DeviceEdgeProcessor.processDeviceRpcResponseFromEdge reads it with RpcError.valueOf, and any
other text throws and fails the whole uplink message. The human reason stays in the request's
own ``error`` (the edge's record and log line).

A one-way request is SUCCESSFUL as soon as it is delivered (nobody waits for its answer).
An answer is a JSON value, or a TextAnswer: a body that is not JSON the store can hold, carried
as its text (``responseText`` in the report, sent to the cloud as it is).
Nothing here reads a clock or touches storage: time is passed in (ms since the epoch, the
cloud's expirationTime is wall-clock), the owner persists each record it gets back. A change the
owner could not persist is undone with ``restore`` (the request is as it was, so a retry or the
next deadline acts again), unless the device is known to have the request (its acknowledgement,
or its answer while QUEUED: ``Transition.kept``): that one stays delivered and only its record is
tried again (``keep``, ``unrecorded``), or the request would be sent again, and again, as long
as storage refuses its record. A delivery is in flight from ``take_next`` until the owner says the
device was handed the request (``handed``), or that it was not (``restore``: its record failed;
``expire_late``: it was recorded only once expired): meanwhile its expiry waits, so a request
is TIMEOUT only once a device really got it, and EXPIRED otherwise.

A transport that learns of the delivery from the device itself (MQTT at QoS 1: the PUBACK)
takes a request with ``send_next`` instead: it is sent, in flight, and stays QUEUED (on disk
too, so an agent killed meanwhile finds it QUEUED and delivers it again) until the transport
says the device acknowledged it (``acknowledged``: DELIVERED, or SUCCESSFUL when one-way) or
lost it (``unsent``: QUEUED again, in its place among the queued ones, for the next taker).
Each sending has its own number (an RpcSent's ``attempt``): a loss reported of an earlier one
(a session discarded since) changes nothing, but an acknowledgement of any sending delivers a
request still QUEUED, in flight or not: the device has it (a book made again after its shard
restarted finds the request QUEUED, not in flight, while the device's PUBACK is on its way). A
transport that still holds sendings unacknowledged says so when it asks again (``holding``):
they are in flight again, not sent a second time on the same connection. A request in flight
is EXPIRED at its expirationTime (the device is not known to have got it). This is
ThingsBoard's persistent RPC over MQTT: MqttTransportHandler.sendToDeviceRpcRequest keeps a
QoS 1 request in ``rpcAwaitingAck`` (RpcStatus.SENT) and reports RpcStatus.DELIVERED on its
PUBACK (processMqttMsg, case PUBACK); DeviceActorMessageProcessor keeps it in
``toDeviceRpcPendingMap`` not delivered until then (processRpcResponseStatus), sends it again
to a session that subscribes (sendPendingRequests), and processServerSideRpcTimeout makes it
EXPIRED at its expirationTime.

A request made by the edge's rule chain (an RPC call request node: one with a ``source``) goes
through the same lifecycle; the cloud never heard of it, so none of its changes is reported to
it (the owner makes no event of a ``Transition`` whose request is not the cloud's).

An answer is taken for any open request, delivered or still QUEUED (in flight, or not known to
be: after a restart, or from a device that got it over a connection since lost), as
DeviceActorMessageProcessor.processRpcResponses takes a response for any request in
``toDeviceRpcPendingMap``, delivered or not.
"""

from __future__ import annotations

import enum
import itertools
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from edge_sync.common.json_body import parse_json
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.storable import check_json_value

DEFAULT_RPC_TIMEOUT_MS = 10_000
"""A request that names no expirationTime expires this long after it reached the edge
(ThingsBoard's default RPC timeout)."""

_RECENT_FINAL = 64  # finished requests remembered per device, to explain a late answer

_ATTEMPTS = itertools.count(1)  # every sending's number, unique in the process (a book made
# again, after its shard restarted, never reuses one)

NO_METHOD = "no method"
"""The reason a request without a method is FAILED (reported to the cloud as INTERNAL)."""


@dataclass(frozen=True, slots=True)
class TextAnswer:
    """A device's answer that is not a JSON value the store can hold (``OK``, an empty body,
    text that is not UTF-8 read with replacement characters): its text, carried as it is, as
    ThingsBoard carries any answer as a string (JsonMqttAdaptor.processToDeviceRpcResponseMsg
    stores the payload's text; DeviceApiController.replyToCommand takes the body as a String).
    The request's record keeps the text as its response; the report carries it as
    ``responseText``, and the cloud gets it unchanged in ``responseMsg.response``."""

    text: str


def answer_of(raw: bytes) -> Any:
    """A device's answer body: its JSON value when it is JSON the store can hold, else a
    TextAnswer with its text (an empty body included)."""
    try:
        value = parse_json(raw)
        check_json_value("rpc response", value)
    except BadRequest:
        return TextAnswer(raw.decode("utf-8", errors="replace"))
    return value


class RpcStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    DELIVERED = "DELIVERED"
    SUCCESSFUL = "SUCCESSFUL"
    TIMEOUT = "TIMEOUT"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self not in (RpcStatus.QUEUED, RpcStatus.DELIVERED)


class RpcOrigin(enum.StrEnum):
    """Who asked: the cloud (a server-side RPC downlink), or the edge's rule chain (an RPC call
    request node), whose requests the cloud is never told of."""

    CLOUD = "cloud"
    RULE = "rule"


@dataclass(frozen=True, slots=True)
class RuleSource:
    """Where a rule-made request's end goes on: the node that made it (its stable key in the
    chain), and the type and metadata of the message that reached it (ThingsBoard's
    TbSendRPCRequestNode sends the device's answer on as a message of that type and metadata)."""

    node_key: str
    msg_type: str
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """One server-side RPC request to a device, as the edge keeps it."""

    device_id: uuid.UUID
    request_uuid: uuid.UUID
    request_id: int  # the cloud's requestId: the id the device sees and answers
    method: str
    params: str  # JSON text as the cloud sent it
    oneway: bool
    expiration_time: int  # ms since the epoch
    queued_at: int  # ms since the epoch, when the edge stored it
    status: RpcStatus = RpcStatus.QUEUED
    updated_at: int = 0
    response: Any = None
    error: str = ""
    source: RuleSource | None = None  # a rule-made request's: where its end goes on

    @property
    def origin(self) -> RpcOrigin:
        """Who asked: the rule chain for a request with a ``source``, else the cloud."""
        return RpcOrigin.CLOUD if self.source is None else RpcOrigin.RULE

    @property
    def reported(self) -> bool:
        """Whether the cloud is told of this request's changes (it asked for it)."""
        return self.source is None

    def device_json(self) -> dict[str, Any]:
        """What the device gets: ThingsBoard's ``{"id", "method", "params"}`` (params parsed from
        their JSON text; text that is not JSON is passed as a string)."""
        try:
            params: Any = json.loads(self.params) if self.params else None
        except ValueError:
            params = self.params
        return {"id": self.request_id, "method": self.method, "params": params}

    def echo(self) -> dict[str, Any]:
        """The request's identity as every answer upstream echoes it."""
        return {"requestUuid": str(self.request_uuid), "requestId": self.request_id,
                "oneway": self.oneway, "expirationTime": self.expiration_time}

    def as_json(self) -> dict[str, Any]:
        """The shape `edge-sync rpc list --json` and the admin API print."""
        return {
            "device_id": str(self.device_id), "request_uuid": str(self.request_uuid),
            "request_id": self.request_id, "method": self.method, "params": self.params,
            "oneway": self.oneway, "expiration_time": self.expiration_time,
            "queued_at": self.queued_at, "status": self.status.value,
            "updated_at": self.updated_at, "response": self.response, "error": self.error,
            "origin": self.origin.value,
        }


@dataclass(frozen=True, slots=True)
class RpcSent:
    """A request sent to a transport that reports its delivery (``send_next``): what the
    device gets (``body``, its device JSON) and what names this sending when the transport
    reports back (RpcBook.acknowledged / unsent)."""

    device_id: uuid.UUID
    request_uuid: uuid.UUID
    attempt: int
    body: dict[str, Any]
    expiration_time: int = 0  # ms since the epoch: once past, a transport that has not
    # written it yet gives it up (the request is EXPIRED, never delivered); 0: never

    @property
    def request_id(self) -> int:
        return int(self.body["id"])


def expiration_of(expiration_time: int, now_ms: int) -> int:
    """The expiry the edge keeps: the cloud's, or DEFAULT_RPC_TIMEOUT_MS from now when none.
    Any far-future expiry is kept as it is (ThingsBoard's AbstractRpcController takes any long):
    the shard's timer sleeps towards it in bounded steps, so it never fires in practice."""
    return expiration_time if expiration_time > 0 else now_ms + DEFAULT_RPC_TIMEOUT_MS


@dataclass(frozen=True, slots=True)
class Transition:
    """A request whose status changed: persist ``request``; ``report`` is the body of the
    RPC_CALL event that tells the cloud (None when the cloud is not told)."""

    request: RpcRequest
    report: dict[str, Any] | None
    previous: RpcRequest | None = None  # the record it replaces (what ``restore`` puts back)
    kept: bool = False  # the device is known to have the request (its acknowledgement, or
    # its answer while QUEUED): a record that fails is not undone but tried again (``keep``)


class RpcBook:
    """The open RPC requests of one device, in arrival order, and the last finished ones."""

    __slots__ = ("_delivering", "_open", "_recent", "_sent", "_unrecorded")

    def __init__(self) -> None:
        self._open: dict[uuid.UUID, RpcRequest] = {}
        self._recent: dict[int, RpcRequest] = {}
        self._delivering: set[uuid.UUID] = set()  # delivered, not yet known to be handed over
        self._sent: dict[uuid.UUID, int] = {}  # sent, QUEUED until acknowledged: its attempt
        self._unrecorded: dict[uuid.UUID, Transition] = {}  # kept (``keep``), to record again

    def __len__(self) -> int:
        return len(self._open)

    def open_requests(self) -> list[RpcRequest]:
        return list(self._open.values())

    def add(self, request: RpcRequest) -> bool:
        """Take a stored request (new from the cloud, made by the rule chain, or loaded at
        start). False when it is open already, finished, or one of the last finished here:
        told of again after the book took it from the store and finished it (a commit that
        landed while the shard restarted), it is not delivered again."""
        if request.request_uuid in self._open or request.status.final or any(
                done.request_uuid == request.request_uuid for done in self._recent.values()):
            return False
        self._open[request.request_uuid] = request
        self._open = dict(sorted(self._open.items(), key=lambda kv: kv[1].queued_at))
        return True

    def ended(self, request: RpcRequest) -> bool:
        """``request`` (final) was recorded by another owner of this device's requests (a shard
        incarnation before this one, whose record landed after this book loaded the request
        open): it is open here no more, and no change of it is made again. Whether it was."""
        if not request.status.final or request.request_uuid not in self._open:
            return False
        self._finish(request)
        return True

    def next_deadline(self) -> int | None:
        """When ``expire_due`` has work next (ms): the earliest expirationTime of an open
        request whose delivery is not being recorded (at once for one without a method, to be FAILED),
        None when there is none; 0 (now: the owner spaces its tries) while a change kept
        (``keep``) waits to be recorded again."""
        due = min((r.expiration_time if r.method else r.queued_at
                   for u, r in self._open.items() if u not in self._delivering), default=None)
        return 0 if self._unrecorded else due  # a change kept (``keep``): recorded again now

    @property
    def unrecorded_count(self) -> int:
        """Changes kept to be recorded again (``keep``): the owner must not forget the book."""
        return len(self._unrecorded)

    def _next_queued(self, now_ms: int) -> RpcRequest | None:
        for request in self._open.values():
            if request.status is RpcStatus.QUEUED and request.method \
                    and now_ms < request.expiration_time and request.request_uuid not in self._sent:
                return request
        return None

    def has_next(self, now_ms: int) -> bool:
        """Whether ``take_next`` or ``send_next`` has a request to give."""
        return self._next_queued(now_ms) is not None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet acknowledged (``send_next``)."""
        return len(self._sent)

    def send_next(self, now_ms: int) -> RpcSent | None:
        """The oldest QUEUED request that has not expired, now sent to a transport that reports
        its delivery: in flight, still QUEUED (nothing to record) until ``acknowledged`` or
        ``unsent``. None when there is none."""
        request = self._next_queued(now_ms)
        if request is None:
            return None
        attempt = self._sent[request.request_uuid] = next(_ATTEMPTS)
        return RpcSent(request.device_id, request.request_uuid, attempt, request.device_json(),
                       request.expiration_time)

    def holding(self, held: Iterable[RpcSent]) -> list[RpcSent]:
        """A transport asks for requests again while it still holds ``held`` sendings
        unacknowledged (an MQTT session's messages awaiting their PUBACK): each whose request
        is open, QUEUED and not in flight is in flight again by that sending (after its shard
        restarted, the book is made again from disk, where the request is QUEUED), so it is
        not sent a second time on the connection that has it. Those taken back."""
        taken = []
        for sent in held:
            request = self._open.get(sent.request_uuid)
            if request is not None and request.status is RpcStatus.QUEUED \
                    and sent.request_uuid not in self._sent:
                self._sent[sent.request_uuid] = sent.attempt
                taken.append(sent)
        return taken

    def acknowledged(self, sent: RpcSent, now_ms: int) -> Transition | None:
        """The device acknowledged ``sent``: DELIVERED (SUCCESSFUL, reported with an empty
        answer, when one-way), as ``take_next`` makes it; EXPIRED, reported, when that came at
        or after its expirationTime. Any sending of a request still QUEUED counts, in flight or
        not (the device has it: a book made again after a shard restart, or a sending lost and
        sent again since, whose first PUBACK comes late); one sent again meanwhile is no longer
        in flight. None when the request is no longer QUEUED (answered, expired, acknowledged
        already)."""
        request = self._open.get(sent.request_uuid)
        if request is None or request.status is not RpcStatus.QUEUED:
            return None
        self._sent.pop(sent.request_uuid, None)
        if now_ms >= request.expiration_time:
            done = replace(request, status=RpcStatus.EXPIRED, updated_at=now_ms, error="TIMEOUT")
            self._finish(done)
            return Transition(done, {**done.echo(), "error": "TIMEOUT"}, request)
        return self._delivered(request, now_ms, kept=True)

    def _delivered(self, request: RpcRequest, now_ms: int, *, kept: bool = False) -> Transition:
        """``request`` reached its device: DELIVERED, or SUCCESSFUL (reported with an empty
        answer) when one-way. ``kept``: the device said so (Transition.kept)."""
        if request.oneway:
            done = replace(request, status=RpcStatus.SUCCESSFUL, updated_at=now_ms)
            self._finish(done)
            return Transition(done, {**done.echo(), "response": {}}, request, kept)
        delivered = replace(request, status=RpcStatus.DELIVERED, updated_at=now_ms)
        self._open[request.request_uuid] = delivered
        return Transition(delivered, None, request, kept)

    def unsent(self, sent: RpcSent) -> bool:
        """The transport lost ``sent`` without the device's acknowledgement: QUEUED again, in
        its place by arrival, for the next taker. False when it is no longer in flight by that
        sending."""
        if self._sent.get(sent.request_uuid) != sent.attempt:
            return False
        del self._sent[sent.request_uuid]
        return True

    def unsendable(self, sent: RpcSent, error: str, now_ms: int) -> Transition | None:
        """The transport can never send ``sent`` to this device (larger than the client takes):
        FAILED with ``error``, reported as INTERNAL (as a request without a method; ThingsBoard
        answers a request whose publish failed with an error: MqttTransportHandler
        .sendToDeviceRpcRequest, sendErrorRpcResponse). None when it is no longer in flight by
        that sending."""
        request = self._open.get(sent.request_uuid)
        if request is None or self._sent.get(sent.request_uuid) != sent.attempt:
            return None
        done = replace(request, status=RpcStatus.FAILED, updated_at=now_ms, error=error)
        self._finish(done)
        return Transition(done, {**done.echo(), "error": "INTERNAL"}, request)

    def take_next(self, now_ms: int) -> Transition | None:
        """The oldest QUEUED request that has not expired, now delivered: DELIVERED (or
        SUCCESSFUL, reported with an empty answer, when one-way). None when there is none."""
        request = self._next_queued(now_ms)
        if request is None:
            return None
        transition = self._delivered(request, now_ms)
        if not request.oneway:
            self._delivering.add(request.request_uuid)
        return transition

    def handed(self, request_uuid: uuid.UUID) -> None:
        """The delivered request reached the device: from now on it times out unanswered."""
        self._delivering.discard(request_uuid)

    def restore(self, change: Transition) -> bool:
        """``change`` could not be recorded: its request is as it was before (a delivery is
        QUEUED again, an answer DELIVERED, an expiry open), unless it has changed since. False
        when nothing was restored."""
        after, before = change.request, change.previous
        if before is None:
            return False
        if after.status.final:
            if self._recent.get(after.request_id) is not after:
                return False
            del self._recent[after.request_id]
        elif self._open.get(after.request_uuid) is not after:
            return False
        self._delivering.discard(after.request_uuid)
        self._open[before.request_uuid] = before
        self._open = dict(sorted(self._open.items(), key=lambda kv: kv[1].queued_at))
        return True

    def keep(self, change: Transition) -> Transition | None:
        """``change`` (``kept``: the device acknowledged the request, or answered it while it
        was QUEUED) could not be recorded (storage full, say). The device has the request, so
        it is not QUEUED again: sent again, acknowledged again, its record refused again, that
        would loop as long as storage refuses. It stays delivered and only its record is
        tried again, as ThingsBoard keeps a request delivered whatever its save does
        (DeviceActorMessageProcessor.processRpcResponseStatus sets it delivered, then saves).
        The change to record again, which ``unrecorded`` gives back: ``change`` itself for an
        acknowledgement and a one-way request's answer (SUCCESSFUL either way); for a two-way
        request's answer, the delivery it shows: DELIVERED, so the device's retry of its answer
        is taken, as for any delivered request whose answer was not recorded. None when the
        request has changed since (a later change records it)."""
        after, before = change.request, change.previous
        if before is None or not self._current(after):
            return None
        again = change
        if after.status is RpcStatus.SUCCESSFUL and not before.oneway:  # an answer
            del self._recent[after.request_id]
            again = self._delivered(before, after.updated_at, kept=True)
            self._open = dict(sorted(self._open.items(), key=lambda kv: kv[1].queued_at))
        self._unrecorded[after.request_uuid] = again
        return again

    def unrecorded(self) -> list[Transition]:
        """The changes kept (``keep``) whose request is still as they left it, to record
        again; forgotten here (a failure keeps them again)."""
        pending, self._unrecorded = self._unrecorded, {}
        return [c for c in pending.values() if self._current(c.request)]

    def _current(self, request: RpcRequest) -> bool:
        """Whether ``request`` is the book's own state of its request (not changed since)."""
        if request.status.final:
            return self._recent.get(request.request_id) is request
        return self._open.get(request.request_uuid) is request

    def expire_late(self, change: Transition, now_ms: int) -> Transition | None:
        """A delivery (``change``, as take_next returned it) was recorded only at or after the
        request's expirationTime, so the device was not given it: EXPIRED, reported as any
        expiry. None when the request has changed since."""
        request = change.request
        if self._open.get(request.request_uuid) is not request:
            return None
        self._delivering.discard(request.request_uuid)
        done = replace(request, status=RpcStatus.EXPIRED, updated_at=now_ms, error="TIMEOUT")
        self._finish(done)
        return Transition(done, {**done.echo(), "error": "TIMEOUT"}, request)

    def answer(self, request_id: int, response: Any, now_ms: int) -> Transition:
        """The device's answer to ``request_id``: SUCCESSFUL, reported with the answer.
        NotFound when no open request has that id; Conflict when it has finished (expired,
        timed out, answered). Any open request takes it, delivered or still QUEUED, as
        DeviceActorMessageProcessor.processRpcResponses takes a response for any pending
        request: one in flight (``send_next``; an MQTT client may answer before its PUBACK),
        and one QUEUED the device got over a connection the edge no longer counts (its shard,
        or the agent, restarted since: the record says QUEUED until the PUBACK)."""
        matching = [r for r in self._open.values() if r.request_id == request_id]
        # a delivered one first, or one in flight (a cloud may reuse an id while an older
        # request is open): the device answers what it got, PUBACK or not
        sent = self._sent
        matching.sort(key=lambda r: r.status is not RpcStatus.DELIVERED
                      and r.request_uuid not in sent)
        for request in matching[:1]:
            if now_ms >= request.expiration_time:
                raise Conflict(f"RPC request {request_id} expired at {request.expiration_time}; "
                               "the answer is too late")
            if isinstance(response, TextAnswer):  # kept as its text, sent as it is
                stored, report = response.text, {"responseText": response.text}
            else:
                stored, report = response, {"response": response}
            done = replace(request, status=RpcStatus.SUCCESSFUL, updated_at=now_ms,
                           response=stored)
            self._delivering.discard(request.request_uuid)
            self._finish(done)
            return Transition(done, {**done.echo(), **report}, request,
                              request.status is RpcStatus.QUEUED)
        recent = self._recent.get(request_id)
        if recent is not None:
            raise Conflict(f"RPC request {request_id} is {recent.status.value}; it takes no "
                           "answer")
        raise NotFound(f"no RPC request {request_id} awaits an answer from this device")

    def expire_due(self, now_ms: int) -> list[Transition]:
        """Requests whose expirationTime has come: EXPIRED (never delivered) or TIMEOUT
        (delivered, not answered), each reported to the cloud with error TIMEOUT, as
        ThingsBoard Edge reports both; a request whose delivery is being recorded waits until
        it is known whether the device got it, one sent and not yet acknowledged
        (``send_next``) is EXPIRED (processServerSideRpcTimeout). And a request the edge
        cannot deliver at all (no method): FAILED with that reason, reported as INTERNAL (an
        RpcError name; ThingsBoard's REST caller gets its timeout status for any error but
        NO_ACTIVE_CONNECTION, AbstractRpcController.reply)."""
        out: list[Transition] = []
        for request in list(self._open.values()):
            if request.request_uuid in self._delivering:
                continue
            if not request.method:
                status, error, reported = RpcStatus.FAILED, NO_METHOD, "INTERNAL"
            elif now_ms < request.expiration_time:
                continue
            elif request.status is RpcStatus.QUEUED:
                status, error, reported = RpcStatus.EXPIRED, "TIMEOUT", "TIMEOUT"
            else:
                status, error, reported = RpcStatus.TIMEOUT, "TIMEOUT", "TIMEOUT"
            done = replace(request, status=status, updated_at=now_ms, error=error)
            self._finish(done)
            out.append(Transition(done, {**done.echo(), "error": reported}, request))
        return out

    def _finish(self, done: RpcRequest) -> None:
        self._open.pop(done.request_uuid, None)
        self._sent.pop(done.request_uuid, None)
        self._recent[done.request_id] = done
        while len(self._recent) > _RECENT_FINAL:
            del self._recent[next(iter(self._recent))]


def by_status(requests: Iterable[RpcRequest], status: RpcStatus | None) -> list[RpcRequest]:
    return [r for r in requests if status is None or r.status is status]
