"""The reference cloud's LMDB store: edges, what they sent (deduplicated by (edge, edge store,
seq), in apply order), devices, shared attributes and the durable downlink queue of each edge;
the entity graph's databases live in it too (cloud/graph_store.py owns them), and an uplink's
entity changes are applied to the graph in the uplink's transaction.

It reuses LmdbStore's opening, map growth and transaction machinery (``CloudLmdb`` gives it the
cloud's database names and format stamp). Several processes may open it at once: the server and
the CLI (LMDB serialises writers; readers see consistent snapshots).

An edge's local store gets a random id when it is created; a store created anew (lost disk,
operator reset) restarts seqs at 1 under a new id. The cloud numbers the store ids it sees per
edge (its incarnations, from 1; 0 is the edge that sends no store id: ThingsBoard, or older) and
deduplicates by (edge, incarnation, seq). The apply order stays one per edge, across
incarnations.

Layout (edge_id, device_id: 16 raw UUID bytes; numbers: u64 big-endian):
  meta          b"format" -> b"edge-cloud/3"; b"tenant" -> tenant_id (time-based when the
                store was made by this release, random in a store made before);
                b"apply:" + edge_id -> last apply index; b"dl:" + edge_id -> last downlink number;
                b"inc:" + edge_id -> last incarnation;
                b"id:" + name -> a time-based id the cloud made once for one of its own
                entities (the edge root rule chain and its nodes, device and asset profiles:
                see named_ids), so they stay the same across restarts
  edges         routing_key (utf-8) -> edge record
  edge_ids      edge_id -> routing_key
  store_ids     edge_id + sha256(edge store id) -> incarnation
  incarnations  edge_id + incarnation -> (edge store id, first seen ms)
  applied       edge_id + incarnation + seq -> apply index  (the dedup set)
  apply_log     edge_id + apply index -> applied event      (the apply order)
  devices       device_id -> device record
  device_names  name (utf-8) + b"\\0" + edge_id -> device_id
  edge_devices  edge_id + device_id -> b""
  tokens        access token (utf-8) -> device_id
  attributes    device_id + key (utf-8) -> (value, ts)      (SHARED_SCOPE, set by the cloud)
  downlinks     edge_id + downlink number -> serialized DownlinkMsg (no id, no time)
  dead_downlinks edge_id + downlink number -> (serialized DownlinkMsg, error, time ms, cause,
                attempts, in sync)   (parked: refused max_attempts times, or too large; records
                of the previous release hold only the first three)
  rpcs          rpc id -> server-side RPC request (cloud/rpc_table.py; meta b"rpcseq:" +
                device_id -> its last requestId). Added to the edge-cloud/3 format: created
                when a store is opened for writing; absent (no requests) in a read-only store
                of an earlier release
  g_*           the entity graph (cloud/graph_store.py: every kind of entity but devices,
                assignment to edges, relations; meta b"graph:defaults" once the cloud's own
                entities were made real). Added like `rpcs`: absent from a read-only open of
                an older store, where the graph reads as empty. A device unassigned from its
                edge is kept with the nil edge id (graph_store.UNASSIGNED)
Record values are in the checksummed envelope of storage/codec.py (shared with the edge). A store
upgraded from the previous format (edge-cloud/2) may still hold values of that format, each an
array led by the schema number 1, which are read as they are; its dead_downlinks hold the whole
previous downlink record where the payload is now (they are listed with cause "unknown").
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks as downlink_msgs
from edge_sync.cloud import rpc, rpc_table
from edge_sync.cloud.graph_store import GRAPH_DB_NAMES, CloudGraph
from edge_sync.cloud.group_commit import GroupCommit
from edge_sync.cloud.records import (
    AppliedRecord,
    CloudDevice,
    EdgeRecord,
    ParkedDownlink,
    QueuedDownlink,
    downlink_msg_id,
)
from edge_sync.cloud.uplink_payloads import AppliedEvent
from edge_sync.common import ids
from edge_sync.errors import (
    BadRequest,
    Conflict,
    PayloadRejected,
    StorageCorrupt,
    StorageError,
    Unstorable,
)
from edge_sync.storage import codec
from edge_sync.storage.env import NIL_STORE_ID, LmdbStore
from edge_sync.storage.records import Action

# /2: dedup by (edge, edge store incarnation, seq); /3: values in codec's checksummed envelope
CLOUD_FORMAT = b"edge-cloud/3"
PREVIOUS_CLOUD_FORMAT = b"edge-cloud/2"  # plain msgpack values, read as they are (see codec.py)
CLOUD_DB_NAMES = (
    "meta",
    "edges",
    "edge_ids",
    "store_ids",
    "incarnations",
    "applied",
    "apply_log",
    "devices",
    "device_names",
    "edge_devices",
    "tokens",
    "attributes",
    "downlinks",
    "dead_downlinks",
)
INITIAL_MAP_MB = 64
CAUSE_REFUSED = "refused"
CAUSE_TOO_LARGE = "too_large"
MAX_INDEXED_KEY = 400  # LMDB keys are at most 511 bytes; longer names/tokens are not indexed


_log = logger.bind(component="cloud-store")
_DEVICE_ACTIONS = frozenset({Action.ADDED, Action.UPDATED, Action.DELETED,
                             Action.CREDENTIALS_UPDATED})
_RELATION_ACTIONS = frozenset({Action.RELATION_ADD_OR_UPDATE, Action.RELATION_DELETED,
                               Action.RELATIONS_DELETED})


@dataclasses.dataclass(slots=True)
class UplinkApplied:
    """What applying one UplinkMsg did (CloudStore.apply_uplink_full)."""

    applied: int
    duplicates: int
    answers: list[rpc.AnswerOutcome]
    woken: set[uuid.UUID]
    """Edges whose downlink queue grew (another edge's change of an entity they hold)."""
    queued: Counter[str]
    """Downlinks queued, by DownlinkMsg field."""
    entities: Counter[str]
    """Entity changes applied to the graph, by entity type (RELATION for relations)."""


class CloudLmdb(LmdbStore):
    """LmdbStore with the cloud's databases and format stamp (and room for the databases added
    to the format since: `rpcs` and the entity graph's, see CloudStore._open_optional)."""

    def _open(self, map_size: int, *, max_dbs: int) -> lmdb.Environment:
        return super()._open(map_size, max_dbs=max_dbs + len(GRAPH_DB_NAMES))

    def __init__(self, path: Path, *, max_size_mb: int = 10240, readonly: bool = False) -> None:
        super().__init__(
            path,
            initial_map_mb=INITIAL_MAP_MB,
            max_size_mb=max_size_mb,
            readonly=readonly,
            db_names=CLOUD_DB_NAMES,
            store_format=CLOUD_FORMAT,
            previous_format=PREVIOUS_CLOUD_FORMAT,
            program="edge-cloud",
            path_hint="CLOUD_DATA_DIR / storage.data_dir",
            # the CLI may write while the server runs (every write is one transaction that
            # reads what it changes): LMDB serialises them, no process lock is needed
            exclusive_writer=False,
        )


def normalized_store_id(store_id: str | None) -> str | None:
    """An edgeStoreId as the cloud keys it: None for none (absent, empty, or the nil UUID an
    edge store from before store ids reports)."""
    if not store_id or store_id == str(NIL_STORE_ID):
        return None
    return store_id


def _store_digest(store_id: str) -> bytes:
    """Fixed-size key part for a store id (the peer's string may be any length)."""
    return hashlib.sha256(store_id.encode()).digest()


def _name_key(name: str, edge_id: uuid.UUID) -> bytes | None:
    key = name.encode() + b"\0" + edge_id.bytes
    return key if len(key) <= MAX_INDEXED_KEY else None


def _id_name(name: str) -> bytes:
    """A meta key part for a named id (a long name, e.g. a device type, by its digest)."""
    raw = name.encode()
    return raw if len(raw) <= MAX_INDEXED_KEY - 8 else hashlib.sha256(raw).digest()


def _token_key(token: str | None) -> bytes | None:
    if not token:
        return None
    key = token.encode()
    return key if len(key) <= MAX_INDEXED_KEY else None


class CloudStore:
    """Synchronous access to the cloud's data. Every method is one transaction; any thread.

    After a write hit a full disk, new data (uplinks applied, devices, attributes, queued
    downlinks) is refused with QueueFull until room is made. The writes a stream needs to keep
    going and to free room are maintenance writes, allowed then: a new edge store's
    incarnation, the ids of the cloud's own entities, a sync's downlink numbers, removing an
    acknowledged downlink, parking one."""

    def __init__(self, path: Path, *, max_size_mb: int = 10240, readonly: bool = False) -> None:
        self.lmdb = CloudLmdb(path, max_size_mb=max_size_mb, readonly=readonly)
        self.path = self.lmdb.path
        self._db = self.lmdb.dbs
        self.commits = GroupCommit(self.lmdb)
        """The operator's writes (shared attributes, RPC requests): grouped, one fsync a group."""
        self._rpc_db = self._open_rpcs(readonly)
        for name in GRAPH_DB_NAMES:
            self._open_optional(name, readonly)
        if not readonly:
            self.lmdb.write(self._ensure_tenant)
        self.graph = CloudGraph(self)
        """The entity graph (cloud/graph_store.py): every kind of entity but devices, their
        assignment to edges, relations."""
        if not readonly:
            self.graph.ensure_defaults()

    def _open_rpcs(self, readonly: bool) -> Any:
        """The `rpcs` database (newer than the edge-cloud/3 stamp): created on a writable open,
        None on a read-only open of a store that has none yet."""
        return self._open_optional(rpc_table.DB_NAME, readonly)

    def _open_optional(self, db_name: str, readonly: bool) -> Any:
        """A database added to the edge-cloud/3 format after its stamp (`rpcs`, the entity
        graph's): created on a writable open, None on a read-only open of a store that has none
        yet (an older release's, opened by `edge-cloud status` say)."""
        name = db_name.encode()
        try:
            if readonly:
                db = self.lmdb.env.open_db(name, create=False)
            else:
                db = self.lmdb.write(lambda txn: self.lmdb.env.open_db(name, txn=txn),
                                     maintenance=True)
        except lmdb.NotFoundError:
            return None
        except lmdb.Error as exc:
            self.close()
            raise StorageError(f"{self.path}: cannot open the {db_name} database: {exc}") from exc
        self._db[db_name] = db  # counted in the store's size like the others
        return db

    def close(self) -> None:
        self.commits.close()
        self.lmdb.close()

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        try:
            with self.lmdb.read() as txn:
                yield txn
        except lmdb.Error as exc:
            raise StorageError(f"read failed in {self.path}: {exc}") from exc

    def _ensure_tenant(self, txn: lmdb.Transaction) -> None:
        if txn.get(b"tenant", db=self._db["meta"]) is None:
            txn.put(b"tenant", ids.time_based().bytes, db=self._db["meta"])

    def tenant_id(self) -> uuid.UUID:
        with self._read() as txn:
            raw = txn.get(b"tenant", db=self._db["meta"])
        if raw is None:
            raise StorageCorrupt(f"{self.path}: store has no tenant id")
        return codec.to_uuid(raw, "meta: tenant")

    def _counter(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._db["meta"])
        return 0 if raw is None else codec.from_u64(raw, f"meta: counter {bytes(key[:8])!r}")

    # -- the cloud's own entities ----------------------------------------------------------------

    def named_ids(self, names: Sequence[str], make: Callable[[], uuid.UUID]) -> dict[str, uuid.UUID]:
        """The stable id of each of the cloud's own entities named in ``names`` (e.g.
        "device_profile:default"): made with ``make`` (a time-based id) and stored the first
        time a name is asked for, the stored one after (across restarts)."""
        keys = {name: b"id:" + _id_name(name) for name in names}

        def found(txn: lmdb.Transaction) -> dict[str, uuid.UUID]:
            out = {}
            for name, key in keys.items():
                raw = txn.get(key, db=self._db["meta"])
                if raw is not None:
                    out[name] = codec.to_uuid(raw, f"meta: id of {name!r}")
            return out

        with self._read() as txn:
            known = found(txn)
        if len(known) == len(keys):
            return known

        def fn(txn: lmdb.Transaction) -> dict[str, uuid.UUID]:
            out = found(txn)
            for name, key in keys.items():
                if name not in out:
                    out[name] = make()
                    txn.put(key, out[name].bytes, db=self._db["meta"])
            return out

        # maintenance: a few bytes, once per name, and a full sync needs them; refusing them on
        # a full disk would end every stream before acknowledgements could free room
        return self.lmdb.write(fn, maintenance=True)

    # -- edges -----------------------------------------------------------------------------------

    def add_edge(self, edge: EdgeRecord) -> None:
        """Register an edge; Conflict when its routing key is taken."""
        value = codec.pack((edge.edge_id.bytes, edge.name, edge.type, edge.created_time,
                            edge.salt, edge.secret_hash, list(edge.kdf)))

        def fn(txn: lmdb.Transaction) -> None:
            key = edge.routing_key.encode()
            if txn.get(key, db=self._db["edges"]) is not None:
                raise Conflict(f"an edge with routing key {edge.routing_key!r} already exists")
            txn.put(key, value, db=self._db["edges"])
            txn.put(edge.edge_id.bytes, key, db=self._db["edge_ids"])

        self.lmdb.write(fn)

    def edge(self, routing_key: str) -> EdgeRecord | None:
        with self._read() as txn:
            return self._edge(txn, routing_key)

    def edge_by_id(self, edge_id: uuid.UUID) -> EdgeRecord | None:
        with self._read() as txn:
            rk = txn.get(edge_id.bytes, db=self._db["edge_ids"])
            return None if rk is None else self._edge(txn, bytes(rk).decode())

    def edges(self) -> list[EdgeRecord]:
        with self._read() as txn, txn.cursor(db=self._db["edges"]) as cur:
            tenant = self._tenant(txn)
            return [self._decode_edge(bytes(k).decode(), v, tenant) for k, v in cur.iternext()]

    def _edge(self, txn: lmdb.Transaction, routing_key: str) -> EdgeRecord | None:
        if not routing_key or len(routing_key.encode()) > MAX_INDEXED_KEY:
            return None
        raw = txn.get(routing_key.encode(), db=self._db["edges"])
        if raw is None:
            return None
        return self._decode_edge(routing_key, raw, self._tenant(txn))

    def _tenant(self, txn: lmdb.Transaction) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(txn.get(b"tenant", db=self._db["meta"]) or bytes(16)))

    def _fields(self, raw: codec.Raw, what: str, count: int) -> list[Any]:
        """A record of ``count`` fields, in the envelope or (in an upgraded store) in the
        previous format, led by the schema number 1."""
        return codec.unpack_fields(raw, what, count, previous=self.lmdb.previous_values,
                                   schema=True)

    def _downlink_payload(self, raw: codec.Raw, what: str) -> bytes:
        if self.lmdb.previous_values and codec.is_previous_format(raw):
            payload = codec.unpack_fields(raw, what, 1, previous=True, schema=True)[0]
        else:
            payload = codec.unpack(raw, what)
        if not isinstance(payload, bytes):
            raise StorageCorrupt(f"{what}: record of an unexpected shape")
        return payload

    def _decode_edge(self, routing_key: str, raw: codec.Raw, tenant: uuid.UUID) -> EdgeRecord:
        eid, name, etype, created, salt, digest, kdf = self._fields(
            raw, f"edges: {routing_key!r}", 7)
        return EdgeRecord(
            edge_id=uuid.UUID(bytes=eid), tenant_id=tenant, routing_key=routing_key, name=name,
            type=etype, created_time=created, salt=salt, secret_hash=digest,
            kdf=(kdf[0], int(kdf[1]), int(kdf[2]), int(kdf[3])),
        )

    # -- edge stores (incarnations) --------------------------------------------------------------

    def incarnation(self, edge_id: uuid.UUID, store_id: str | None, now_ms: int) -> tuple[int, bool]:
        """The number of the edge's store ``store_id`` (its edgeStoreId), given one durably the
        first time it is seen: (incarnation, new). No store id (a ThingsBoard edge, an older
        edge, or an edge store from before store ids: the nil UUID) is incarnation 0."""
        store_id = normalized_store_id(store_id)
        if store_id is None:
            return 0, False
        key = edge_id.bytes + _store_digest(store_id)
        counter_key = b"inc:" + edge_id.bytes
        record = codec.pack((store_id, now_ms))

        def fn(txn: lmdb.Transaction) -> tuple[int, bool]:
            raw = txn.get(key, db=self._db["store_ids"])
            if raw is not None:
                return codec.from_u64(raw, "store_ids: incarnation"), False
            number = self._counter(txn, counter_key) + 1
            txn.put(key, codec.u64(number), db=self._db["store_ids"])
            txn.put(edge_id.bytes + codec.u64(number), record, db=self._db["incarnations"])
            txn.put(counter_key, codec.u64(number), db=self._db["meta"])
            return number, True

        with self._read() as txn:  # the common case, a store seen before: no write
            raw = txn.get(key, db=self._db["store_ids"])
        if raw is not None:
            return codec.from_u64(raw, "store_ids: incarnation"), False
        return self.lmdb.write(fn, maintenance=True)  # a few bytes: a connect on a full disk

    def edge_stores(self, edge_id: uuid.UUID) -> list[tuple[int, str, int]]:
        """The edge's stores seen so far: (incarnation, store id, first seen ms), oldest first."""
        out: list[tuple[int, str, int]] = []
        with self._read() as txn, txn.cursor(db=self._db["incarnations"]) as cur:
            if not cur.set_range(edge_id.bytes):
                return out
            for key, raw in cur.iternext():
                if key[:16] != edge_id.bytes:
                    break
                number = codec.from_u64(key[16:], "incarnations: key")
                store_id, seen = self._fields(raw, f"incarnations: {edge_id} {number}", 2)
                out.append((number, store_id, seen))
        return out

    def _store_id_of(self, txn: lmdb.Transaction, edge: bytes, incarnation: int) -> str | None:
        if incarnation == 0:
            return None
        raw = txn.get(edge + codec.u64(incarnation), db=self._db["incarnations"])
        if raw is None:
            raise StorageCorrupt(f"{self.path}: edge store incarnation {incarnation} is not recorded")
        return str(self._fields(raw, f"incarnations: {incarnation}", 2)[0])

    # -- applied events --------------------------------------------------------------------------

    def apply_uplink(
        self, edge_id: uuid.UUID, events: Sequence[AppliedEvent], now_ms: int, *, incarnation: int = 0
    ) -> tuple[int, int]:
        """Apply one UplinkMsg's events in one durable transaction, in order, skipping every
        (edge, incarnation, seq) already applied. ``incarnation``: the sending edge store's, from
        incarnation(). (applied, duplicates). PayloadRejected when an event cannot be stored
        (e.g. an integer too large for msgpack); StorageError / QueueFull."""
        applied, dups, _ = self.apply_uplink_answers(edge_id, events, now_ms,
                                                     incarnation=incarnation)
        return applied, dups

    def apply_uplink_answers(
        self, edge_id: uuid.UUID, events: Sequence[AppliedEvent], now_ms: int, *, incarnation: int = 0
    ) -> tuple[int, int, list[rpc.AnswerOutcome]]:
        """apply_uplink(), which also settles the server-side RPC requests that the applied
        events answer, in the same transaction (so an answer is applied exactly once, with its
        event): (applied, duplicates, what each answer did)."""
        out = self.apply_uplink_full(edge_id, events, now_ms, incarnation=incarnation)
        return out.applied, out.duplicates, out.answers

    def apply_uplink_full(
        self, edge_id: uuid.UUID, events: Sequence[AppliedEvent], now_ms: int, *, incarnation: int = 0
    ) -> UplinkApplied:
        """apply_uplink_answers(), which also applies the entity changes the edge made to the
        entity graph (assets, relations, a device deleted, shared attribute keys deleted: see
        _graph_side_effect) in the same transaction, queueing them for the other edges that hold
        the entities: what was applied, the edges whose queue grew, downlinks queued by kind and
        entity changes applied by kind."""
        edge = edge_id.bytes
        dedup_prefix = edge + codec.u64(incarnation)
        packed: list[tuple[AppliedEvent, bytes]] = []
        for ev in events:
            try:
                packed.append((ev, codec.pack((ev.seq, ev.entity_type, ev.entity_id.bytes,
                                               str(ev.action), ev.body, ev.ts, now_ms, incarnation))))
            except Unstorable as exc:
                where = f"payload with edgeSeqId {ev.seq}" if ev.seq is not None else "payload"
                raise PayloadRejected(f"{where}: {exc}", ev.seq) from exc
        counter_key = b"apply:" + edge
        applied_db, log_db = self._db["applied"], self._db["apply_log"]

        result = UplinkApplied(0, 0, [], set(), Counter(), Counter())

        def fn(txn: lmdb.Transaction) -> UplinkApplied:
            index = self._counter(txn, counter_key)
            start = index
            dups = 0
            outcomes: list[rpc.AnswerOutcome] = []
            result.woken.clear()
            result.queued.clear()
            result.entities.clear()
            for ev, value in packed:
                if ev.seq is not None:
                    seq_key = dedup_prefix + codec.u64(ev.seq)
                    if txn.get(seq_key, db=applied_db) is not None:
                        dups += 1
                        continue
                    index += 1
                    txn.put(seq_key, codec.u64(index), db=applied_db)
                else:
                    index += 1
                txn.put(edge + codec.u64(index), value, db=log_db)
                if not self._foreign_device(txn, edge_id, ev):  # else in the apply log only
                    if ev.entity_type == "DEVICE" and ev.action in _DEVICE_ACTIONS:
                        self._device_side_effect(txn, edge_id, ev, now_ms)
                    self._graph_side_effect(txn, edge_id, ev, now_ms, result)
                if ev.answer is not None:
                    outcomes.append(self._answer_rpc(txn, edge_id, ev.answer, now_ms))
            if index != start:
                txn.put(counter_key, codec.u64(index), db=self._db["meta"])
            result.applied, result.duplicates, result.answers = index - start, dups, outcomes
            return result

        return self.lmdb.write(fn)

    def _foreign_device(self, txn: lmdb.Transaction, edge_id: uuid.UUID, ev: AppliedEvent) -> bool:
        """Whether ``ev`` changes a device the cloud has on another edge (or on none): not the
        sending edge's to create, change or delete (ThingsBoard's server checks an edge's
        device change against the edge's own devices), so its side effects are skipped, with a
        WARNING, as an asset change from an edge that does not hold it is."""
        if ev.entity_type != "DEVICE" or ev.action not in _DEVICE_ACTIONS:
            return False
        dev = self._device(txn, ev.entity_id)
        if dev is None or dev.edge_id == edge_id:
            return False
        _log.bind(entity_type="DEVICE", entity_id=str(ev.entity_id), edge_id=str(edge_id),
                  holder=str(dev.edge_id), action=str(ev.action)).warning(
            "device change from an edge that does not hold it ignored")
        return True

    def _graph_side_effect(self, txn: lmdb.Transaction, edge_id: uuid.UUID, ev: AppliedEvent,
                           now_ms: int, result: UplinkApplied) -> None:
        """The entity graph's part of an edge's change: an asset created (assigned to that
        edge), changed or deleted; a relation added or deleted; a device's relations when it is
        deleted; SHARED_SCOPE keys of a device deleted. A change the graph cannot take rejects
        the payload (PayloadRejected, nothing of the message applied)."""
        graph_event = ev.entity_type == "ASSET" or ev.action in _RELATION_ACTIONS
        if graph_event and self.graph.available:
            entity_type = "RELATION" if ev.action in _RELATION_ACTIONS else ev.entity_type
            try:
                done = self.graph.apply_edge_change(txn, edge_id, entity_type, ev.entity_id,
                                                    str(ev.action), ev.body, now_ms,
                                                    result.woken, result.queued)
            except BadRequest as exc:
                where = f"payload with edgeSeqId {ev.seq}" if ev.seq is not None else "payload"
                raise PayloadRejected(f"{where}: {exc}", ev.seq) from exc
            if done not in ("unchanged", "unknown"):
                result.entities[entity_type] += 1
        elif ev.entity_type == "DEVICE" and ev.action == Action.DELETED and self.graph.available:
            self.graph.drop_relations(txn, ev.entity_id)
        elif (ev.action == Action.ATTRIBUTES_DELETED and ev.entity_type == "DEVICE"
              and isinstance(ev.body, dict) and ev.body.get("scope") == "SHARED_SCOPE"):
            dev = self._device(txn, ev.entity_id)
            if dev is not None and dev.edge_id == edge_id:
                for key in ev.body.get("keys") or ():
                    if isinstance(key, str) and key:
                        txn.delete(ev.entity_id.bytes + key.encode(), db=self._db["attributes"])

    def _device_side_effect(self, txn: lmdb.Transaction, edge_id: uuid.UUID, ev: AppliedEvent,
                            now_ms: int) -> None:
        """Keep the device table in step with the devices an edge creates, changes or deletes."""
        body = ev.body if isinstance(ev.body, dict) else {}
        old = self._device(txn, ev.entity_id)
        if ev.action in (Action.ADDED, Action.UPDATED):
            self._put_device(txn, CloudDevice(
                id=ev.entity_id, edge_id=edge_id, name=str(body.get("name", "")),
                type=str(body.get("type") or "default"), label=str(body.get("label") or ""),
                token=old.token if old else None,
                created_time=int(body.get("createdTime") or (old.created_time if old else now_ms)),
                origin=old.origin if old else "edge",
            ), old)
        elif ev.action == Action.DELETED and old is not None:
            self._delete_device(txn, old)
        elif ev.action == Action.CREDENTIALS_UPDATED and old is not None:
            token = body.get("credentialsId")
            if isinstance(token, str) and token:
                self._put_device(txn, CloudDevice(
                    id=old.id, edge_id=old.edge_id, name=old.name, type=old.type,
                    label=old.label, token=token, created_time=old.created_time,
                    origin=old.origin), old)

    def events(self, edge_id: uuid.UUID, *, after: int = 0, limit: int = 0) -> list[AppliedRecord]:
        """What the cloud applied from the edge, in apply order (across its stores), after apply
        index ``after`` (``limit`` 0: all)."""
        return list(self.iter_events(edge_id, after=after, limit=limit))

    def iter_events(self, edge_id: uuid.UUID, *, after: int = 0, limit: int = 0) -> Iterator[AppliedRecord]:
        """Like events(), streaming from one read transaction (held while iterating)."""
        edge = edge_id.bytes
        count = 0
        store_ids: dict[int, str | None] = {}
        with self._read() as txn, txn.cursor(db=self._db["apply_log"]) as cur:
            if not cur.set_range(edge + codec.u64(after + 1)):
                return
            for key, raw in cur.iternext():
                if key[:16] != edge or (limit and count >= limit):
                    return
                index = codec.from_u64(key[16:], "apply_log: key")
                seq, etype, eid, action, body, ts, applied_at, inc = self._fields(
                    raw, f"apply_log: {edge_id} {index}", 8)
                if inc not in store_ids:
                    store_ids[inc] = self._store_id_of(txn, edge, inc)
                count += 1
                yield AppliedRecord(index, seq, etype, uuid.UUID(bytes=eid), action, body, ts,
                                    applied_at, inc, store_ids[inc])

    def applied_count(self, edge_id: uuid.UUID) -> int:
        with self._read() as txn:
            return self._counter(txn, b"apply:" + edge_id.bytes)

    # -- devices ---------------------------------------------------------------------------------

    def add_device(self, device: CloudDevice, downlinks: Sequence[bytes] | None = None) -> list[int]:
        """Create a device and queue its downlinks in one transaction; the downlink numbers.
        ``downlinks`` None: the device's own (see add_devices). Conflict when the id, the name
        (on that edge) or the token is taken."""
        return self.add_devices([(device, downlinks)])[0]

    def add_devices(self, devices_with_downlinks: Sequence[tuple[CloudDevice, Sequence[bytes] | None]]
                    ) -> list[list[int]]:
        """Create devices and queue the downlinks of each, in order, in one transaction for
        the whole batch: all of them or none (for seeding thousands of devices, one commit
        instead of one each). The checks of add_device, each device against the store and the
        devices before it in the batch: Conflict (naming the device) when its id, its name on
        its edge or its token is taken, and nothing is stored. A device's downlinks None: its
        own downlink, built in the transaction (CloudGraph.device_downlink_in: the device, its
        credentials and its device profile as the graph stores it, the profile of its type made
        when there is none), so it carries the profile as committed. The downlink numbers of
        each device, in the batch's order."""
        batch = list(devices_with_downlinks)

        def fn(txn: lmdb.Transaction) -> list[list[int]]:
            numbers = []
            for device, payloads in batch:
                self._check_new_device(txn, device)
                self._put_device(txn, device, None)
                if payloads is None:
                    payloads = [self.graph.device_downlink_in(txn, device)]
                numbers.append(self._enqueue(txn, device.edge_id, payloads))
            return numbers

        return self.lmdb.write(fn) if batch else []

    def _check_new_device(self, txn: lmdb.Transaction, device: CloudDevice) -> None:
        if self._device(txn, device.id) is not None:
            raise Conflict(f"device id {device.id} already exists")
        if self._ids_named(txn, device.name, device.edge_id):
            raise Conflict(f"a device named {device.name!r} already exists on that edge")
        tkey = _token_key(device.token)
        if tkey is not None and txn.get(tkey, db=self._db["tokens"]) is not None:
            raise Conflict(f"device {device.name!r}: that access token is already used by "
                           "another device")

    def device(self, device_id: uuid.UUID) -> CloudDevice | None:
        with self._read() as txn:
            return self._device(txn, device_id)

    def devices_named(self, name: str, edge_id: uuid.UUID | None = None) -> list[CloudDevice]:
        with self._read() as txn:
            found = [self._device(txn, i) for i in self._ids_named(txn, name, edge_id)]
        return [d for d in found if d is not None]

    def devices_of_edge(self, edge_id: uuid.UUID) -> list[CloudDevice]:
        with self._read() as txn:
            return self._devices_of_edge(txn, edge_id)

    def sync_snapshot(self, edge_id: uuid.UUID) -> list[tuple[CloudDevice, dict[str, Any]]]:
        """Every device of the edge with its shared attributes, from one snapshot."""
        with self._read() as txn:
            return [(d, self._attributes(txn, d.id)) for d in self._devices_of_edge(txn, edge_id)]

    def _all_devices(self, txn: lmdb.Transaction) -> Iterator[CloudDevice]:
        """Every device, whatever its edge (a scan: for rare operations)."""
        with txn.cursor(db=self._db["devices"]) as cur:
            for key in list(cur.iternext(values=False)):
                dev = self._device(txn, uuid.UUID(bytes=bytes(key)))
                if dev is not None:
                    yield dev

    def _devices_of_edge(self, txn: lmdb.Transaction, edge_id: uuid.UUID, *,
                         after: uuid.UUID | None = None, limit: int = 0) -> list[CloudDevice]:
        """The edge's devices (by id), after device ``after``, at most ``limit`` (0: all)."""
        out: list[CloudDevice] = []
        start = edge_id.bytes + (after.bytes + b"\0" if after is not None else b"")
        with txn.cursor(db=self._db["edge_devices"]) as cur:
            if not cur.set_range(start):
                return out
            for key in cur.iternext(values=False):
                if key[:16] != edge_id.bytes or (limit and len(out) >= limit):
                    break
                dev = self._device(txn, codec.to_uuid(key[16:], "edge_devices: key"))
                if dev is not None:
                    out.append(dev)
        return out

    def _ids_named(self, txn: lmdb.Transaction, name: str, edge_id: uuid.UUID | None) -> list[uuid.UUID]:
        if edge_id is not None:
            key = _name_key(name, edge_id)
            raw = None if key is None else txn.get(key, db=self._db["device_names"])
            return [] if raw is None else [codec.to_uuid(raw, f"device_names: {name!r}")]
        prefix = name.encode() + b"\0"
        out: list[uuid.UUID] = []
        with txn.cursor(db=self._db["device_names"]) as cur:
            if not cur.set_range(prefix):
                return out
            for found, raw in cur.iternext():
                key = bytes(found)
                if not key.startswith(prefix):
                    break
                if len(key) == len(prefix) + 16:
                    out.append(codec.to_uuid(raw, f"device_names: {name!r}"))
        return out

    def _device(self, txn: lmdb.Transaction, device_id: uuid.UUID) -> CloudDevice | None:
        raw = txn.get(device_id.bytes, db=self._db["devices"])
        if raw is None:
            return None
        edge, name, dtype, label, token, created, origin = self._fields(
            raw, f"devices: {device_id}", 7)
        return CloudDevice(device_id, uuid.UUID(bytes=edge), name, dtype, label, token, created, origin)

    def _put_device(self, txn: lmdb.Transaction, dev: CloudDevice, old: CloudDevice | None) -> None:
        if old is not None:
            self._unindex(txn, old, keep=dev)
        txn.put(dev.id.bytes, codec.pack((dev.edge_id.bytes, dev.name, dev.type, dev.label,
                                          dev.token, dev.created_time, dev.origin)),
                db=self._db["devices"])
        txn.put(dev.edge_id.bytes + dev.id.bytes, b"", db=self._db["edge_devices"])
        nkey = _name_key(dev.name, dev.edge_id)
        if nkey is not None and dev.name:
            txn.put(nkey, dev.id.bytes, db=self._db["device_names"])
        tkey = _token_key(dev.token)
        if tkey is not None:
            txn.put(tkey, dev.id.bytes, db=self._db["tokens"])

    def _unindex(self, txn: lmdb.Transaction, old: CloudDevice, keep: CloudDevice | None) -> None:
        """Drop the index entries of ``old`` that still point at it and ``keep`` does not reuse."""
        if keep is None or keep.edge_id != old.edge_id:
            txn.delete(old.edge_id.bytes + old.id.bytes, db=self._db["edge_devices"])
        for key, db in ((_name_key(old.name, old.edge_id), "device_names"),
                        (_token_key(old.token), "tokens")):
            if key is not None and txn.get(key, db=self._db[db]) == old.id.bytes:
                txn.delete(key, db=self._db[db])

    def _delete_device(self, txn: lmdb.Transaction, old: CloudDevice) -> None:
        self._unindex(txn, old, keep=None)
        txn.delete(old.id.bytes, db=self._db["devices"])
        for key in list(self._attributes(txn, old.id)):
            txn.delete(old.id.bytes + key.encode(), db=self._db["attributes"])

    # -- shared attributes -----------------------------------------------------------------------

    def set_shared_attributes(self, device: CloudDevice, values: Mapping[str, Any], ts: int,
                              downlink: bytes) -> int:
        """Store the values and queue their downlink in one transaction (shared with other
        writes submitted meanwhile: group_commit.py); the downlink number."""
        return self.submit_shared_attributes(device, values, ts, downlink).result()

    def submit_shared_attributes(self, device: CloudDevice, values: Mapping[str, Any], ts: int,
                                 downlink: bytes) -> Future[int]:
        """set_shared_attributes(), its number in a future resolved once committed."""
        packed = []
        for key, value in values.items():
            try:
                packed.append((device.id.bytes + key.encode(), codec.pack((value, ts))))
            except Unstorable as exc:
                raise BadRequest(f"attribute {key!r}: {exc}") from exc

        def fn(txn: lmdb.Transaction) -> int:
            if self._device(txn, device.id) is None:
                raise BadRequest(f"device {device.id} no longer exists")
            for key, value in packed:
                txn.put(key, value, db=self._db["attributes"])
            return self._enqueue(txn, device.edge_id, [downlink])[0]

        return self.commits.submit(fn)

    def shared_attributes(self, device_id: uuid.UUID) -> dict[str, Any]:
        with self._read() as txn:
            return self._attributes(txn, device_id)

    def _attributes(self, txn: lmdb.Transaction, device_id: uuid.UUID) -> dict[str, Any]:
        out: dict[str, Any] = {}
        prefix = device_id.bytes
        with txn.cursor(db=self._db["attributes"]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, raw in cur.iternext():
                if key[:16] != prefix:
                    break
                name = bytes(key[16:]).decode()
                out[name] = self._fields(raw, f"attributes: {device_id} {name!r}", 2)[0]
        return out

    # -- server-side RPC -------------------------------------------------------------------------

    def _rpc(self, txn: lmdb.Transaction, rpc_id: uuid.UUID) -> rpc.RpcRecord | None:
        if self._rpc_db is None:
            return None
        raw = txn.get(rpc_id.bytes, db=self._rpc_db)
        return None if raw is None else rpc_table.unpack(rpc_id, raw)

    def _put_rpc(self, txn: lmdb.Transaction, record: rpc.RpcRecord) -> None:
        if self._rpc_db is None:
            raise StorageError("store opened read-only")
        txn.put(record.id.bytes, rpc_table.pack(record), db=self._rpc_db)

    def _answer_rpc(self, txn: lmdb.Transaction, edge_id: uuid.UUID, answer: rpc.Answer,
                    now_ms: int) -> rpc.AnswerOutcome:
        outcome = rpc.apply_answer(self._rpc(txn, answer.request_uuid), answer, edge_id, now_ms)
        if outcome.changed and outcome.record is not None:
            self._put_rpc(txn, outcome.record)
        return outcome

    def add_rpc(self, record: rpc.RpcRecord,
                downlink: Callable[[rpc.RpcRecord], bytes] | None) -> rpc.RpcRecord:
        """Store a new request, with the device's next requestId, and queue its downlink
        (``downlink(record)``, the serialized DownlinkMsg) in the same transaction (shared with
        other writes submitted meanwhile: group_commit.py); a final record (expired at once) or
        ``downlink`` None queues nothing. The stored record."""
        return self.submit_rpc(record, downlink).result()

    def submit_rpc(self, record: rpc.RpcRecord,
                   downlink: Callable[[rpc.RpcRecord], bytes] | None) -> Future[rpc.RpcRecord]:
        """add_rpc(), the stored record in a future resolved once committed."""

        def fn(txn: lmdb.Transaction) -> rpc.RpcRecord:
            try:
                return add(txn)
            except Unstorable as exc:
                raise BadRequest(f"rpc request cannot be stored: {exc}") from exc

        def add(txn: lmdb.Transaction) -> rpc.RpcRecord:
            if txn.get(record.id.bytes, db=self._rpc_db) is not None:
                raise Conflict(f"rpc id {record.id} already exists")
            if self._device(txn, record.device_id) is None:
                raise BadRequest(f"device {record.device_id} no longer exists")
            seq_key = rpc_table.request_seq_key(record.device_id)
            request_id = rpc.next_request_id(self._counter(txn, seq_key))
            txn.put(seq_key, codec.u64(request_id), db=self._db["meta"])
            stored = dataclasses.replace(record, request_id=request_id)
            if downlink is not None and not stored.status.final:
                number = self._enqueue(txn, stored.edge_id, [downlink(stored)])[0]
                stored = dataclasses.replace(stored, downlink=number)
            self._put_rpc(txn, stored)
            return stored

        if self._rpc_db is None:
            raise StorageError("store opened read-only")
        return self.commits.submit(fn)

    def rpc_record(self, rpc_id: uuid.UUID) -> rpc.RpcRecord | None:
        with self._read() as txn:
            return self._rpc(txn, rpc_id)

    def update_rpc(self, rpc_id: uuid.UUID,
                   change: Callable[[rpc.RpcRecord], rpc.RpcRecord | None], *,
                   remove_downlink: tuple[uuid.UUID, int] | None = None
                   ) -> tuple[rpc.RpcRecord | None, bool]:
        """Apply ``change`` (a transition of cloud/rpc.py: the new record, or None for no
        change) to the stored request in one transaction, with ``remove_downlink`` (edge id,
        number) removed from the queue in the same one. (the record as it now is, changed)."""
        removed = [remove_downlink] if remove_downlink is not None else []
        return self.update_rpcs([rpc_id], change, remove_downlinks=removed)[0]

    def update_rpcs(self, rpc_ids: Sequence[uuid.UUID],
                    change: Callable[[rpc.RpcRecord], rpc.RpcRecord | None], *,
                    remove_downlinks: Sequence[tuple[uuid.UUID, int]] = ()
                    ) -> list[tuple[rpc.RpcRecord | None, bool]]:
        """update_rpc() of several requests (and downlinks removed), in one transaction."""
        if self._rpc_db is None:
            return [(None, False) for _ in rpc_ids]

        def fn(txn: lmdb.Transaction) -> list[tuple[rpc.RpcRecord | None, bool]]:
            for edge_id, number in remove_downlinks:
                txn.delete(edge_id.bytes + codec.u64(number), db=self._db["downlinks"])
            out: list[tuple[rpc.RpcRecord | None, bool]] = []
            for rpc_id in rpc_ids:
                record = self._rpc(txn, rpc_id)
                new = change(record) if record is not None else None
                if new is None:
                    out.append((record, False))
                    continue
                self._put_rpc(txn, new)
                out.append((new, True))
            return out

        # maintenance: a status change is a few bytes, and removing a downlink frees room
        return self.lmdb.write(fn, maintenance=True)

    # -- downlink queue --------------------------------------------------------------------------

    def enqueue_downlinks(self, edge_id: uuid.UUID, payloads: Sequence[bytes]) -> list[int]:
        """Append serialized DownlinkMsgs (without id) to the edge's queue; their numbers."""
        return self.lmdb.write(lambda txn: self._enqueue(txn, edge_id, payloads))

    def reserve_downlink_numbers(self, edge_id: uuid.UUID, count: int) -> list[int]:
        """Numbers for stream-local downlinks (a full sync), unique among the edge's downlinks."""

        def fn(txn: lmdb.Transaction) -> list[int]:
            key = b"dl:" + edge_id.bytes
            last = self._counter(txn, key)
            txn.put(key, codec.u64(last + count), db=self._db["meta"])
            return list(range(last + 1, last + count + 1))

        # maintenance: one counter (a sync must start even on a full disk, see named_ids)
        return self.lmdb.write(fn, maintenance=True) if count else []

    def _enqueue(self, txn: lmdb.Transaction, edge_id: uuid.UUID, payloads: Sequence[bytes]) -> list[int]:
        key = b"dl:" + edge_id.bytes
        last = self._counter(txn, key)
        numbers = []
        for payload in payloads:
            last += 1
            txn.put(edge_id.bytes + codec.u64(last), codec.pack(payload), db=self._db["downlinks"])
            numbers.append(last)
        txn.put(key, codec.u64(last), db=self._db["meta"])
        return numbers

    def first_downlink(self, edge_id: uuid.UUID) -> QueuedDownlink | None:
        """The oldest downlink still queued for the edge."""
        with self._read() as txn, txn.cursor(db=self._db["downlinks"]) as cur:
            if not cur.set_range(edge_id.bytes):
                return None
            key, raw = cur.item()
            if key[:16] != edge_id.bytes:
                return None
            number = codec.from_u64(key[16:], "downlinks: key")
            payload = self._downlink_payload(raw, f"downlinks: {edge_id} {number}")
            return QueuedDownlink(number, downlink_msg_id(number), payload)

    def queued_after(self, edge_id: uuid.UUID, number: int, limit: int) -> list[QueuedDownlink]:
        """Up to ``limit`` downlinks queued for the edge after number ``number``, in order."""
        out: list[QueuedDownlink] = []
        with self._read() as txn, txn.cursor(db=self._db["downlinks"]) as cur:
            if limit <= 0 or not cur.set_range(edge_id.bytes + codec.u64(number + 1)):
                return out
            for key, raw in cur.iternext():
                if key[:16] != edge_id.bytes or len(out) >= limit:
                    break
                n = codec.from_u64(key[16:], "downlinks: key")
                out.append(QueuedDownlink(n, downlink_msg_id(n),
                                          self._downlink_payload(raw, f"downlinks: {edge_id} {n}")))
        return out

    def remove_downlink(self, edge_id: uuid.UUID, number: int) -> bool:
        """Remove an acknowledged downlink (durably); False when it was already gone."""
        key = edge_id.bytes + codec.u64(number)
        return bool(self.lmdb.write(lambda txn: txn.delete(key, db=self._db["downlinks"]),
                                    maintenance=True))  # frees room: allowed on a full disk

    def remove_downlinks(self, edge_id: uuid.UUID, numbers: Sequence[int]) -> int:
        """Remove acknowledged downlinks (that travelled together) in one transaction; how many
        were still queued."""
        keys = [edge_id.bytes + codec.u64(n) for n in numbers]

        def fn(txn: lmdb.Transaction) -> int:
            return sum(1 for key in keys if txn.delete(key, db=self._db["downlinks"]))

        return int(self.lmdb.write(fn, maintenance=True)) if keys else 0

    def last_downlink_number(self, edge_id: uuid.UUID) -> int:
        """The number of the edge's latest downlink (queued, or reserved for a sync); 0 for
        none. Every downlink queued after this call gets a larger one."""
        with self._read() as txn:
            return self._counter(txn, b"dl:" + edge_id.bytes)

    def remove_superseded_downlinks(self, edge_id: uuid.UUID, superseded: Callable[[bytes], bool],
                                    *, up_to: int) -> list[int]:
        """Remove the edge's queued downlinks numbered up to ``up_to`` whose payload
        ``superseded(payload)`` says a full sync sent anew (the sync started after
        last_downlink_number() gave ``up_to``: it read everything they carry); their numbers,
        in order. A downlink queued later (a larger number) is never removed, nor a parked one
        (not in the queue). Read in a snapshot, removed in one write."""
        found: list[int] = []
        with self._read() as txn, txn.cursor(db=self._db["downlinks"]) as cur:
            if up_to > 0 and cur.set_range(edge_id.bytes):
                for key, raw in cur.iternext():
                    if key[:16] != edge_id.bytes:
                        break
                    number = codec.from_u64(key[16:], "downlinks: key")
                    if number > up_to:
                        break
                    if superseded(self._downlink_payload(raw, f"downlinks: {edge_id} {number}")):
                        found.append(number)
        if not found:
            return []
        keys = [edge_id.bytes + codec.u64(n) for n in found]

        def fn(txn: lmdb.Transaction) -> list[int]:
            return [n for n, key in zip(found, keys, strict=True)
                    if txn.delete(key, db=self._db["downlinks"])]

        removed: list[int] = self.lmdb.write(fn, maintenance=True)  # frees room: allowed when full
        return removed

    def park_downlink(self, edge_id: uuid.UUID, item: QueuedDownlink, *, cause: str, error: str,
                      attempts: int, now_ms: int) -> bool:
        """Set a downlink aside for good, kept with the cause and the edge's error, so the queue
        behind it moves on and nothing is thrown away: a queued one is moved out of the queue, a
        sync's (stream-local) one is recorded under its number. False when a queued one was
        already gone (acknowledged or parked by another stream)."""
        key = edge_id.bytes + codec.u64(item.number)
        record = codec.pack((item.payload, error, now_ms, cause, attempts, not item.durable))

        def move(txn: lmdb.Transaction) -> bool:
            if item.durable and not txn.delete(key, db=self._db["downlinks"]):
                return False
            txn.put(key, record, db=self._db["dead_downlinks"])
            return True

        return bool(self.lmdb.write(move, maintenance=True))

    def dead_letter_downlink(self, edge_id: uuid.UUID, number: int, reason: str, *,
                             now_ms: int) -> bool:
        """Park a queued downlink that can never be delivered (too large for the edge)."""
        item = self._queued(edge_id, number)
        if item is None:
            return False
        return self.park_downlink(edge_id, item, cause=CAUSE_TOO_LARGE, error=reason,
                                  attempts=0, now_ms=now_ms)

    def _queued(self, edge_id: uuid.UUID, number: int) -> QueuedDownlink | None:
        with self._read() as txn:
            raw = txn.get(edge_id.bytes + codec.u64(number), db=self._db["downlinks"])
            if raw is None:
                return None
            payload = self._downlink_payload(raw, f"downlinks: {edge_id} {number}")
        return QueuedDownlink(number, downlink_msg_id(number), payload)

    def dead_downlinks(self, edge_id: uuid.UUID) -> int:
        """How many downlinks of the edge are parked."""
        with self._read() as txn, txn.cursor(db=self._db["dead_downlinks"]) as cur:
            if not cur.set_range(edge_id.bytes):
                return 0
            count = 0
            for key in cur.iternext(values=False):
                if key[:16] != edge_id.bytes:
                    break
                count += 1
            return count

    def parked_downlinks(self, edge_id: uuid.UUID, *, limit: int = 0) -> list[ParkedDownlink]:
        """The edge's parked downlinks, oldest first (``limit`` 0: all)."""
        out: list[ParkedDownlink] = []
        with self._read() as txn, txn.cursor(db=self._db["dead_downlinks"]) as cur:
            if not cur.set_range(edge_id.bytes):
                return out
            for key, raw in cur.iternext():
                if key[:16] != edge_id.bytes or (limit and len(out) >= limit):
                    break
                number = codec.from_u64(key[16:], "dead_downlinks: key")
                out.append(self._parked(number, raw, f"dead_downlinks: {edge_id} {number}"))
        return out

    def _parked(self, number: int, raw: codec.Raw, what: str) -> ParkedDownlink:
        msg_id = downlink_msg_id(number)
        if self.lmdb.previous_values and codec.is_previous_format(raw):
            return ParkedDownlink(number, msg_id, "", "unknown", "(a record of an earlier release)",
                                  0, 0, False)
        fields = codec.unpack(raw, what)
        if not isinstance(fields, list | tuple) or len(fields) < 3 or not isinstance(fields[0], bytes):
            raise StorageCorrupt(f"{what}: record of an unexpected shape")
        payload, error, at = fields[0], str(fields[1]), int(fields[2])
        cause = str(fields[3]) if len(fields) > 3 else CAUSE_TOO_LARGE
        attempts = int(fields[4]) if len(fields) > 4 else 0
        in_sync = bool(fields[5]) if len(fields) > 5 else False
        try:
            kinds = downlink_msgs.describe(payload)
        except Exception:  # a payload that no longer parses is still listed
            kinds = "unparseable"
        return ParkedDownlink(number, msg_id, kinds, cause, error, attempts, at, in_sync)

    def queued_downlinks(self, edge_id: uuid.UUID) -> int:
        count = 0
        with self._read() as txn, txn.cursor(db=self._db["downlinks"]) as cur:
            if not cur.set_range(edge_id.bytes):
                return 0
            for key in cur.iternext(values=False):
                if key[:16] != edge_id.bytes:
                    break
                count += 1
        return count


__all__ = ["CLOUD_FORMAT", "CloudLmdb", "CloudStore", "UplinkApplied", "normalized_store_id"]
