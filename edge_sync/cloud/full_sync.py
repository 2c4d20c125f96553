"""What the reference cloud sends an edge in a full sync: everything on the edge, in
ThingsBoard's order (entity_graph.KINDS: its EdgeSyncCursor): the tenant, the queues, rule chains
each followed by its metadata, users, widget types, widget bundles, customers, dashboards, device
profiles, asset profiles, the edge's devices with their credentials, assets, entity views, the
relations whose both ends are on the edge, the devices' shared attributes, then SyncCompletedMsg
alone (docs/reference-cloud.md).

The entries are packed many to a DownlinkMsg (downlink_batch.Packer: up to 100, within the
edge's maxInboundMessageSize, kinds together only where a ThingsBoard Edge's apply order agrees),
so a sync of thousands of entities takes tens of round trips rather than thousands. Entities are
read from the store in chunks, each chunk in its own read transaction, as the stream needs the
next pack: a sync holds no snapshot open and no more than a chunk and a pack in memory, plus the
ids on the edge (for its relations). A change made meanwhile is queued for the edge anyway (the
durable queue follows the sync); what was queued before the sync started and carries only graph
changes is dropped once the edge has acknowledged the sync's end (session.py: the sync sent the
graph as it was, and the edge removed at its end what it did not send).

Left out: an entity assigned to the edge whose hard references (entity_graph.references) are not
all on it, e.g. an entity view of an asset not assigned there: the edge would hold it for ever,
waiting. One WARNING per sync says how many and what each lacks; CloudGraph.assignment() leaves
them out too, and assigning what they lack queues them for the edge again (graph_store.py).

Also the stable ids of the cloud's own entities (queues, rule chain, rule nodes, profiles):
time-based, made once and kept in the store, so every sync and every restart names the same ones.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from edge_sync.cloud import downlink_batch, downlinks, tb_entities
from edge_sync.cloud.graph_keys import user_customer
from edge_sync.cloud.graph_store import (
    ASSET_PROFILE,
    METADATA,
    QUEUES,
    ROOT_CHAIN,
    TENANT_WIDE,
    node_name,
    profile_name,
)
from edge_sync.cloud.records import CloudDevice, EdgeRecord, QueuedDownlink, downlink_msg_id
from edge_sync.common import entity_graph, ids
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from edge_sync.cloud.store import CloudStore

CHUNK = 256
"""Entities read in one read transaction."""
LOGGED_LEFT_OUT = 10
"""Entities left out of a sync named in its log line (the rest counted)."""

_log = logger.bind(component="cloud-sync")


@dataclass(frozen=True, slots=True)
class TenantEntities:
    """The ids of the cloud's own entities that a sync names."""

    rule_chain_id: uuid.UUID
    node_ids: list[uuid.UUID]
    asset_profile_id: uuid.UUID
    device_profiles: dict[str, uuid.UUID]  # device type -> profile id ("default" always)
    queues: dict[str, uuid.UUID]  # queue name -> id, in ThingsBoard's order


def tenant_entities(store: CloudStore, device_types: Iterable[str],
                    make: Callable[[], uuid.UUID] = ids.time_based) -> TenantEntities:
    """The stable ids of the root rule chain, its nodes, the default asset profile, the default
    queues and the device profiles of ``device_types`` (and the default one), made on first use
    with ``make``."""
    types = sorted({tb_entities.DEFAULT_PROFILE, *device_types})
    nodes = [node_name(i) for i in range(len(tb_entities.ROOT_CHAIN_NODES))]
    names = [ROOT_CHAIN, *nodes, ASSET_PROFILE, *QUEUES]
    found = store.named_ids(names, make)
    return TenantEntities(
        rule_chain_id=found[ROOT_CHAIN], node_ids=[found[n] for n in nodes],
        asset_profile_id=found[ASSET_PROFILE],
        device_profiles={t: device_profile_id(store, t, make) for t in types},
        queues={key.removeprefix("queue:"): found[key] for key in QUEUES})


