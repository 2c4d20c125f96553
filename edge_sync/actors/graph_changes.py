"""Edge-made changes of the entity graph, inside the QueueActor's write transaction (the
QueueActor is the only caller): each change is first checked and planned without writing
(NotFound, Conflict or BadRequest fail its Append, nothing of it written), then written to the
graph store (origin "edge", origin_seq = the seq of the event that carries it) together with
the events that tell the cloud, in the shapes of docs/edge-entities.md ("What goes to the cloud").

Planning happens in the transaction because that is where the entity's current JSON is: an
update merges the fields it changes into the stored JSON, so two updates of one asset in a row
never lose each other's fields, and a name is checked against every asset committed before it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb
from loguru import logger

from edge_sync.actors.messages import (
    DeleteAttributes,
    DeleteEntity,
    DeleteRelation,
    DeleteRelations,
    DeleteTimeseries,
    End,
    GraphChange,
    PutAsset,
    PutRelation,
)
from edge_sync.common.entity_graph import Ref, relation_key
from edge_sync.common.wire import asset_entity, compact_json, device_json, relation_entity
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import EDGE, GraphStore
from edge_sync.storage.records import Action, Device, NewEvent, lane_for

_log = logger.bind(component="graph-changes")

ASSET_FIELDS = ("name", "type", "label", "additionalInfo")


@dataclass(frozen=True, slots=True)
class Planned:
    """A checked change: its events (in order) and the write that goes with them, given the
    seq of the first event."""

    events: tuple[NewEvent, ...]
    write: Callable[[lmdb.Transaction, int], None]
    # filled by ``write``: the devices it removed (a device deleted, or taken by a cascade)
    devices_removed: list[uuid.UUID] = field(default_factory=list)


class GraphChanges:
    """Plans and writes edge-made graph changes. Thread of the QueueActor only."""

    def __init__(self, store: LmdbStore) -> None:
        self._store = store
        self.graph = GraphStore(store)
        self._entities = EntityStore(store)

    # -- what the edge holds ----------------------------------------------------------------

    def kind_of(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> str | None:
        """The type of the entity with this id (the graph's, else a device of the device
        table); None when the edge has no such entity."""
        record = self.graph.entity(txn, entity_id)
        if record is not None:
            return record.entity_type
        return "DEVICE" if self._entities.has_device(txn, entity_id) else None

    def _name_of(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID) -> str:
        record = self.graph.entity(txn, entity_id, kind)
        if record is not None:
            return record.name
        device = self._entities.device(txn, entity_id) if kind == "DEVICE" else None
        return device.name if device is not None else ""

    def _resolve(self, txn: lmdb.Transaction, end: End, what: str) -> tuple[str, uuid.UUID]:
        kind, entity_id = end
        if kind is None:
            found = self.kind_of(txn, entity_id)
        elif self.graph.entity(txn, entity_id, kind) is not None or (
                kind == "DEVICE" and self._entities.has_device(txn, entity_id)):
            found = kind
        else:
            found = None
        if found is None:
            raise NotFound(f"relation {what}: no entity {entity_id}"
                           + (f" of type {kind}" if kind else ""))
        return found, entity_id

    def _require(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> str:
        kind = self.kind_of(txn, entity_id)
        if kind is None:
            raise NotFound(f"no entity {entity_id}")
        return kind

    # -- planning ----------------------------------------------------------------------------

    def plan(self, txn: lmdb.Transaction, change: GraphChange, now_ms: int) -> Planned:
        """Check ``change`` against what the transaction sees; writes nothing."""
        match change:
            case PutAsset():
                return self._put_asset(txn, change, now_ms)
            case DeleteEntity():
                return self._delete_entity(txn, change, now_ms)
            case PutRelation():
                return self._put_relation(txn, change, now_ms)
            case DeleteRelation():
                return self._delete_relation(txn, change, now_ms)
            case DeleteRelations():
                return self._delete_relations(txn, change, now_ms)
            case DeleteAttributes():
                return self._delete_attributes(txn, change)
            case DeleteTimeseries():
                return self._delete_timeseries(txn, change)
        raise BadRequest(f"unknown graph change {type(change).__name__}")

    def _put_asset(self, txn: lmdb.Transaction, c: PutAsset, now_ms: int) -> Planned:
        current = self.graph.entity(txn, c.asset_id)
        if c.create and (current is not None or self._entities.has_device(txn, c.asset_id)):
            raise Conflict(f"entity {c.asset_id} already exists")
        if not c.create and (current is None or current.entity_type != "ASSET"):
            raise NotFound(f"no asset {c.asset_id}")
        fields = dict(c.fields)
        unknown = set(fields) - set(ASSET_FIELDS)
        if unknown:
            raise BadRequest(f"asset fields not known: {', '.join(sorted(unknown))}")
        if current is None:
            base = asset_entity(c.asset_id, created_time=c.ts, name="", type_="default",
                                label="", profile_id=None, additional_info=None)
        else:
            base = json.loads(current.json)
        body = {**base, **fields}
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("an asset needs a name")
        taken = [r for r in self.graph.entities(txn, entity_type="ASSET", name=name)
                 if r.id != c.asset_id]
        if taken:
            raise Conflict(f"an asset named {name!r} already exists ({taken[0].id})")
        if current is None or body.get("type") != base.get("type"):
            profile = self.graph.entities(txn, entity_type="ASSET_PROFILE",
                                          name=str(body.get("type")))
            body.pop("assetProfileId", None)
            if profile:  # ThingsBoard: an asset's type is the name of its profile
                rebuilt = asset_entity(c.asset_id, created_time=0, name="", type_="", label="",
                                       profile_id=profile[0].id, additional_info=None)
                body = _insert_after(body, "label", "assetProfileId", rebuilt["assetProfileId"])
        if current is not None and body == base:
            return Planned((), lambda _txn, _seq: None)  # nothing changed: nothing to tell
        action = Action.ADDED if current is None else Action.UPDATED
        text = compact_json(body)
        event = NewEvent("ASSET", "ASSET", c.asset_id, action, body, c.ts,
                         lane_for("ASSET", action))

        def write(w: lmdb.Transaction, seq: int) -> None:
            self.graph.put_entity(w, "ASSET", c.asset_id, text, now_ms=now_ms, origin=EDGE,
                                  origin_seq=seq, body=body)
            _log.bind(entity_type="ASSET", entity=str(c.asset_id), action=action, seq=seq).info(
                "asset {!r} {} on the edge", name, "created" if current is None else "updated")

        return Planned((event,), write)

    def _delete_entity(self, txn: lmdb.Transaction, c: DeleteEntity, now_ms: int) -> Planned:
        kind = self.kind_of(txn, c.entity_id)
        if kind is None or kind != c.entity_type:
            raise NotFound(f"no {c.entity_type.lower()} {c.entity_id}")
        name = self._name_of(txn, kind, c.entity_id)
        event = NewEvent(kind, kind, c.entity_id, Action.DELETED,
                         {"id": str(c.entity_id), "name": name}, c.ts,
                         lane_for(kind, Action.DELETED))

        def write(w: lmdb.Transaction, seq: int) -> None:
            # the graph removes a device's record, token, attributes and latest values too,
            # whether or not it held the device's JSON, and closes its open RPC requests
            # (RpcStore.close_device), a cascade's devices' included
            removed = self.graph.delete_entity(w, kind, c.entity_id, now_ms=now_ms, origin=EDGE)
            planned.devices_removed.extend(uuid.UUID(r.key) for r in removed if r.kind == "DEVICE")
            _log.bind(entity_type=kind, entity=str(c.entity_id), action=Action.DELETED, seq=seq,
                      cascade=len(removed)).info(
                "{} {!r} deleted on the edge ({} entities removed with it)", kind.lower(), name,
                max(0, len(removed) - 1))

        planned = Planned((event,), write)
        return planned

    def _put_relation(self, txn: lmdb.Transaction, c: PutRelation, now_ms: int) -> Planned:
        src = self._resolve(txn, c.src, "from")
        dst = self._resolve(txn, c.dst, "to")
        body = relation_entity(src, dst, c.rel_type, c.group, c.additional_info)
        text = compact_json(body)
        event = NewEvent("RELATION", src[0], src[1], Action.RELATION_ADD_OR_UPDATE, body, c.ts,
                         lane_for("RELATION", Action.RELATION_ADD_OR_UPDATE))

        def write(w: lmdb.Transaction, seq: int) -> None:
            self.graph.put_relation(w, text, now_ms=now_ms, origin=EDGE, origin_seq=seq,
                                    body=body)
            _log.bind(entity_type="RELATION", entity=str(src[1]),
                      action=Action.RELATION_ADD_OR_UPDATE, seq=seq).info(
                "relation {} {} -{}-> {} {} on the edge", src[0], src[1], c.rel_type, dst[0],
                dst[1])

        return Planned((event,), write)

    def _delete_relation(self, txn: lmdb.Transaction, c: DeleteRelation, now_ms: int) -> Planned:
        src = self._resolve(txn, c.src, "from")
        dst = self._resolve(txn, c.dst, "to")
        wanted = (Ref(src[0], str(src[1])), Ref(dst[0], str(dst[1])), c.rel_type, c.group)
        found = [r for r in self.graph.relations(txn, src[1]) if relation_key(r) == wanted]
        if not found:
            raise NotFound(f"no relation {src[0]} {src[1]} -{c.rel_type}-> {dst[0]} {dst[1]}"
                           f" ({c.group})")
        body = found[0]
        event = NewEvent("RELATION", src[0], src[1], Action.RELATION_DELETED, body, c.ts,
                         lane_for("RELATION", Action.RELATION_DELETED))

        def write(w: lmdb.Transaction, seq: int) -> None:
            self.graph.delete_relation(w, *wanted, now_ms=now_ms, origin=EDGE)
            _log.bind(entity_type="RELATION", entity=str(src[1]), action=Action.RELATION_DELETED,
                      seq=seq).info("relation {} {} -{}-> {} {} deleted on the edge", src[0],
                                    src[1], c.rel_type, dst[0], dst[1])

        return Planned((event,), write)

    def _delete_relations(self, txn: lmdb.Transaction, c: DeleteRelations,
                          now_ms: int) -> Planned:
        kind = self._require(txn, c.entity_id)
        events: list[NewEvent] = []
        for body in self.graph.relations(txn, c.entity_id):
            key = relation_key(body)
            if key is None:
                continue
            src = key[0]
            events.append(NewEvent("RELATION", src.kind, uuid.UUID(src.key),
                                   Action.RELATION_DELETED, body, c.ts,
                                   lane_for("RELATION", Action.RELATION_DELETED)))

        def write(w: lmdb.Transaction, seq: int) -> None:
            count = self.graph.delete_relations(w, Ref(kind, str(c.entity_id)), now_ms=now_ms,
                                                origin=EDGE)
            _log.bind(entity_type=kind, entity=str(c.entity_id), action="RELATIONS_DELETED",
                      seq=seq if events else None, count=count).info(
                "{} relations of {} {} deleted on the edge", count, kind, c.entity_id)

        return Planned(tuple(events), write)

    def _delete_attributes(self, txn: lmdb.Transaction, c: DeleteAttributes) -> Planned:
        kind = self._require(txn, c.entity_id)
        keys = list(dict.fromkeys(c.keys))
        event = NewEvent(kind, kind, c.entity_id, Action.ATTRIBUTES_DELETED,
                         {"scope": c.scope.value, "keys": keys}, c.ts,
                         lane_for(kind, Action.ATTRIBUTES_DELETED))

        def write(w: lmdb.Transaction, seq: int) -> None:
            removed = self._entities.delete_attributes(w, c.entity_id, c.scope, keys)
            _log.bind(entity_type=kind, entity=str(c.entity_id), action=Action.ATTRIBUTES_DELETED,
                      seq=seq, scope=c.scope.value).info(
                "{} of {} {} attribute keys deleted on the edge ({} held)", c.scope.value,
                kind, c.entity_id, removed)

        return Planned((event,), write)

    def _delete_timeseries(self, txn: lmdb.Transaction, c: DeleteTimeseries) -> Planned:
        kind = self._require(txn, c.entity_id)
        keys = list(dict.fromkeys(c.keys))
        event = NewEvent(kind, kind, c.entity_id, Action.TIMESERIES_DELETED, {"keys": keys},
                         c.ts, lane_for(kind, Action.TIMESERIES_DELETED))
        db = self._store.dbs["latest_ts"]

        def write(w: lmdb.Transaction, seq: int) -> None:
            # the latest values' layout is EntityStore's (id + key); it has no delete of them
            removed = sum(1 for key in keys
                          if w.delete(c.entity_id.bytes + codec.text_key(key), db=db))
            _log.bind(entity_type=kind, entity=str(c.entity_id), action=Action.TIMESERIES_DELETED,
                      seq=seq).info("timeseries keys of {} {} deleted on the edge ({} held)",
                                    kind, c.entity_id, removed)

        return Planned((event,), write)

    # -- devices made on the edge ------------------------------------------------------------

    def device_created(self, txn: lmdb.Transaction, device: Device, body: dict[str, Any],
                       *, seq: int, now_ms: int) -> None:
        """A device the edge created is in the graph too, as the Device JSON of its ADDED
        event (``body``, whose seq is ``seq``), without tenant and customer."""
        text = device_json(body, None)
        self.graph.put_entity(txn, "DEVICE", device.id, text, now_ms=now_ms, origin=EDGE,
                              origin_seq=seq)


def _insert_after(body: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    """``body`` with ``key`` placed right after ``after`` (at the end when it has none)."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        out[k] = v
        if k == after:
            out[key] = value
    out.setdefault(key, value)
    return out
