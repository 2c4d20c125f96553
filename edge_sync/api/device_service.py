"""The in-process device API: what the HTTP device API does, without HTTP.

Authenticates tokens against the entity store, validates bodies, routes commands to the entity
actors and hands back futures that resolve once the result is on disk. The HTTP layer, the admin
API, embedding applications and the benchmark all go through here.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, TypeVar

from loguru import logger

from edge_sync.actors.messages import (
    FetchSharedAttributes,
    PollAttributes,
    PollRpc,
    PostClientAttributes,
    PostRpcResponse,
    PostTelemetry,
    ProvisionDevice,
    RaiseAlarm,
    RpcAcknowledged,
    RpcUnsent,
)
from edge_sync.actors.shard import EntityRouter
from edge_sync.api.null_values import NullValues
from edge_sync.api.payloads import (
    Entry,
    Values,
    check_json_value,
    parse_attributes,
    parse_telemetry,
)
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common import ids
from edge_sync.devices.rpc import RpcSent, TextAnswer
from edge_sync.devices.subscribers import Subscriber
from edge_sync.errors import BadRequest, Conflict, NotFound, Unauthorized
from edge_sync.metrics import Metrics
from edge_sync.storage.entity_store import EntityStore, Revoked, TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Device, Scope
from edge_sync.validators import MAX_LABEL_BYTES, MAX_NAME_BYTES, text_fits

SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE")

PENDING_CREATION_MAX_MS = 300_000
"""A creation not settled after this long no longer holds its name. Every path settles one
(committed, refused, failed with Unavailable when an actor is down or restarts); this bounds
what a message lost to a bug would hold. The store keeps names unique whatever happens: a
late commit of the first makes a second creation fail with Conflict."""

_log = logger.bind(component="device-api")

T = TypeVar("T")


def follower(source: Future[T]) -> Future[T]:
    """A future of the caller's own, settled as ``source`` is. A future shared by several
    callers is never handed out itself: one that cancels its copy (asyncio cancels the
    concurrent future it awaits through wrap_future) must not cancel everyone's."""
    out: Future[T] = Future()

    def settle(done: Future[T]) -> None:  # the settling thread
        with contextlib.suppress(InvalidStateError):  # its holder cancelled it: nothing to do
            if done.cancelled():
                out.cancel()
            elif (exc := done.exception()) is not None:
                out.set_exception(exc)
            else:
                out.set_result(done.result())

    source.add_done_callback(settle)
    return out


def _nothing() -> Future[range]:
    """The commit of a write with nothing to store: done, no seqs."""
    done: Future[range] = Future()
    done.set_result(range(0))
    return done


@dataclass(frozen=True, slots=True)
class NamedDevice:
    """What ``get_or_create_device`` found: the device, and while its creation is on its way
    the creation's commit (the caller's own future: cancelling it cancels nothing else);
    ``new`` when this call asked for the creation."""

    device: Device
    creation: Future[range] | None = None
    new: bool = False