def device_profile_id(store: CloudStore, device_type: str,
                      make: Callable[[], uuid.UUID] = ids.time_based) -> uuid.UUID:
    """The id of the device profile named ``device_type``: the graph's profile of that name,
    made (with the id the cloud keeps for the name) on first use."""
    if not store.graph.available:
        name = profile_name(device_type)
        return store.named_ids([name], make)[name]
    return store.graph.device_profile_id(device_type, ids.unix_ms(make()))


# -- what is on an edge, in sync order -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One entity to send: its kind, id, JSON and (a device) its record."""

    kind: str
    id: uuid.UUID
    json: str
    device: CloudDevice | None = None


def _chunks(store: CloudStore, scan: Callable[[Any, Any], tuple[list[_Item], Any]]
            ) -> Iterator[_Item]:
    """Items read ``CHUNK`` at a time, each chunk in its own read transaction: ``scan(txn,
    position)`` gives (items, next position), no items at the end."""
    position: Any = None
    while True:
        with store.lmdb.read() as txn:
            items, position = scan(txn, position)
        if not items:
            return
        yield from items


def _of_kind(store: CloudStore, kind: str) -> Iterator[_Item]:
    graph = store.graph

    def scan(txn: Any, after: Any) -> tuple[list[_Item], Any]:
        found = list(graph._ids_of_kind(txn, kind, after, CHUNK))
        items = []
        for entity_id in found:
            rec = graph._get(txn, entity_id)
            if rec is not None:
                items.append(_Item(kind, entity_id, rec.json))
        return items, (found[-1] if found else None)

    return _chunks(store, scan)


def _assigned(store: CloudStore, edge_id: uuid.UUID, kind: str) -> Iterator[_Item]:
    graph = store.graph
    rank = entity_graph.BY_TYPE[kind].sync_rank

    def scan(txn: Any, after: Any) -> tuple[list[_Item], Any]:
        found = graph.assigned(txn, edge_id, rank=rank, after=after or b"", limit=CHUNK)
        items = []
        for _, _, entity_id in found:
            rec = graph._get(txn, entity_id)
            if rec is not None:
                items.append(_Item(kind, entity_id, rec.json))
        return items, (found[-1][0] if found else None)

    return _chunks(store, scan)


def _devices(store: CloudStore, edge_id: uuid.UUID) -> Iterator[CloudDevice]:
    def scan(txn: Any, after: Any) -> tuple[list[_Item], Any]:
        found = store._devices_of_edge(txn, edge_id, after=after, limit=CHUNK)
        return ([_Item("DEVICE", d.id, "", d) for d in found],
                (found[-1].id if found else None))

    for item in _chunks(store, scan):
        assert item.device is not None
        yield item.device


WAITABLE = frozenset(entity_graph.BY_TYPE) | {"WIDGET_TYPE_FQN"}
"""The references an edge waits for (storage/graph_store.WAITABLE): any other kind (an edge)
the edge takes as there."""
_WITH_REFS = frozenset({"WIDGET_TYPE", METADATA, "DASHBOARD", "ASSET", "ENTITY_VIEW"})
"""The graph kinds whose JSON names hard references, or provides one besides its id (a widget
type's fqn): read to check an entity's references. The others only provide their id."""


@dataclass(frozen=True, slots=True)
class LeftOut:
    """An entity assigned to the edge that a sync leaves out: what it references is not sent."""

    kind: str
    id: uuid.UUID
    missing: tuple[entity_graph.Ref, ...]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} needs {', '.join(str(r) for r in self.missing)}"


