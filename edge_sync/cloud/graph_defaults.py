"""The entities the cloud makes itself: the tenant, ThingsBoard's default queues, the edge root
rule chain and its metadata, the default device and asset profiles, a device profile per device
type, all with the stable ids the cloud keeps by name; and a device's downlink with its profile
as the graph stores it.

Layout: the store's meta, "id:" + name -> id (named_id_key) and "graph:defaults" (made once);
records through GraphTables._put (cloud/graph_keys.py); g_metadata for the root chain's.
"""

from __future__ import annotations

import json
import uuid

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks, tb_entities
from edge_sync.cloud.graph_entities import GraphEntities
from edge_sync.cloud.graph_keys import (
    ASSET_PROFILE,
    QUEUES,
    ROOT_CHAIN,
    _Change,
    _Rec,
    name_field,
    named_id_key,
    node_name,
    profile_name,
)
from edge_sync.cloud.records import CloudDevice
from edge_sync.proto import edge_pb2
from edge_sync.storage import codec

_log = logger.bind(component="cloud-graph")


class GraphDefaults(GraphEntities):
    """The cloud's own entities of CloudGraph, and a device's downlink."""

    def _named_id(self, txn: lmdb.Transaction, name: str, make: uuid.UUID) -> uuid.UUID:
        key = named_id_key(name)
        raw = txn.get(key, db=self._db["meta"])
        if raw is not None:
            return codec.to_uuid(raw, f"meta: id of {name!r}")
        txn.put(key, make.bytes, db=self._db["meta"])
        return make

    def ensure_defaults(self, now_ms: int | None = None) -> None:
        """Make the cloud's own entities real entities of the graph, with the ids it always
        gave them (meta "id:" names): the tenant, ThingsBoard's three default queues, the edge
        root rule chain and its metadata, the default device and asset profiles, and a device
        profile per device type in use. Once per store (a marker in meta); a few KB."""
        if not self.available:
            return
        with self._read() as txn:
            if txn.get(b"graph:defaults", db=self._db["meta"]) is not None:
                return

        def fn(txn: lmdb.Transaction) -> None:
            if txn.get(b"graph:defaults", db=self._db["meta"]) is not None:
                return
            made = self._make_defaults(txn, now_ms)
            types = sorted({d.type for d in self._store._all_devices(txn)})
            for device_type in types:
                self.device_profile_in(txn, device_type, self._ids.new(now_ms))
            txn.put(b"graph:defaults", codec.u64(1), db=self._db["meta"])
            _log.bind(entities=made, device_types=len(types)).info(
                "entity graph: the cloud's own entities made real")

        # maintenance: a few KB, once, and a store must open on a full disk
        self._lmdb.write(fn, maintenance=True)

    def _make_defaults(self, txn: lmdb.Transaction, now_ms: int | None) -> int:
        tenant = self._tenant_id(txn)
        made = 0

        def put(kind: str, entity_id: uuid.UUID, text: str) -> None:
            nonlocal made
            body = json.loads(text)
            name = body.get(name_field(kind, body))
            if self._get(txn, entity_id) is not None or self._named(txn, kind, name) is not None:
                return
            created = int(body.get("createdTime") or 0)
            self._put(txn, _Rec(kind, entity_id, name, text, created, created, "cloud"), None, body)
            made += 1

        put("TENANT", tenant, tb_entities.tenant_json(tenant))
        for (qname, *_), key in zip(tb_entities.DEFAULT_QUEUES, QUEUES, strict=True):
            queue_id = self._named_id(txn, key, self._ids.new(now_ms))
            put("QUEUE", queue_id, tb_entities.queue_json(queue_id, qname))
        chain = self._named_id(txn, ROOT_CHAIN, self._ids.new(now_ms))
        nodes = [self._named_id(txn, node_name(i), self._ids.new(now_ms))
                 for i in range(len(tb_entities.ROOT_CHAIN_NODES))]
        put("RULE_CHAIN", chain, tb_entities.rule_chain_json(
            chain, tenant, nodes[tb_entities.ROOT_CHAIN_FIRST_NODE]))
        if self._metadata(txn, chain) is None:
            meta = tb_entities.rule_chain_metadata_json(chain, nodes)
            txn.put(chain.bytes, codec.pack((meta, 0)), db=self._dbh("g_metadata"))
        self._root_chain = chain
        asset_profile = self._named_id(txn, ASSET_PROFILE, self._ids.new(now_ms))
        put("ASSET_PROFILE", asset_profile, tb_entities.asset_profile_json(asset_profile, tenant))
        self.device_profile_in(txn, tb_entities.DEFAULT_PROFILE, self._ids.new(now_ms))
        return made

    def device_profile_id(self, device_type: str, now_ms: int | None = None) -> uuid.UUID:
        """The id of the device profile named ``device_type`` (a device's type names its
        profile), made (with the id the cloud keeps for that name) when there is none."""
        with self._read() as txn:
            found = self._named(txn, "DEVICE_PROFILE", device_type) if self.available else None
        if found is not None:
            return found
        if not self.available:
            return self._store.named_ids([profile_name(device_type)],
                                         lambda: self._ids.new(now_ms))[profile_name(device_type)]
        # not queued for the edges: a device of the type carries its profile in its downlink,
        # and every full sync sends every profile (maintenance: a few bytes a sync may need on
        # a full disk, as CloudStore.named_ids)
        make = self._ids.new(now_ms)
        result: uuid.UUID = self._lmdb.write(
            lambda txn: self.device_profile_in(txn, device_type, make), maintenance=True)
        return result

    def device_profile_in(self, txn: lmdb.Transaction, device_type: str, make: uuid.UUID,
                          change: _Change | None = None) -> uuid.UUID:
        """device_profile_id() in a write transaction. A profile made here (a new device type)
        is on every edge: ADDED queued for each when ``change`` is given (else it reaches them
        with a device of its type, or their next full sync)."""
        found = self._named(txn, "DEVICE_PROFILE", device_type)
        if found is not None:
            return found
        profile_id = self._named_id(txn, profile_name(device_type), make)
        text = tb_entities.device_profile_json(profile_id, self._tenant_id(txn), device_type)
        if self._get(txn, profile_id) is None:
            body = json.loads(text)
            rec = _Rec("DEVICE_PROFILE", profile_id, device_type, text, body["createdTime"],
                       body["createdTime"], "cloud")
            self._put(txn, rec, None, body)
            if change is not None:
                self._queue(txn, change, self._all_edges(txn),
                            self.entity_downlink(txn, rec, "ADDED"), "deviceProfileUpdateMsg")
        return profile_id

    def device_downlink_in(self, txn: lmdb.Transaction, device: CloudDevice) -> bytes:
        """The downlink of a device put on its edge (created there, or assigned to it): the
        device, its credentials and its device profile as the graph stores it, exactly the JSON
        a full sync sends (downlinks.device_synced), so the edge's copy of the profile stays the
        cloud's. In a write transaction: the profile of the device's type is made (its id made
        at the device's creation time) when there is none. Without the profile when the two
        would not fit in one message to an edge (the profile reaches every edge on its own: its
        ADDED, or a full sync)."""
        profile_id = self._named(txn, "DEVICE_PROFILE", device.type)
        if profile_id is None:
            profile_id = self.device_profile_in(txn, device.type,
                                                self._ids.new(device.created_time or None))
        rec = self._get(txn, profile_id)
        tenant = self._tenant_id(txn)
        payload = downlinks.device_synced(device, tenant, profile_id,
                                          rec.json if rec is not None else None)
        if downlinks.stamped_size(len(payload)) > self.max_message_bytes:
            msg = edge_pb2.DownlinkMsg.FromString(payload)
            msg.ClearField("deviceProfileUpdateMsg")
            payload = bytes(msg.SerializeToString())
        return payload
