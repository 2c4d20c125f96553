"""The reference cloud's operations, shared by the admin HTTP API (server running) and the CLI
(server stopped): register edges, provision devices, set shared attributes, list what an edge
sent. Writes that produce downlinks queue them durably, then call ``notify(edge_id)`` so a
connected stream sends them at once.

New edges and devices get time-based ids made at their creation time (common/ids.py), as
ThingsBoard's entities do.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.cloud import credentials, downlinks
from edge_sync.cloud.counters import CloudCounters
from edge_sync.cloud.records import AppliedRecord, CloudDevice, EdgeRecord, ParkedDownlink
from edge_sync.cloud.store import CloudStore
from edge_sync.common import ids
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.validators import MAX_KEY_BYTES, MAX_LABEL_BYTES, MAX_NAME_BYTES, is_int64, key_fits, text_fits

_log = logger.bind(component="cloud")


def _text(value: Any, what: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    if not text_fits(value, max_bytes):
        raise BadRequest(f"{what}: expected text of 1 to {max_bytes} bytes of UTF-8")
    return value


def _label(value: Any) -> str:
    if value is None:
        return ""
    if not text_fits(value, MAX_LABEL_BYTES, allow_empty=True):
        raise BadRequest(f"label: expected text of at most {MAX_LABEL_BYTES} bytes of UTF-8")
    return value


def _token_text(value: Any, what: str) -> str:
    text = _text(value, what)
    if any(c.isspace() for c in text):
        raise BadRequest(f"{what}: must not contain whitespace")
    return text


def check_attribute_values(values: Any) -> dict[str, Any]:
    """Validate {key: value} for shared attributes (values: bool, int64, finite float, str,
    JSON object or array); BadRequest names the problem."""
    if not isinstance(values, dict) or not values:
        raise BadRequest("values: expected a non-empty JSON object of key/value pairs")
    for key, value in values.items():
        if not key_fits(key):
            raise BadRequest(f"attribute key {key!r}: expected 1 to {MAX_KEY_BYTES} bytes of UTF-8")
        if isinstance(value, bool | str | dict | list):
            continue
        if isinstance(value, int):
            if not is_int64(value):
                raise BadRequest(f"attribute {key!r}: integer does not fit in 64 bits")
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise BadRequest(f"attribute {key!r}: not a finite number")
            continue
        raise BadRequest(f"attribute {key!r}: unsupported value {value!r}")
    return dict(values)


@dataclass(frozen=True, slots=True)
class AttributeSet:
    """Shared attributes checked and ready to store (prepare_attributes), with their downlink."""

    device: CloudDevice
    values: dict[str, Any]
    ts: int
    downlink: bytes


class CloudService:
    """The cloud's operations. Their arguments are untrusted (the admin API passes JSON fields as
    they come, of any type): each is checked here and a bad one raises BadRequest."""

    def __init__(
        self,
        store: CloudStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        notify: Callable[[uuid.UUID], None] | None = None,
        id_source: ids.TimeBasedIds = ids.PROCESS_IDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self._ids = id_source
        self._notify = notify
        self.graph = store.graph
        """The entity graph (cloud/graph_store.py); its commits wake the edges they queued for."""
        self.graph.notify = self.wake

    def attach_counters(self, counters: CloudCounters) -> None:
        """Count the entity graph's downlinks (edge_cloud_graph_downlinks_queued_total) in the
        server's counters."""
        self.graph.on_queued = lambda queued: counters.counted(counters.graph_downlinks, queued)

    # -- edges -----------------------------------------------------------------------------------

    def create_edge(
        self,
        name: object,
        *,
        routing_key: object = None,
        secret: object = None,
        type_: object = "default",
    ) -> tuple[EdgeRecord, str, bool]:
        """(edge, secret, created). Given an existing routing key with the same name and secret,
        returns that edge (created False) so set-up scripts can run twice; Conflict otherwise."""
        name = _text(name, "name")
        type_ = _text(type_ or "default", "type")
        routing_key = credentials.new_routing_key() if routing_key is None else _token_text(
            routing_key, "routing_key")
        secret = credentials.new_secret() if secret is None else _token_text(secret, "secret")
        existing = self.store.edge(routing_key)
        if existing is not None:
            if existing.name == name and self._secret_ok(existing, secret):
                return existing, secret, False
            raise Conflict(f"an edge with routing key {routing_key!r} already exists")
        salt, digest = credentials.hash_secret(secret)
        now = self.clock.now_ms()
        edge = EdgeRecord(
            edge_id=self._ids.new(now), tenant_id=self.store.tenant_id(), routing_key=routing_key,
            name=name, type=type_, created_time=now, salt=salt,
            secret_hash=digest, kdf=credentials.DEFAULT_KDF,
        )
        self.store.add_edge(edge)
        _log.bind(routing_key=routing_key, edge_id=str(edge.edge_id), name=name).info("edge created")
        return edge, secret, True

    def authenticate(self, routing_key: str, secret: str) -> EdgeRecord | None:
        """The edge when the routing key and secret match, else None (same cost either way)."""
        edge = self.store.edge(routing_key) if routing_key else None
        if edge is None:
            credentials.burn_time(secret)
            return None
        return edge if self._secret_ok(edge, secret) else None

    @staticmethod
    def _secret_ok(edge: EdgeRecord, secret: str) -> bool:
        return credentials.verify_secret(secret, edge.salt, edge.secret_hash, edge.kdf)

    def edge(self, ref: object) -> EdgeRecord:
        """An edge by routing key (or by edge id); NotFound."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest("edge: expected a routing key")
        edge = self.store.edge(ref)
        if edge is None:
            try:
                edge = self.store.edge_by_id(uuid.UUID(ref))
            except ValueError:
                edge = None
        if edge is None:
            raise NotFound(f"no edge with routing key {ref!r}")
        return edge

    def edges(self) -> list[dict[str, Any]]:
        out = []
        for edge in self.store.edges():
            row = edge.as_json()
            row["applied_events"] = self.store.applied_count(edge.edge_id)
            row["queued_downlinks"] = self.store.queued_downlinks(edge.edge_id)
            row["parked_downlinks"] = self.store.dead_downlinks(edge.edge_id)
            row["devices"] = len(self.store.devices_of_edge(edge.edge_id))
            out.append(row)
        return out

    # -- devices and attributes ------------------------------------------------------------------

    def create_device(
        self,
        edge_ref: object,
        name: object,
        *,
        type_: object = None,
        label: object = None,
        token: object = None,
    ) -> tuple[CloudDevice, list[int]]:
        """Create a device assigned to the edge and queue its downlink: one DownlinkMsg with
        deviceUpdateMsg ENTITY_CREATED, the deviceProfileUpdateMsg of its type (the profile as
        the entity graph stores it, made when the type has none) and its
        deviceCredentialsUpdateMsg, as a full sync sends a device. (device, downlink numbers)."""
        edge = self.edge(edge_ref)
        now = self.clock.now_ms()
        device = CloudDevice(
            id=self._ids.new(now), edge_id=edge.edge_id, name=_text(name, "name"),
            type=_text(type_ or "default", "type"), label=_label(label),
            token=credentials.new_access_token() if token is None else _token_text(token, "token"),
            created_time=now, origin="cloud",
        )
        # always with its profile: whether the edge has it cannot be known here (an earlier
        # profile downlink may have been parked, or another device of the type be created at the
        # same time), and a ThingsBoard Edge refuses a device whose profile it lacks. The
        # downlink is built in the device's transaction (downlinks None), so the profile it
        # carries is the graph's as committed, never an older copy that would undo a change
        numbers = self.store.add_device(device, None)
        _log.bind(device_id=str(device.id), name=device.name, routing_key=edge.routing_key,
                  downlinks=numbers).info("device created")
        self._wake(edge.edge_id)
        return device, numbers

    def device(self, ref: object, edge_ref: object = None) -> CloudDevice:
        """A device by id or by name (names are unique per edge: give the edge when several
        edges have one of that name); NotFound / BadRequest."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest("device: expected a device id or name")
        edge = self.edge(edge_ref) if edge_ref else None
        try:
            device = self.store.device(uuid.UUID(ref))
        except ValueError:
            device = None
        if device is not None and (edge is None or device.edge_id == edge.edge_id):
            return device
        found = self.store.devices_named(ref, edge.edge_id if edge else None)
        if not found:
            where = f" on edge {edge.routing_key!r}" if edge else ""
            raise NotFound(f"no device {ref!r}{where}")
        if len(found) > 1:
            raise BadRequest(f"several edges have a device named {ref!r}: name the edge")
        return found[0]

    def set_attributes(
        self, device_ref: object, values: object, *, edge_ref: object = None
    ) -> tuple[CloudDevice, int]:
        """Set shared attributes of a device and queue their downlink; (device, number)."""
        prepared = self.prepare_attributes(device_ref, values, edge_ref=edge_ref)
        number = self.store.set_shared_attributes(prepared.device, prepared.values, prepared.ts,
                                                  prepared.downlink)
        self.attributes_set(prepared, number)
        return prepared.device, number

    def prepare_attributes(self, device_ref: object, values: object, *,
                           edge_ref: object = None) -> AttributeSet:
        """The first half of set_attributes (blocking: reads): check the values, find the
        device, build the downlink. The admin API then submits the write
        (store.submit_shared_attributes, committed with others) and calls attributes_set."""
        checked = check_attribute_values(values)
        device = self.device(device_ref, edge_ref)
        ts = self.clock.now_ms()
        return AttributeSet(device, checked, ts, downlinks.shared_attributes(device, checked, ts))

    def attributes_set(self, prepared: AttributeSet, number: int) -> None:
        """After the write committed: log it and wake the edge's stream."""
        _log.bind(device_id=str(prepared.device.id), keys=sorted(prepared.values),
                  downlink=number).info("shared attributes set")
        self._wake(prepared.device.edge_id)

    # -- views -----------------------------------------------------------------------------------

    def events(self, edge_ref: str, *, after: int = 0, limit: int = 0) -> list[AppliedRecord]:
        edge = self.edge(edge_ref)
        return self.store.events(edge.edge_id, after=after, limit=limit)

    def parked_downlinks(self, edge_ref: object, *, limit: int = 0) -> list[ParkedDownlink]:
        """The edge's parked downlinks (refused max_attempts times, or too large), oldest first."""
        edge = self.edge(edge_ref)
        return self.store.parked_downlinks(edge.edge_id, limit=limit)

    def wake(self, edge_id: uuid.UUID) -> None:
        """Tell the edge's stream (when connected) that downlinks were queued."""
        if self._notify is not None:
            self._notify(edge_id)

    _wake = wake