def _edge_items(store: CloudStore, edge: EdgeRecord, now_ms: int,
                left_out: list[LeftOut] | None = None) -> Iterator[_Item]:
    """Every entity on the edge (not relations), in sync order: a rule chain is followed by its
    metadata (kind RULE_CHAIN_METADATA, under the chain's id), a device is an item of kind
    DEVICE with its record (its JSON is made when sent).

    Left out (added to ``left_out``): an entity whose hard references (entity_graph.references)
    are not all on the edge, such as an entity view of an asset not assigned to it, and what
    references a left-out one. Sent, the edge would hold it for ever, waiting; and that edge's
    delete of what it referenced has removed it (CloudGraph unassigns such dependants too; this
    is the defence in depth). The sync's order sends references first, so each is checked
    against what the sync has sent; a rule chain's metadata against every chain on the edge (it
    follows its own chain, and may name one sent after it)."""
    graph = store.graph
    root = graph.root_chain_id()
    profiles: dict[str, uuid.UUID] = {}
    sent: set[entity_graph.Ref] = {entity_graph.Ref("EDGE", str(edge.edge_id))}

    def missing(kind: str, body: Any) -> tuple[entity_graph.Ref, ...]:
        refs = (entity_graph.references(kind, {**body, "ruleChainId": None}) if kind == METADATA
                else entity_graph.references(kind, body))
        return tuple(r for r in refs if r.kind in WAITABLE and r not in sent)

    for kind in entity_graph.KINDS:
        name = kind.entity_type
        if name in (METADATA, "USER_CREDENTIALS", "DEVICE_CREDENTIALS", "RELATION"):
            continue
        if name == "DEVICE":
            for device in _devices(store, edge.edge_id):
                if device.type not in profiles:
                    profiles[device.type] = graph.device_profile_id(device.type, now_ms)
                sent.add(entity_graph.Ref("DEVICE", str(device.id)))
                yield _Item("DEVICE", device.id, str(profiles[device.type]), device)
            continue
        if name == "DEVICE_PROFILE":  # the profiles of the edge's devices' types exist first
            with store.lmdb.read() as txn:
                types = {d.type for d in store._devices_of_edge(txn, edge.edge_id)}
            for device_type in sorted(types):
                profiles[device_type] = graph.device_profile_id(device_type, now_ms)
        if name == "USER":  # tenant users, and the users of the edge's customers
            customers = {str(c) for c in _assigned_ids(store, edge.edge_id, "CUSTOMER")}
            items: Iterable[_Item] = (u for u in _of_kind(store, name)
                                      if _user_customer_key(u.json) in customers | {None})
        elif name in TENANT_WIDE:
            items = _of_kind(store, name)
        elif name == "RULE_CHAIN":
            sent.update(entity_graph.Ref("RULE_CHAIN", str(c)) for c in _chain_ids(store, edge, root))
            items = _rule_chains(store, edge.edge_id, root)
        else:
            items = _assigned(store, edge.edge_id, name)
        for item in items:
            if item.kind in _WITH_REFS:
                body = json.loads(item.json)
                lacks = missing(item.kind, body)
                if lacks:
                    if left_out is not None:
                        left_out.append(LeftOut(item.kind, item.id, lacks))
                    continue
                sent.update(entity_graph.provides(item.kind, item.id, body))
            else:
                sent.add(entity_graph.Ref(item.kind, str(item.id)))
            yield item
            if item.kind == "RULE_CHAIN":
                meta = graph.metadata(item.id)
                if meta is None:
                    continue
                lacks = missing(METADATA, json.loads(meta))
                if lacks:
                    if left_out is not None:
                        left_out.append(LeftOut(METADATA, item.id, lacks))
                    continue
                yield _Item(METADATA, item.id, meta)


def _assigned_ids(store: CloudStore, edge_id: uuid.UUID, kind: str) -> list[uuid.UUID]:
    rank = entity_graph.BY_TYPE[kind].sync_rank
    with store.lmdb.read() as txn:
        return [entity_id for _, _, entity_id in store.graph.assigned(txn, edge_id, rank=rank)]