class DeviceService:
    """Any thread. Every method that changes state returns a future resolved after commit."""

    def __init__(
        self,
        store: LmdbStore,
        router: EntityRouter,
        *,
        tokens: TokenCache | None = None,
        clock: Clock = SYSTEM_CLOCK,
        metrics: Metrics | None = None,
        type_cast: bool = True,
    ) -> None:
        self._store = store
        self.type_cast = type_cast
        """Numeric strings in telemetry and attributes become numbers (``devices.type_cast``,
        ThingsBoard's ``transport.json.type_cast_enabled``)."""
        self._nulls = NullValues(metrics, clock)
        # answers no request awaits, whichever transport took them (each drops them): counted
        self._answers_dropped = None if metrics is None else metrics.counter(
            "edge_sync_rpc_answers_dropped_total",
            "device answers to server-side RPC requests that no request awaited (unknown id; "
            "not delivered, expired or answered already): acknowledged and dropped, nothing "
            "queued (HTTP and MQTT)")
        self._entities = EntityStore(store)
        self._tokens = tokens or TokenCache()
        self._router = router
        self._clock = clock
        # every creation on its way, by name, until its commit settles (whoever asked for it:
        # a gateway, an operator): a name is created once, and a gateway naming it meanwhile
        # gets that device. Reentrant: a creation told to a shard that is down fails at once,
        # in the telling thread, and its callback takes the lock again.
        self._creating: dict[str, tuple[Device, Future[range], int]] = {}  # and since (ms)
        self._creating_lock = threading.RLock()

    def now_ms(self) -> int:
        """The service's clock (the time a body without its own ``ts`` is stamped with)."""
        return self._clock.now_ms()

    @property
    def router(self) -> EntityRouter:
        """The router the service tells entities through (the entity service shares it)."""
        return self._router

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- reads -------------------------------------------------------------------------------

    def authenticate(self, token: str) -> Device:
        device = self._tokens.get(token)
        if device is not None:
            return device
        generation = self._tokens.generation
        with self._store.read() as txn:
            device = self._entities.device_by_token(txn, token)
        if device is None:
            raise Unauthorized("unknown device access token")
        self._tokens.put(token, device, generation=generation)
        return device

    def still_authenticates(self, device: Device) -> bool:
        """Whether the token ``device`` was authenticated with still names it (False: the
        token was changed or removed, or the device deleted, since)."""
        try:
            return bool(device.token) and self.authenticate(device.token).id == device.id
        except Unauthorized:
            return False

    def watch_access(self, watcher: Callable[[Revoked], None]) -> Callable[[], None]:
        """Tell ``watcher``, on the committing thread, the devices whose access token a commit
        changed or removed, or which it removed (storage/entity_store.TokenCache.watch); what
        stops it."""
        return self._tokens.watch(watcher)

    def device(self, device_id: uuid.UUID) -> Device | None:
        with self._store.read() as txn:
            return self._entities.device(txn, device_id)

    def get_attributes(
        self,
        token: str,
        *,
        client_keys: tuple[str, ...] | None,
        shared_keys: tuple[str, ...] | None,
    ) -> dict[str, dict[str, Any]]:
        """ThingsBoard's reply shape: {"client": {...}, "shared": {...}}."""
        device = self.authenticate(token)
        with self._store.read() as txn:
            out: dict[str, dict[str, Any]] = {}
            if client_keys is not None or shared_keys is None:
                out["client"] = self._entities.attributes(txn, device.id, Scope.CLIENT, client_keys)
            if shared_keys is not None or client_keys is None:
                out["shared"] = self._entities.attributes(txn, device.id, Scope.SHARED, shared_keys)
        return out

    def read_attributes(
        self,
        device_id: uuid.UUID,
        *,
        client_keys: tuple[str, ...] | None,
        shared_keys: tuple[str, ...] | None,
    ) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
        """ThingsBoard's reply shape, and the shared keys asked for that the edge does not hold
        (when shared attributes are asked for without keys and the edge holds none: ``("*",)``,
        all of them may be missing)."""
        with self._store.read() as txn:
            out: dict[str, dict[str, Any]] = {}
            if client_keys is not None or shared_keys is None:
                out["client"] = self._entities.attributes(txn, device_id, Scope.CLIENT, client_keys)
            if shared_keys is not None or client_keys is None:
                out["shared"] = self._entities.attributes(txn, device_id, Scope.SHARED, shared_keys)
        shared = out.get("shared")
        if shared is None:
            return out, ()
        if shared_keys is None:
            return out, () if shared else ("*",)
        return out, tuple(k for k in dict.fromkeys(shared_keys) if k not in shared)

    # -- sessions: what a device waits for ---------------------------------------------------

    def poll_rpc(self, device_id: uuid.UUID, subscriber: Subscriber) -> None:
        """``subscriber`` gets the device's next server-side RPC request, once recorded as
        delivered."""
        self._router.tell(PollRpc(device_id, subscriber))

    def rpc_acknowledged(self, sent: RpcSent) -> None:
        """The device acknowledged a request it was sent in flight (MQTT: its PUBACK): the
        device's entity actor records it DELIVERED. Returns at once (a mailbox, no wait)."""
        self._router.tell(RpcAcknowledged(sent.device_id, sent))

    def rpc_unsent(self, device_id: uuid.UUID, sent: Sequence[RpcSent], reason: str, *,
                   failed: bool = False, quiet: bool = False) -> None:
        """Requests sent in flight to ``device_id`` were lost unacknowledged (``reason``): the
        entity actor queues them again (``failed``: can never be sent, FAILED; ``quiet``: the
        loss is told in a line of its own, the requeue is a DEBUG line). Returns at once."""
        if sent:
            self._router.tell(RpcUnsent(device_id, tuple(sent), reason, failed, quiet))

    def poll_attributes(self, device_id: uuid.UUID, subscriber: Subscriber) -> None:
        """``subscriber`` gets the device's next shared attribute update (changed keys only)."""
        self._router.tell(PollAttributes(device_id, subscriber))

    def fetch_shared(self, device_id: uuid.UUID, subscriber: Subscriber | None,
                     wait_ms: int = 10_000) -> None:
        """Ask the cloud for the device's shared attributes (at most once per interval);
        ``subscriber`` (waiting up to ``wait_ms``) is woken when shared attributes of the device
        arrive, or at once when no answer is to be expected."""
        self._router.tell(FetchSharedAttributes(device_id, subscriber, wait_ms))

    # -- writes ------------------------------------------------------------------------------

    def telemetry_entries(self, device: Device, body: Any, transport: str) -> tuple[Entry, ...]:
        """A telemetry body of ``device`` (as parse_values_json decodes it, or any JSON value)
        read as ThingsBoard reads it: its entries (a body without ``ts`` stamped with the
        service's clock now), null values skipped and reported (``transport``: null_values.py's
        TRANSPORTS); BadRequest when it is invalid."""
        nulls: list[str] = []
        entries = parse_telemetry(body, now_ms=self._clock.now_ms(), type_cast=self.type_cast,
                                  nulls=nulls)
        if nulls:
            self._nulls.skipped(device.id, device.name, transport, nulls)
        return entries

    def attribute_values(self, device: Device, body: Any, transport: str) -> Values:
        """A client attributes body of ``device``, as telemetry_entries reads one."""
        nulls: list[str] = []
        values = parse_attributes(body, type_cast=self.type_cast, nulls=nulls)
        if nulls:
            self._nulls.skipped(device.id, device.name, transport, nulls)
        return values

    def nulls_skipped(self, device: Device, transport: str, keys: tuple[str, ...]) -> None:
        """Null values of ``device`` read elsewhere (a gateway's message) and skipped: counted
        and logged as telemetry_entries does."""
        self._nulls.skipped(device.id, device.name, transport, keys)

    def post_telemetry(self, token: str, body: Any, *, transport: str = "http") -> Future[range]:
        """Telemetry of the device of ``token`` (``transport``: which API took it, for the count
        of null values). A body with nothing to store (``{}``, ``[]``, only nulls) is done at
        once, as ThingsBoard acknowledges it."""
        device = self.authenticate(token)
        return self.post_entries(device.id, self.telemetry_entries(device, body, transport))

    def post_entries(self, device_id: uuid.UUID, entries: tuple[Entry, ...], *,
                     requires_device: bool = False) -> Future[range]:
        """Pre-validated telemetry for a known device (embedding, benchmark, the MQTT gateway).
        ``requires_device``: refused (NotFound, nothing written) unless the device exists when
        it commits (a device whose creation is on its way). No entries: nothing to store, done
        at once."""
        if not entries:
            return _nothing()
        reply: Future[range] = Future()
        self._router.tell(PostTelemetry(device_id, entries, reply, requires_device))
        return reply

    def post_attributes(self, token: str, body: Any, *, transport: str = "http") -> Future[range]:
        """Client attributes of the device of ``token``, as post_telemetry."""
        device = self.authenticate(token)
        return self.post_client_attributes(device.id,
                                           self.attribute_values(device, body, transport))

    def post_client_attributes(self, device_id: uuid.UUID, values: Values, *,
                               requires_device: bool = False) -> Future[range]:
        """Pre-validated client attributes of a known device (``requires_device``: as
        post_entries). No values: nothing to store, done at once."""
        if not values:
            return _nothing()
        reply: Future[range] = Future()
        self._router.tell(PostClientAttributes(device_id, values, self._clock.now_ms(), reply,
                                               requires_device))
        return reply

    def post_rpc_response(self, token: str, request_id: int, body: Any) -> Future[range]:
        """A device's answer to RPC request ``request_id`` (high lane: it overtakes telemetry).
        An answer no request awaits (no open request has that id: unknown, expired, timed out
        or answered already; any open request takes it, QUEUED included) is taken all the
        same, whichever transport brought it: nothing queued
        (the future resolves with no seqs), one WARNING line, counted in
        ``edge_sync_rpc_answers_dropped_total``. A resend could not help, and ThingsBoard's
        transports take such an answer too (HTTP 200, an MQTT acknowledgement)."""
        device = self.authenticate(token)
        return self.answer_rpc(device.id, request_id, body)

    def answer_rpc(self, device_id: uuid.UUID, request_id: int, body: Any) -> Future[range]:
        """As post_rpc_response, for a device known by id (a gateway's sub-device). ``body``:
        a JSON value, or a TextAnswer (devices/rpc.py: an answer that is not JSON, carried as
        its text)."""
        if isinstance(request_id, bool) or not isinstance(request_id, int) \
                or not 0 <= request_id < 2**31:
            raise BadRequest("RPC request id must be an integer 0..2147483647")
        if not isinstance(body, TextAnswer):
            check_json_value("rpc response", body)
        reply: Future[range] = Future()
        out: Future[range] = Future()

        def settled(done: Future[range]) -> None:
            exc = None if done.cancelled() else done.exception()
            if isinstance(exc, NotFound | Conflict):  # no request awaits it: taken, dropped
                _log.bind(device=str(device_id), rpc_id=request_id).warning(
                    "RPC answer dropped: {}", exc)
                if self._answers_dropped is not None:
                    self._answers_dropped.inc()
                out.set_result(range(0))
            elif done.cancelled():
                out.cancel()
            elif exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(done.result())

        reply.add_done_callback(settled)
        self._router.tell(PostRpcResponse(device_id, request_id, body, self._clock.now_ms(), reply))
        return out

    def raise_alarm(
        self,
        device_id: uuid.UUID,
        alarm_type: str,
        *,
        severity: str = "CRITICAL",
        details: Any = None,
        alarm_id: uuid.UUID | None = None,
        action: str = Action.ADDED,
    ) -> tuple[uuid.UUID, Future[range]]:
        """Raise (ADDED), acknowledge (ALARM_ACK) or clear (ALARM_CLEAR) an alarm on a device.
        Alarms go in the high lane and are never dropped, however long the cloud is away."""
        if self.device(device_id) is None:
            raise NotFound(f"no device {device_id}")
        if not text_fits(alarm_type, MAX_NAME_BYTES):
            raise BadRequest(f"alarm type must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
        if severity not in SEVERITIES:
            raise BadRequest(f"alarm severity must be one of {', '.join(SEVERITIES)}")
        if action not in (Action.ADDED, Action.ALARM_ACK, Action.ALARM_CLEAR):
            raise BadRequest("alarm action must be ADDED, ALARM_ACK or ALARM_CLEAR")
        if action != Action.ADDED and alarm_id is None:
            raise BadRequest("acknowledging or clearing an alarm needs its id")
        if details is not None:
            check_json_value("alarm details", details)
        alarm_id = alarm_id or ids.time_based(self._clock.now_ms())
        status = {Action.ADDED: "ACTIVE_UNACK", Action.ALARM_ACK: "ACTIVE_ACK",
                  Action.ALARM_CLEAR: "CLEARED_UNACK"}[Action(action)]
        now = self._clock.now_ms()
        alarm = (("type", alarm_type), ("severity", severity), ("status", status),
                 ("startTs", now), ("details", details))
        reply: Future[range] = Future()
        self._router.tell(RaiseAlarm(device_id, alarm_id, str(action), alarm, now, reply))
        return alarm_id, reply

    def last_alarm(self, alarm_id: uuid.UUID) -> dict[str, Any] | None:
        """The body of the newest event of an alarm the edge raised or changed (type,
        severity, details, originator, ...), while the log still holds it; None otherwise.
        Reads the whole log: for operator commands, off the event loop."""
        found: dict[str, Any] | None = None
        with self._store.read() as txn:
            for event in EventLog(self._store).iter_events(txn, entity_id=alarm_id):
                if event.type == "ALARM" and isinstance(event.body, dict):
                    found = event.body
        return found

    def change_alarm(self, alarm_id: uuid.UUID, action: str, *,
                     device_id: uuid.UUID | None = None,
                     alarm_type: str | None = None) -> Future[range]:
        """Acknowledge (ALARM_ACK) or clear (ALARM_CLEAR) an alarm known by its id: its device,
        type, severity and details are those of its last event in the log unless given.
        NotFound when neither is there."""
        if action not in (Action.ALARM_ACK, Action.ALARM_CLEAR):
            raise BadRequest("alarm action must be ALARM_ACK or ALARM_CLEAR")
        last = self.last_alarm(alarm_id) or {}
        if device_id is None and last.get("originator"):
            device_id = uuid.UUID(str(last["originator"]))
        alarm_type = alarm_type or last.get("type")
        if device_id is None or not alarm_type:
            raise NotFound(f"no alarm {alarm_id} in the event log: name its device and type")
        severity = last.get("severity") or "CRITICAL"
        _, future = self.raise_alarm(device_id, str(alarm_type), severity=str(severity),
                                     details=last.get("details"), alarm_id=alarm_id,
                                     action=action)
        return future

    def get_or_create_device(self, name: str, *, type_: str = "default",
                             created_by: uuid.UUID | None = None) -> NamedDevice:
        """The device named ``name``; when the edge has none, it is created (as create_device,
        with ``type_``, ``created_by`` as its lastConnectedGateway), as ThingsBoard's gateway
        API does. Any thread: callers naming a device while its creation is on its way (asked
        for by another caller, or by an operator through create_device) get that device and
        a future of that creation, so it is created once. Its data told to the router after
        the creation (same entity, same order) is appended after it; data that may reach the
        queue before the creation is known to have committed should require the device
        (post_entries). BadRequest for a name or type create_device refuses.

        The creation's commit stays here: each caller gets a follower of it, and the pending
        entry leaves the map (committed: the store has the device; failed: the next caller
        creates it again) before any follower is settled."""
        with self._creating_lock:
            pending = self._pending(name)
            if pending is not None:
                return NamedDevice(pending[0], follower(pending[1]))
            with self._store.read() as txn:
                found = self._entities.device_by_name(txn, name)
            if found is not None:
                return NamedDevice(found)
            device = self._new_device(name, type_=type_)
            creation = self._create(device, created_by)
        return NamedDevice(device, follower(creation), new=True)

    def create_device(
        self, name: str, *, type_: str = "default", token: str | None = None, label: str = "",
        gateway: bool = False, created_by: uuid.UUID | None = None,
    ) -> tuple[Device, Future[range]]:
        """Provision a device on the edge (``gateway``: it may speak the MQTT gateway API;
        ``created_by``: the gateway that named it). The future fails with Conflict on a name
        or token taken when it commits, and at once (nothing told) when a device of that name
        is being created (by a gateway naming it, or another operator)."""
        device = self._new_device(name, type_=type_, token=token, label=label, gateway=gateway)
        with self._creating_lock:
            if self._pending(name) is None:
                return device, follower(self._create(device, created_by))
        refused: Future[range] = Future()
        refused.set_exception(Conflict(f"a device named {name!r} is being created"))
        return device, refused

    def _new_device(self, name: str, *, type_: str, token: str | None = None, label: str = "",
                    gateway: bool = False) -> Device:
        """A device to create, its fields checked (BadRequest), its id and token new."""
        if not text_fits(name, MAX_NAME_BYTES):
            raise BadRequest(f"device name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
        if not text_fits(type_, MAX_NAME_BYTES):
            raise BadRequest(f"device type must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
        if not text_fits(label, MAX_LABEL_BYTES, allow_empty=True):
            raise BadRequest(f"device label must be text of at most {MAX_LABEL_BYTES} bytes")
        if token is not None and (not text_fits(token, MAX_NAME_BYTES) or "/" in token
                                  or token != token.strip()):
            raise BadRequest(f"access token must be 1 to {MAX_NAME_BYTES} bytes without '/' "
                             "or surrounding spaces")
        now = self._clock.now_ms()
        return Device(
            id=ids.time_based(now),
            name=name,
            type=type_,
            token=token or secrets.token_urlsafe(15),
            created_time=now,
            label=label,
            gateway=gateway,
        )

    def _pending(self, name: str) -> tuple[Device, Future[range], int] | None:
        """Under ``_creating_lock``: the creation of ``name`` on its way, if any; one pending
        for longer than PENDING_CREATION_MAX_MS is forgotten (logged)."""
        pending = self._creating.get(name)
        if pending is None:
            return None
        device, _creation, since = pending
        if self._clock.now_ms() - since <= PENDING_CREATION_MAX_MS:
            return pending
        del self._creating[name]
        _log.bind(device=str(device.id)).warning(
            "creation of device {!r} not settled after {} s: its name is no longer held for it "
            "(a device of that name may be created again; the store keeps names unique)",
            name[:64], PENDING_CREATION_MAX_MS // 1000)
        return None

    def _create(self, device: Device, created_by: uuid.UUID | None) -> Future[range]:
        """Under ``_creating_lock``: ``device``'s name is pending until its creation's commit
        settles, and the creation is told to its entity (so whatever a caller tells the entity
        after it comes after it). The creation's own future: never handed out."""
        creation: Future[range] = Future()
        name = device.name
        self._creating[name] = (device, creation, self._clock.now_ms())

        def committed(_done: Future[range]) -> None:  # the queue's thread, after the commit
            with self._creating_lock:  # committed: the store has it; failed: ask again
                if self._creating.get(name, (None,))[0] is device:
                    del self._creating[name]

        creation.add_done_callback(committed)  # first: before any follower is settled
        self._router.tell(ProvisionDevice(device, creation, created_by))
        return creation
