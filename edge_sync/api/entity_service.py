"""The edge's entity graph for operators, without HTTP: changes made on the edge (assets,
relations, deletes of devices and of attribute and timeseries keys, requests for a rule chain's
metadata) and reads of what the edge holds.

A change is validated here (BadRequest), told to the actor of its entity (a relation's: its
``from`` end) and written by the QueueActor with its events in one transaction, where the
checks against the store are made (NotFound, Conflict): the returned future resolves with the
seqs of its events once they are on disk. Reads are plain LMDB read transactions, so they work
with the agent stopped (``edge-sync entities``, ``edge-sync entity``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from loguru import logger

from edge_sync.actors.messages import (
    ChangeGraph,
    DeleteAttributes,
    DeleteEntity,
    DeleteRelation,
    DeleteRelations,
    DeleteTimeseries,
    End,
    GraphChange,
    PutAsset,
    PutRelation,
    RequestRuleChainMetadata,
)
from edge_sync.actors.shard import EntityRouter
from edge_sync.api.payloads import check_json_value
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common import ids
from edge_sync.common.entity_graph import BY_TYPE
from edge_sync.common.wire import RELATION_GROUPS, device_json
from edge_sync.errors import BadRequest, NotFound
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.records import Scope
from edge_sync.validators import MAX_LABEL_BYTES, MAX_NAME_BYTES, key_fits, text_fits

_log = logger.bind(component="entity-api")

MAX_KEYS = 1000
"""Keys one delete may name."""


class EntityService:
    """Any thread. Every change returns a future resolved with its events' seqs after commit."""

    def __init__(self, router: EntityRouter, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._router = router
        self._clock = clock

    def _tell(self, entity_id: uuid.UUID, change: GraphChange) -> Future[range]:
        reply: Future[range] = Future()
        self._router.tell(ChangeGraph(entity_id, change, reply))
        return reply

    # -- assets ------------------------------------------------------------------------------

    def create_asset(self, name: str, *, type_: str = "default", label: str = "",
                     additional_info: Any = None) -> tuple[uuid.UUID, Future[range]]:
        """A new asset (ADDED). Conflict when its name is taken when it commits."""
        fields = _asset_fields({"name": name, "type": type_, "label": label,
                                "additionalInfo": additional_info})
        now = self._clock.now_ms()
        asset_id = ids.time_based(now)
        return asset_id, self._tell(asset_id, PutAsset(asset_id, fields, True, now))

    def update_asset(self, asset_id: uuid.UUID, **fields: Any) -> Future[range]:
        """Change some of name, type, label, additionalInfo (UPDATED; no event when nothing
        changes). NotFound, Conflict (the new name is taken)."""
        checked = _asset_fields(fields)
        if not checked:
            raise BadRequest("nothing to update: give name, type, label or additionalInfo")
        return self._tell(asset_id, PutAsset(asset_id, checked, False, self._clock.now_ms()))

    def delete_asset(self, asset_id: uuid.UUID) -> Future[range]:
        """Delete an asset with its relations and what depends on it (DELETED). NotFound."""
        return self._tell(asset_id, DeleteEntity("ASSET", asset_id, self._clock.now_ms()))

    def delete_device(self, device_id: uuid.UUID) -> Future[range]:
        """Delete a device: its record, token (refused by the device API from the commit on),
        attributes, latest values, relations and dependants (DELETED). NotFound."""
        return self._tell(device_id, DeleteEntity("DEVICE", device_id, self._clock.now_ms()))

    # -- relations ---------------------------------------------------------------------------

    def add_relation(self, body: Any) -> Future[range]:
        """Add or update a relation given as ThingsBoard's EntityRelation JSON (``from`` and
        ``to`` typed ids or bare UUIDs, ``type``, ``typeGroup``, ``additionalInfo``).
        NotFound when an end is unknown."""
        src, dst, rel_type, group = parse_relation(body)
        info = body.get("additionalInfo")
        if info is not None:
            check_json_value("additionalInfo", info)
        now = self._clock.now_ms()
        return self._tell(src[1], PutRelation(src, dst, rel_type, group, info, now))

    def delete_relation(self, src: End, dst: End, rel_type: str,
                        group: str = "COMMON") -> Future[range]:
        """Delete one relation (RELATION_DELETED). NotFound when there is none."""
        _check_relation_type(rel_type, group)
        return self._tell(src[1], DeleteRelation(src, dst, rel_type, group,
                                                 self._clock.now_ms()))

    def delete_relations(self, entity_id: uuid.UUID) -> Future[range]:
        """Delete every relation from or to an entity: one RELATION_DELETED event each (as
        ThingsBoard does; it has no message for all of them). NotFound for an unknown entity."""
        return self._tell(entity_id, DeleteRelations(entity_id, self._clock.now_ms()))

    # -- attribute and timeseries keys -------------------------------------------------------

    def delete_attributes(self, entity_id: uuid.UUID, scope: str,
                          keys: Iterable[Any]) -> Future[range]:
        """Delete attribute keys of one scope (ATTRIBUTES_DELETED). NotFound."""
        return self._tell(entity_id, DeleteAttributes(entity_id, parse_scope(scope),
                                                      parse_keys(keys), self._clock.now_ms()))

    def delete_timeseries(self, entity_id: uuid.UUID, keys: Iterable[Any]) -> Future[range]:
        """Delete timeseries keys: the latest values the edge holds (TIMESERIES_DELETED).
        NotFound."""
        return self._tell(entity_id, DeleteTimeseries(entity_id, parse_keys(keys),
                                                      self._clock.now_ms()))

    # -- rule chains -------------------------------------------------------------------------

    def request_rule_chain_metadata(self, chain_id: uuid.UUID) -> Future[range]:
        """Ask the cloud for a rule chain's metadata (RULE_CHAIN_METADATA_REQUEST, high lane);
        while a request for that chain is pending, its seq instead of a second one."""
        reply: Future[range] = Future()
        self._router.tell(RequestRuleChainMetadata(chain_id, reply))
        return reply

    def request_metadata(self, chain_id: uuid.UUID) -> None:
        """Fire and forget (the DownlinkActor's ``request_metadata`` callback: metadata that
        names a rule chain whose metadata the edge lacks). A failure is logged."""
        def done(result: Future[range]) -> None:
            exc = result.exception()
            if exc is not None:
                _log.bind(entity_type="RULE_CHAIN", entity=str(chain_id)).warning(
                    "rule chain metadata not requested: {}", exc)

        self.request_rule_chain_metadata(chain_id).add_done_callback(done)


# -- parsing (the admin API and the service share it) -------------------------------------------


def _asset_fields(fields: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    out: list[tuple[str, Any]] = []
    for key, value in fields.items():
        if key in ("name", "type"):
            if not text_fits(value, MAX_NAME_BYTES):
                raise BadRequest(f"asset {key} must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
        elif key == "label":
            if not text_fits(value, MAX_LABEL_BYTES, allow_empty=True):
                raise BadRequest(f"asset label must be text of at most {MAX_LABEL_BYTES} bytes")
        elif key == "additionalInfo":
            if value is not None:
                check_json_value("additionalInfo", value)
        else:
            raise BadRequest(f"unknown asset field {key[:40]!r} (name, type, label, "
                             "additionalInfo)")
        out.append((key, value))
    return tuple(out)


def parse_uuid(raw: Any, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise BadRequest(f"{what}: {str(raw)[:64]!r} is not a UUID") from exc


def parse_end(raw: Any, what: str) -> End:
    """A relation end: a typed id ``{"entityType": T, "id": U}`` or a bare UUID (its type is
    looked up when the change is written)."""
    if isinstance(raw, dict):
        kind = raw.get("entityType")
        if not isinstance(kind, str) or kind not in BY_TYPE:
            raise BadRequest(f"{what}.entityType must be one of {', '.join(sorted(BY_TYPE))}")
        return kind, parse_uuid(raw.get("id"), f"{what}.id")
    if raw is None:
        raise BadRequest(f"a relation needs {what}")
    return None, parse_uuid(raw, what)


def _check_relation_type(rel_type: Any, group: Any) -> None:
    if not text_fits(rel_type, MAX_NAME_BYTES):
        raise BadRequest(f"relation type must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
    if group not in RELATION_GROUPS:
        raise BadRequest(f"relation typeGroup must be {' or '.join(RELATION_GROUPS)} (the only "
                         "group ThingsBoard syncs with edges)")


def parse_relation(body: Any) -> tuple[End, End, str, str]:
    """(from, to, type, typeGroup) of an EntityRelation JSON object; BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object with from, to, type")
    unknown = set(body) - {"from", "to", "type", "typeGroup", "additionalInfo"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    rel_type, group = body.get("type"), body.get("typeGroup", "COMMON")
    _check_relation_type(rel_type, group)
    return (parse_end(body.get("from"), "from"), parse_end(body.get("to"), "to"), str(rel_type),
            str(group))


def parse_scope(raw: Any) -> Scope:
    text = str(raw).upper()
    aliases = {"CLIENT": Scope.CLIENT, "SERVER": Scope.SERVER, "SHARED": Scope.SHARED}
    if text in aliases:
        return aliases[text]
    try:
        return Scope(text)
    except ValueError as exc:
        raise BadRequest(f"scope: {str(raw)[:40]!r} is not one of "
                         f"{', '.join(s.value for s in Scope)}") from exc


def parse_keys(raw: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise BadRequest("keys must be a list of keys")
    keys = tuple(dict.fromkeys(raw))
    if not keys:
        raise BadRequest("name at least one key")
    if len(keys) > MAX_KEYS:
        raise BadRequest(f"at most {MAX_KEYS} keys at once")
    for key in keys:
        if not key_fits(key):
            raise BadRequest(f"key {str(key)[:40]!r} must be 1 to 255 bytes of UTF-8")
        check_json_value("key", key)
    return keys


def parse_type(raw: Any) -> str | None:
    if raw in (None, ""):
        return None
    kind = str(raw).upper()
    if kind not in BY_TYPE:
        raise BadRequest(f"type: {str(raw)[:40]!r} is not one of {', '.join(sorted(BY_TYPE))}")
    return kind


# -- reads (with the agent running or not) ------------------------------------------------------


def apply_log_entries(store: LmdbStore, *, after: int = 0, limit: int = 1000
                      ) -> list[dict[str, Any]]:
    """The graph's apply log, oldest first, from index ``after`` (``limit`` 0: all): what the
    edge created, updated or deleted, when, and whether the cloud or the edge made the change.
    Every entity appears after what it references (held entities are applied, and logged, only
    once their references are here)."""
    graph = GraphStore(store)
    with store.read() as txn:
        return [{"index": e.index, "ts": e.ts, "entity_type": e.entity_type, "id": e.id,
                 "action": e.action, "origin": e.origin}
                for e in graph.apply_log(txn, after=after, limit=limit)]


def list_entities(store: LmdbStore, *, entity_type: str | None = None,
                  name: str | None = None) -> list[dict[str, Any]]:
    """The entities the edge holds (of a type, of a name), by type then name: id, type, name,
    origin, updated_ms. Devices of the device table the graph lacks are listed too."""
    graph, devices = GraphStore(store), EntityStore(store)
    with store.read() as txn:
        records = graph.entities(txn, entity_type=entity_type, name=name)
        out: list[dict[str, Any]] = [{"id": str(r.id), "entity_type": r.entity_type, "name": r.name,
                "origin": r.origin, "origin_seq": r.origin_seq, "updated_ms": r.updated_ms}
               for r in records]
        if entity_type in (None, "DEVICE"):
            seen = {r.id for r in records if r.entity_type == "DEVICE"}
            if entity_type is None:  # all entities: only devices beyond the graph's
                seen = {r.id for r in graph.entities(txn, entity_type="DEVICE")}
            found = ([d] if (d := devices.device_by_name(txn, name)) is not None else []) \
                if name is not None else devices.devices(txn)
            out += [{"id": str(d.id), "entity_type": "DEVICE", "name": d.name, "origin": None,
                     "origin_seq": None, "updated_ms": d.created_time}
                    for d in found if d.id not in seen]
    out.sort(key=lambda e: (BY_TYPE[e["entity_type"]].sync_rank
                            if e["entity_type"] in BY_TYPE else 99, e["name"], e["id"]))
    return out


def entity_details(store: LmdbStore, entity_id: uuid.UUID) -> dict[str, Any]:
    """One entity: its JSON, its relations both ways, its attributes by scope and its latest
    telemetry (key -> {ts, value}); what it waits for when it is held. NotFound."""
    graph, devices = GraphStore(store), EntityStore(store)
    with store.read() as txn:
        record = graph.entity(txn, entity_id)
        device = devices.device(txn, entity_id)
        held = [h for h in graph.held(txn) if h.id == entity_id]
        if record is None and device is None and not held:
            raise NotFound(f"no entity {entity_id}")
        relations = graph.relations(txn, entity_id)
        attributes = {scope.value: devices.attributes(txn, entity_id, scope) for scope in Scope}
        latest = devices.latest(txn, entity_id)
    out: dict[str, Any] = {"id": str(entity_id)}
    if record is not None:
        out.update(entity_type=record.entity_type, name=record.name, origin=record.origin,
                   origin_seq=record.origin_seq, updated_ms=record.updated_ms,
                   entity=json.loads(record.json))
    elif device is not None:
        out.update(entity_type="DEVICE", name=device.name, origin=None, origin_seq=None,
                   updated_ms=device.created_time,
                   entity=json.loads(device_json(device.as_json(), None)))
    else:
        out.update(entity_type=held[0].entity_type, name=None, entity=None)
    if held:
        out["held"] = {"waiting_for": [str(r) for r in held[0].waiting_for],
                       "since_ms": held[0].since_ms}
    ident = str(entity_id)
    out["relations"] = {
        "from": [r for r in relations if _end_id(r.get("from")) == ident],
        "to": [r for r in relations if _end_id(r.get("to")) == ident
               and _end_id(r.get("from")) != ident],
    }
    out["attributes"] = attributes
    out["latest"] = {k: {"ts": ts, "value": v} for k, (ts, v) in sorted(latest.items())}
    return out


def _end_id(raw: Any) -> str | None:
    return str(raw.get("id")) if isinstance(raw, dict) else None