def _user_customer_key(text: str) -> str | None:
    """A user's customer id as text, None (always sent) for a tenant user."""
    customer = user_customer(json.loads(text))
    return None if customer is None else str(customer)


def _chain_ids(store: CloudStore, edge: EdgeRecord, root: uuid.UUID | None) -> list[uuid.UUID]:
    """The rule chains on the edge: the root one and those assigned to it (a handful)."""
    rank = entity_graph.BY_TYPE["RULE_CHAIN"].sync_rank
    with store.lmdb.read() as txn:
        found = [entity_id for _, _, entity_id in store.graph.assigned(txn, edge.edge_id, rank=rank)]
    return ([root] if root is not None else []) + found


def _rule_chains(store: CloudStore, edge_id: uuid.UUID, root: uuid.UUID | None) -> Iterator[_Item]:
    if root is not None:
        entity = store.graph.entity(root)
        if entity is not None:
            yield _Item("RULE_CHAIN", root, entity.json)
    for item in _assigned(store, edge_id, "RULE_CHAIN"):
        if item.id != root:
            yield item


def edge_entities(store: CloudStore, edge_id: uuid.UUID) -> list[tuple[str, uuid.UUID, str]]:
    """(entity type, id, JSON as sent) of everything on the edge, in full-sync order (a rule
    chain followed by its metadata; devices with the JSON a sync sends)."""
    edge = store.edge_by_id(edge_id)
    if edge is None:
        return []
    out = []
    for item in _edge_items(store, edge, ids.unix_ms(ids.time_based())):
        if item.device is not None:
            msg = downlinks.device_update(item.device, edge.tenant_id, uuid.UUID(item.json))
            out.append(("DEVICE", item.id, str(msg.entity)))
        else:
            out.append((item.kind, item.id, item.json))
    return out


# -- the sync's entries and packs ------------------------------------------------------------------


def entries(store: CloudStore, edge: EdgeRecord, now_ms: int) -> Iterator[tuple[str, bytes]]:
    """(DownlinkMsg field, serialized entry) of everything a full sync sends but its
    SyncCompletedMsg, in order."""
    on_edge: set[uuid.UUID] = {edge.edge_id}
    devices: list[uuid.UUID] = []
    left_out: list[LeftOut] = []
    for item in _edge_items(store, edge, now_ms, left_out):
        on_edge.add(item.id)
        if item.device is not None:
            devices.append(item.id)
            yield "deviceUpdateMsg", downlinks.device_update(
                item.device, edge.tenant_id, uuid.UUID(item.json)).SerializeToString()
            if item.device.token:
                yield ("deviceCredentialsUpdateMsg",
                       downlinks.credentials_update(item.device).SerializeToString())
            continue
        action = "UPDATED" if item.kind == "TENANT" else "ADDED"
        field, msg = downlinks.entity_message(item.kind, action, item.id, item.json)
        yield field, msg.SerializeToString()
    if left_out:
        kinds = Counter(lo.kind for lo in left_out)
        _log.bind(edge=edge.routing_key, edge_id=str(edge.edge_id), left_out=len(left_out),
                  kinds=dict(kinds), first=[str(lo) for lo in left_out[:LOGGED_LEFT_OUT]]).warning(
            "full sync of edge {}: {} entities assigned to it left out, what they reference is "
            "not on the edge (the edge would hold them for ever): {}{}", edge.routing_key,
            len(left_out), "; ".join(str(lo) for lo in left_out[:LOGGED_LEFT_OUT]),
            f"; and {len(left_out) - LOGGED_LEFT_OUT} more" if len(left_out) > LOGGED_LEFT_OUT else "")
    yield from _relations(store, on_edge)
    for start in range(0, len(devices), CHUNK):
        with store.lmdb.read() as txn:
            found = [(d, store._attributes(txn, d)) for d in devices[start:start + CHUNK]]
        for device_id, values in found:
            if values:
                yield "entityData", downlinks.attributes_entry(
                    "DEVICE", device_id, "SHARED_SCOPE", values, now_ms).SerializeToString()


