"""What the cloud graph checks before an entity is written, and the JSON it writes: the kind,
the body prepared (typed id, createdTime, tenant and customer filled in, an asset's profile
found or made, a user's secrets dropped), the name free in its kind, the references existing,
no reference cycle, and the size of its downlink within what an edge accepts.

No tables of its own: reads g_entities, g_names, g_metadata (cloud/graph_keys.py); an asset
profile made for an asset's type is written (GraphTables._put) and queued for every edge.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks, tb_entities
from edge_sync.cloud.graph_downlinks import GraphDownlinks
from edge_sync.cloud.graph_keys import (
    _CUSTOMER_OWNED,
    _USER_INFO_SECRETS,
    _USER_SECRETS,
    GRAPH_KINDS,
    METADATA,
    _Change,
    _Rec,
    _refs,
    kind_label,
    name_field,
)
from edge_sync.common import entity_graph
from edge_sync.common.entity_graph import NULL_ID, Ref
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.validators import MAX_NAME_BYTES, text_fits

_log = logger.bind(component="cloud-graph")


class GraphChecks(GraphDownlinks):
    """The checks and the preparation of an entity's JSON for CloudGraph."""

    def _check_size(self, kind: str, entity_id: uuid.UUID, name: str, text: str) -> None:
        payload = downlinks.message_of([downlinks.entity_message(kind, "ADDED", entity_id, text)])
        size = downlinks.stamped_size(len(payload))
        if size > self.max_message_bytes:
            raise BadRequest(
                f"{kind_label(kind)} {name!r} is {size:,} bytes as a downlink ({len(text.encode()):,} "
                f"bytes of JSON); an edge accepts at most {self.max_message_bytes:,} in one message")

    def _check_cycle(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID,
                     refs: list[Ref]) -> None:
        start = Ref("RULE_CHAIN" if kind == METADATA else kind, str(entity_id))

        def refs_of(ref: Ref) -> list[Ref]:
            if ref == start:
                return refs
            return self._stored_refs(txn, ref)

        cycle = entity_graph.find_cycle(start, refs_of)
        if cycle is not None:
            path = " -> ".join(self._describe(txn, r) for r in cycle)
            raise BadRequest(f"reference cycle: {path}")

    def _stored_refs(self, txn: lmdb.Transaction, ref: Ref) -> list[Ref]:
        if ref.kind == "WIDGET_TYPE_FQN":
            return []
        try:
            entity_id = uuid.UUID(ref.key)
        except ValueError:
            return []
        if ref.kind == "RULE_CHAIN":
            meta = self._metadata(txn, entity_id)
            return _refs(METADATA, json.loads(meta)) if meta is not None else []
        rec = self._get(txn, entity_id)
        return _refs(rec.kind, json.loads(rec.json)) if rec is not None else []

    def _describe(self, txn: lmdb.Transaction, ref: Ref) -> str:
        name = None
        try:
            rec = self._get(txn, uuid.UUID(ref.key))
            name = rec.name if rec is not None else None
        except ValueError:
            pass
        return f"{kind_label(ref.kind)} {name!r} ({ref.key})" if name else f"{kind_label(ref.kind)} {ref.key}"

    def _check_refs(self, txn: lmdb.Transaction, kind: str, name: str, refs: list[Ref],
                    own: uuid.UUID) -> None:
        for ref in refs:
            if ref.kind == "RULE_CHAIN" and ref.key == str(own):
                continue  # a chain whose metadata forwards to itself: the cycle check names it
            if not self._exists(txn, ref):
                raise BadRequest(f"{kind_label(kind)} {name!r} references {kind_label(ref.kind)} "
                                 f"{ref.key}, which does not exist")

    def _prepare(self, txn: lmdb.Transaction, kind: str, body: Any, entity_id: uuid.UUID | None,
                 old: _Rec | None, now_ms: int, change: _Change
                 ) -> tuple[uuid.UUID, str, dict[str, Any]]:
        """(id, name, body) of an entity about to be written: typed id, createdTime, tenantId
        (and customerId, an asset's profile) filled when absent; a user's secrets dropped."""
        if not isinstance(body, dict):
            raise BadRequest(f"{kind_label(kind)}: expected a JSON object")
        body = dict(body)
        given = body.get("id")
        if given is not None:
            if isinstance(given, dict):
                if given.get("entityType") not in (None, kind):
                    raise BadRequest(f"{kind_label(kind)}: id is a {str(given.get('entityType'))[:40]!r} "
                                     f"id, not {kind}")
                raw_id = given.get("id")
            else:
                raw_id = given
            try:
                parsed = uuid.UUID(str(raw_id))
            except ValueError as exc:
                raise BadRequest(f"{kind_label(kind)}: id is not a UUID") from exc
            if entity_id is not None and parsed != entity_id:
                raise BadRequest(f"{kind_label(kind)}: the body's id {parsed} is not {entity_id}")
            entity_id = parsed
        if entity_id is None:
            entity_id = self._ids.new(now_ms)
        if entity_id.int == 0 or entity_id == NULL_ID:
            raise BadRequest(f"{kind_label(kind)}: id {entity_id} is ThingsBoard's null id")
        field = name_field(kind, body)
        name = body.get(field)
        if not text_fits(name, MAX_NAME_BYTES):
            raise BadRequest(f"{kind_label(kind)} has no {field} (text of 1 to {MAX_NAME_BYTES} bytes)")
        if kind == "WIDGETS_BUNDLE" and field == "title":
            body["name"] = name  # ThingsBoard's WidgetsBundle.getName(): a read-only copy
        body["id"] = typed_id(kind, entity_id)
        if body.get("createdTime") is None:
            body["createdTime"] = (old.created if old is not None else
                                   tb_entities.created_time(entity_id) or now_ms)
        if not isinstance(body["createdTime"], int) or isinstance(body["createdTime"], bool):
            raise BadRequest(f"{kind_label(kind)}: createdTime is not a whole number")
        if kind != "TENANT" and body.get("tenantId") is None:
            body["tenantId"] = typed_id("TENANT", self._tenant_id(txn))
        if kind in _CUSTOMER_OWNED and body.get("customerId") is None:
            body["customerId"] = typed_id("CUSTOMER", NULL_ID)
        if kind == "ASSET":
            self._asset_profile(txn, body, change, now_ms)
        if kind == "ENTITY_VIEW" and not entity_graph.references(kind, body):
            raise BadRequest(f"entity view {name!r}: entityId: expected the device or asset it "
                             "shows, as a typed id")
        if kind == "USER":
            for secret in _USER_SECRETS:
                body.pop(secret, None)
            info = body.get("additionalInfo")
            if isinstance(info, dict):
                body["additionalInfo"] = {k: v for k, v in info.items() if k not in _USER_INFO_SECRETS}
        return entity_id, name, body

    def _asset_profile(self, txn: lmdb.Transaction, body: dict[str, Any], change: _Change,
                       now_ms: int) -> None:
        """An asset without a profile gets the one named by its type, made when there is none
        (ThingsBoard's AssetService: findOrCreateAssetProfile; on every edge, so queued for
        each), or the default one without a type; without a type, its profile's name."""
        if body.get("assetProfileId") is None:
            wanted = body.get("type")
            if isinstance(wanted, str) and text_fits(wanted, MAX_NAME_BYTES):
                found = self._named(txn, "ASSET_PROFILE", wanted)
                if found is None:
                    found = self._ids.new(now_ms)
                    text = tb_entities.asset_profile_json(found, self._tenant_id(txn), wanted)
                    rec = _Rec("ASSET_PROFILE", found, wanted, text,
                               tb_entities.created_time(found), now_ms, "cloud")
                    self._put(txn, rec, None, json.loads(text))
                    self._queue(txn, change, self._all_edges(txn),
                                self.entity_downlink(txn, rec, "ADDED"), "assetProfileUpdateMsg")
            else:
                found = self._named(txn, "ASSET_PROFILE", tb_entities.DEFAULT_PROFILE)
            if found is not None:
                body["assetProfileId"] = typed_id("ASSET_PROFILE", found)
        if not body.get("type"):
            ref = entity_graph.references("ASSET", body)
            prof = self._get(txn, uuid.UUID(ref[0].key)) if ref else None
            body["type"] = prof.name if prof is not None else tb_entities.DEFAULT_PROFILE

    def _kind(self, entity_type: object, *, metadata: bool = True) -> str:
        if not isinstance(entity_type, str) or entity_type not in GRAPH_KINDS or (
                entity_type == METADATA and not metadata):
            hint = " (devices: create_device)" if entity_type == "DEVICE" else ""
            raise BadRequest(f"unknown entity kind {str(entity_type)[:40]!r}{hint}: one of "
                             f"{', '.join(k for k in GRAPH_KINDS if metadata or k != METADATA)}")
        return entity_type

    def _check_name(self, txn: lmdb.Transaction, kind: str, name: str, own: uuid.UUID) -> None:
        found = self._named(txn, kind, name)
        if found is not None and found != own:
            raise Conflict(f"a {kind_label(kind)} named {name!r} already exists ({found})")

    def _check_fqn(self, txn: lmdb.Transaction, kind: str, body: dict[str, Any],
                   own: uuid.UUID) -> None:
        """A widget type's fqn names no other widget type (ThingsBoard: constraint
        uq_widget_type_fqn UNIQUE (tenant_id, fqn), WidgetTypeServiceImpl "Widget type with such
        fqn already exists!"); the fqn index, through which dashboards' references resolve,
        holds one widget type per fqn."""
        fqn = body.get("fqn") if kind == "WIDGET_TYPE" else None
        if isinstance(fqn, str) and fqn:
            found = self._named(txn, "WIDGET_TYPE_FQN", fqn)
            if found is not None and found != own:
                raise Conflict(f"a widget type with fqn {fqn!r} already exists ({found})")

    def _must(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID) -> _Rec:
        rec = self._get(txn, entity_id)
        if rec is None or rec.kind != kind:
            raise NotFound(f"no {kind_label(kind)} {entity_id}")
        return rec