def _relations(store: CloudStore, on_edge: set[uuid.UUID]) -> Iterator[tuple[str, bytes]]:
    """The relations whose both ends are on the edge (each once: read from its ``from`` end)."""
    graph = store.graph
    order = sorted(on_edge)
    for start in range(0, len(order), CHUNK):
        with store.lmdb.read() as txn:
            found = [rel for entity_id in order[start:start + CHUNK]
                     for rel in graph.relations_from(txn, entity_id)
                     if uuid.UUID(rel["to"]["id"]) in on_edge]
        for rel in found:
            field, msg = downlinks.relation_message(
                "RELATION_ADD_OR_UPDATE", json.dumps(rel, separators=(",", ":"), ensure_ascii=False))
            yield field, msg.SerializeToString()


def packs(store: CloudStore, edge: EdgeRecord, now_ms: int, *,
          max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
          max_count: int = downlink_batch.MAX_PACK) -> Iterator[bytes]:
    """The full sync's DownlinkMsgs (serialized, without id and time), SyncCompletedMsg alone
    last (a ThingsBoard Edge applies a message's syncCompletedMsg before its other lists)."""
    yield from downlink_batch.pack_all(entries(store, edge, now_ms), max_bytes=max_bytes,
                                       max_count=max_count)
    yield downlinks.sync_completed()


def full_sync(store: CloudStore, edge: EdgeRecord, now_ms: int, *,
              max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[bytes]:
    """Every downlink of a full sync of ``edge``, in order (all at once: for tests and tools;
    a stream reads them as it goes, SyncStream)."""
    return list(packs(store, edge, now_ms, max_bytes=max_bytes))


class SyncStream:
    """A full sync as the stream sends it: the next pack read and numbered only when the one
    before it is done. Numbers are reserved among the edge's downlink numbers a few at a time."""

    RESERVE = 64

    def __init__(self, store: CloudStore, edge_id: uuid.UUID, payloads: Iterable[bytes]) -> None:
        self._store = store
        self._edge_id = edge_id
        self._payloads = iter(payloads)
        self._numbers: list[int] = []
        self._ahead: list[QueuedDownlink] = []
        self._done = False
        self.sent_packs = 0
        self.entries = 0

    def _number(self) -> int:
        if not self._numbers:
            self._numbers = self._store.reserve_downlink_numbers(self._edge_id, self.RESERVE)
        return self._numbers.pop(0)

    def _read_next(self) -> None:
        payload = next(self._payloads, None)
        if payload is None:
            self._done = True
            return
        number = self._number()
        self._ahead.append(QueuedDownlink(number, downlink_msg_id(number), payload, durable=False))

    def head(self) -> QueuedDownlink | None:
        """The next downlink of the sync (read from the store when needed); None when over."""
        if not self._ahead and not self._done:
            self._read_next()
        return self._ahead[0] if self._ahead else None

    def pop(self) -> None:
        """The head is done (acknowledged, or parked)."""
        if self._ahead:
            self._ahead.pop(0)
            self.sent_packs += 1

    def split_head(self) -> int:
        """Replace the head (a pack the edge refused) by its entries one per downlink, so a bad
        entry is refused (and parked) alone; how many."""
        head = self._ahead.pop(0)
        parts = downlink_batch.split(head.payload)
        numbers = [self._number() for _ in parts]
        self._ahead[:0] = [QueuedDownlink(n, downlink_msg_id(n), p, durable=False)
                           for n, p in zip(numbers, parts, strict=True)]
        return len(parts)

    def __bool__(self) -> bool:
        return self.head() is not None

    def __iter__(self) -> Iterator[QueuedDownlink]:
        """Every downlink left, without taking any (reads the rest of the sync at once: for
        tests and tools, not the stream)."""
        while not self._done:
            self._read_next()
        return iter(list(self._ahead))
