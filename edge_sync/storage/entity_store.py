"""The entity store: devices (with access tokens and unique names), attributes by scope, latest
telemetry per key, the tenant and device profiles the cloud synced, and the ids of downlinks
already applied.

Layout:
  devices        device_id(16) -> encoded Device
  device_tokens  token (utf-8) -> device_id
  device_names   name (utf-8) -> device_id
  attributes     entity_id(16) + scope(1) + key (utf-8) -> (value, last_update_ts)
  latest_ts      entity_id(16) + key (utf-8) -> (ts, value)
  downlinks      downlink key -> applied time (u64)
  meta           keys under "synced/" (added without a format change: a store of an earlier
                 release simply has none, and an earlier release ignores them):
    synced/tenant                            -> (tenant_id(16), title, Tenant JSON)
    synced/device_profile/ + id(16)          -> (name, DeviceProfile JSON)
    synced/device_profile_name/ + name       -> profile id(16)
    synced/device_profile_of/ + device_id(16) -> profile id(16): the deviceProfileId the
                                                cloud sent with the device (Device.profile_id)
Record values are in the checksummed envelope of codec.py; a store upgraded from the previous
format may still hold values of that format (devices led by a schema number, attributes and
latest_ts without one), which are read as they are. The synced/ keys only exist in the new one.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import lmdb
from loguru import logger

from edge_sync.errors import Conflict
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Device, DeviceProfile, Scope, Tenant

_log = logger.bind(component="storage")

_SCOPE_BYTE = {Scope.CLIENT: b"C", Scope.SERVER: b"S", Scope.SHARED: b"H"}
_TENANT = b"synced/tenant"
_PROFILE = b"synced/device_profile/"
_PROFILE_NAME = b"synced/device_profile_name/"
_PROFILE_OF = b"synced/device_profile_of/"


class EntityStore:
    """Synchronous access to the entity store inside LmdbStore transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self._db = store.dbs

    @property
    def _previous(self) -> bool:
        """Whether values of the previous format may be in the store (see codec.py)."""
        return self.store.previous_values

    # -- devices ---------------------------------------------------------------------------------

    def device_by_token(self, txn: lmdb.Transaction, token: str) -> Device | None:
        if not token:
            return None
        raw_id = txn.get(token.encode(), db=self._db["device_tokens"])
        return None if raw_id is None else self.device(txn, uuid.UUID(bytes=bytes(raw_id)))

    def device(self, txn: lmdb.Transaction, device_id: uuid.UUID) -> Device | None:
        raw = txn.get(device_id.bytes, db=self._db["devices"])
        if raw is None:
            return None
        return self._with_profile(
            txn, codec.decode_device(device_id.bytes, raw, previous=self._previous))

    def _with_profile(self, txn: lmdb.Transaction, device: Device) -> Device:
        raw = txn.get(_PROFILE_OF + device.id.bytes, db=self._db["meta"])
        if raw is None:
            return device
        return replace(device, profile_id=codec.to_uuid(raw, f"meta: profile of device {device.id}"))

    def has_device(self, txn: lmdb.Transaction, device_id: uuid.UUID) -> bool:
        """Whether the device exists (nothing decoded)."""
        return txn.get(device_id.bytes, db=self._db["devices"]) is not None

    def device_by_name(self, txn: lmdb.Transaction, name: str) -> Device | None:
        if not name:
            return None
        raw_id = txn.get(name.encode(), db=self._db["device_names"])
        return None if raw_id is None else self.device(txn, uuid.UUID(bytes=bytes(raw_id)))

    def devices(self, txn: lmdb.Transaction) -> list[Device]:
        with txn.cursor(db=self._db["devices"]) as cur:
            return [self._with_profile(txn, codec.decode_device(k, v, previous=self._previous))
                    for k, v in cur.iternext()]

    def device_count(self, txn: lmdb.Transaction) -> int:
        return self.store.entries(txn, "devices")

    def check_new_device(self, txn: lmdb.Transaction, device: Device) -> None:
        """Raise Conflict when the id, name or token is taken. Writes nothing."""
        if txn.get(device.id.bytes, db=self._db["devices"]) is not None:
            raise Conflict(f"device id {device.id} already exists")
        if txn.get(device.name.encode(), db=self._db["device_names"]) is not None:
            raise Conflict(f"a device named {device.name!r} already exists")
        if txn.get(device.token.encode(), db=self._db["device_tokens"]) is not None:
            raise Conflict("that access token is already used by another device")

    def put_device(self, txn: lmdb.Transaction, device: Device) -> None:
        """Insert or replace a device, keeping the name and token indexes (and its profile id)
        in step."""
        old = self.device(txn, device.id)
        if old is not None:
            if old.token and old.token != device.token:
                txn.delete(old.token.encode(), db=self._db["device_tokens"])
            if old.name != device.name:
                txn.delete(old.name.encode(), db=self._db["device_names"])
        txn.put(device.id.bytes, codec.encode_device(device), db=self._db["devices"])
        if device.token:  # a device provisioned by the cloud gets its token with its credentials
            txn.put(device.token.encode(), device.id.bytes, db=self._db["device_tokens"])
        txn.put(device.name.encode(), device.id.bytes, db=self._db["device_names"])
        if device.profile_id is not None:
            txn.put(_PROFILE_OF + device.id.bytes, device.profile_id.bytes, db=self._db["meta"])
        elif old is not None and old.profile_id is not None:
            txn.delete(_PROFILE_OF + device.id.bytes, db=self._db["meta"])

    def delete_device(self, txn: lmdb.Transaction, device_id: uuid.UUID) -> bool:
        old = self.device(txn, device_id)
        if old is None:
            return False
        txn.delete(device_id.bytes, db=self._db["devices"])
        if old.token:
            txn.delete(old.token.encode(), db=self._db["device_tokens"])
        txn.delete(old.name.encode(), db=self._db["device_names"])
        if old.profile_id is not None:
            txn.delete(_PROFILE_OF + device_id.bytes, db=self._db["meta"])
        return True

    # -- what the cloud syncs: the tenant and device profiles -------------------------------------

    def tenant(self, txn: lmdb.Transaction) -> Tenant | None:
        raw = txn.get(_TENANT, db=self._db["meta"])
        if raw is None:
            return None
        tid, title, entity = codec.unpack_fields(raw, "meta: synced tenant", 3)
        return Tenant(codec.to_uuid(tid, "meta: synced tenant id"), title, entity)

    def put_tenant(self, txn: lmdb.Transaction, tenant: Tenant) -> None:
        txn.put(_TENANT, codec.pack((tenant.id.bytes, tenant.title, tenant.entity)),
                db=self._db["meta"])

    def delete_tenant(self, txn: lmdb.Transaction) -> bool:
        return bool(txn.delete(_TENANT, db=self._db["meta"]))

    def device_profile(self, txn: lmdb.Transaction, profile_id: uuid.UUID) -> DeviceProfile | None:
        raw = txn.get(_PROFILE + profile_id.bytes, db=self._db["meta"])
        if raw is None:
            return None
        name, entity = codec.unpack_fields(raw, f"meta: device profile {profile_id}", 2)
        return DeviceProfile(profile_id, name, entity)

    def device_profile_by_name(self, txn: lmdb.Transaction, name: str) -> DeviceProfile | None:
        raw_id = txn.get(_PROFILE_NAME + codec.text_key(name), db=self._db["meta"])
        if raw_id is None:
            return None
        return self.device_profile(txn, codec.to_uuid(raw_id, f"meta: device profile {name!r}"))

    def device_profiles(self, txn: lmdb.Transaction) -> list[DeviceProfile]:
        out: list[DeviceProfile] = []
        with txn.cursor(db=self._db["meta"]) as cur:
            if cur.set_range(_PROFILE):
                for k, v in cur.iternext():
                    key = bytes(k)
                    if not key.startswith(_PROFILE):
                        break
                    pid = codec.to_uuid(key[len(_PROFILE):], "meta: device profile key")
                    name, entity = codec.unpack_fields(v, f"meta: device profile {pid}", 2)
                    out.append(DeviceProfile(pid, name, entity))
        return out

    def device_profile_ids(self, txn: lmdb.Transaction) -> dict[str, uuid.UUID]:
        """Profile name -> id of every synced device profile (a device's ``type`` names its
        profile): what the uplink's Device JSON needs for deviceProfileId. One range read of
        the name index, no profile JSON decoded."""
        out: dict[str, uuid.UUID] = {}
        with txn.cursor(db=self._db["meta"]) as cur:
            if cur.set_range(_PROFILE_NAME):
                for k, v in cur.iternext():
                    key = bytes(k)
                    if not key.startswith(_PROFILE_NAME):
                        break
                    name = key[len(_PROFILE_NAME):].decode()
                    out[name] = codec.to_uuid(v, f"meta: device profile {name!r}")
        return out

    def put_device_profile(self, txn: lmdb.Transaction, profile: DeviceProfile) -> uuid.UUID | None:
        """Insert or replace a profile and index it by name. Names are unique in a ThingsBoard
        tenant; should another synced profile still hold the name (a rename not yet synced),
        the name goes to this one and the other's id is returned."""
        meta = self._db["meta"]
        old = self.device_profile(txn, profile.id)
        if old is not None and old.name != profile.name:
            self._drop_profile_name(txn, old)
        name_key = _PROFILE_NAME + codec.text_key(profile.name)
        holder = txn.get(name_key, db=meta)
        displaced = None
        if holder is not None and bytes(holder) != profile.id.bytes:
            displaced = codec.to_uuid(holder, f"meta: device profile {profile.name!r}")
        txn.put(_PROFILE + profile.id.bytes, codec.pack((profile.name, profile.entity)), db=meta)
        txn.put(name_key, profile.id.bytes, db=meta)
        return displaced

    def delete_device_profile(self, txn: lmdb.Transaction, profile_id: uuid.UUID) -> bool:
        old = self.device_profile(txn, profile_id)
        if old is None:
            return False
        txn.delete(_PROFILE + profile_id.bytes, db=self._db["meta"])
        self._drop_profile_name(txn, old)
        return True

    def _drop_profile_name(self, txn: lmdb.Transaction, profile: DeviceProfile) -> None:
        """Remove the name index entry of ``profile``, unless another profile holds it now."""
        name_key = _PROFILE_NAME + codec.text_key(profile.name)
        holder = txn.get(name_key, db=self._db["meta"])
        if holder is not None and bytes(holder) == profile.id.bytes:
            txn.delete(name_key, db=self._db["meta"])

    # -- attributes ------------------------------------------------------------------------------

    @staticmethod
    def _attr_prefix(entity_id: uuid.UUID, scope: Scope) -> bytes:
        return entity_id.bytes + _SCOPE_BYTE[scope]

    def put_attributes(
        self, txn: lmdb.Transaction, entity_id: uuid.UUID, scope: Scope, values: Mapping[str, Any],
        *, ts: int,
    ) -> None:
        prefix = self._attr_prefix(entity_id, scope)
        db = self._db["attributes"]
        for key, value in values.items():
            txn.put(prefix + codec.text_key(key), codec.pack((value, ts)), db=db)

    def delete_attributes(
        self, txn: lmdb.Transaction, entity_id: uuid.UUID, scope: Scope, keys: Iterable[str]
    ) -> int:
        prefix = self._attr_prefix(entity_id, scope)
        return sum(
            1 for key in keys if txn.delete(prefix + key.encode(), db=self._db["attributes"])
        )

    def attributes(
        self,
        txn: lmdb.Transaction,
        entity_id: uuid.UUID,
        scope: Scope,
        keys: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Attribute values of one scope; all of them when keys is None."""
        prefix = self._attr_prefix(entity_id, scope)
        db = self._db["attributes"]
        if keys is not None:
            out: dict[str, Any] = {}
            for key in keys:
                raw = txn.get(prefix + key.encode(), db=db)
                if raw is not None:
                    out[key] = codec.unpack_fields(raw, f"attributes: {entity_id} {key!r}", 2,
                                                   previous=self._previous)[0]
            return out
        found: dict[str, Any] = {}
        with txn.cursor(db=db) as cur:
            if cur.set_range(prefix):
                for k, v in cur.iternext():
                    if not bytes(k).startswith(prefix):
                        break
                    key = bytes(k)[len(prefix):].decode()
                    found[key] = codec.unpack_fields(
                        v, f"attributes: {entity_id} {key!r}", 2, previous=self._previous)[0]
        return found

    def delete_entity_data(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> int:
        """Remove every attribute (all scopes) and latest value of an entity (a device or any
        other entity the cloud removed); how many records went. Two range deletes."""
        removed = 0
        for name in ("attributes", "latest_ts"):
            with txn.cursor(db=self._db[name]) as cur:
                if not cur.set_range(entity_id.bytes):
                    continue
                while bytes(cur.key()).startswith(entity_id.bytes):
                    cur.delete()  # moves to the next entry (an empty key past the end)
                    removed += 1
        return removed

    # -- latest telemetry ------------------------------------------------------------------------

    def put_latest(
        self, txn: lmdb.Transaction, entity_id: uuid.UUID, values: Mapping[str, tuple[int, Any]]
    ) -> None:
        """Keep, per key, the value with the highest ts (an older ts never overwrites)."""
        db = self._db["latest_ts"]
        prefix = entity_id.bytes
        for key, (ts, value) in values.items():
            k = prefix + codec.text_key(key)
            old = txn.get(k, db=db)
            if old is not None and codec.unpack_fields(
                    old, f"latest_ts: {entity_id} {key!r}", 2, previous=self._previous)[0] > ts:
                continue
            txn.put(k, codec.pack((ts, value)), db=db)

    def latest(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> dict[str, tuple[int, Any]]:
        prefix = entity_id.bytes
        out: dict[str, tuple[int, Any]] = {}
        with txn.cursor(db=self._db["latest_ts"]) as cur:
            if cur.set_range(prefix):
                for k, v in cur.iternext():
                    if not bytes(k).startswith(prefix):
                        break
                    key = bytes(k)[len(prefix):].decode()
                    ts, value = codec.unpack_fields(
                        v, f"latest_ts: {entity_id} {key!r}", 2, previous=self._previous)
                    out[key] = (ts, value)
        return out

    # -- downlinks -------------------------------------------------------------------------------

    def downlink_applied(self, txn: lmdb.Transaction, key: bytes) -> bool:
        return txn.get(key, db=self._db["downlinks"]) is not None

    def record_downlink(self, txn: lmdb.Transaction, key: bytes, *, now_ms: int) -> None:
        txn.put(key, codec.u64(now_ms), db=self._db["downlinks"])


TOKEN_CHANGED = "token_changed"
TOKEN_REMOVED = "token_removed"
DEVICE_DELETED = "device_deleted"


@dataclass(frozen=True, slots=True)
class Revocation:
    """A device whose access token in use may no longer name it, once a write committed: its
    token was changed (TOKEN_CHANGED) or removed (TOKEN_REMOVED), or the device is gone
    (DEVICE_DELETED). ``reason`` is that word (the ``reason`` field of the log lines of those
    who act on it), ``why`` the same in words for their message; never a token."""

    device_id: uuid.UUID
    reason: str
    why: str

    @property
    def deleted(self) -> bool:
        return self.reason == DEVICE_DELETED


Revoked = Mapping[uuid.UUID, Revocation]
"""What a TokenCache watcher is told: the revocations of one commit, by device."""


class TokenCache:
    """Access token -> Device, so authenticating a request needs no LMDB read.

    Every writer that changes devices calls invalidate() after its commit. A reader that missed
    stores what it read only if no invalidation happened since it started looking (the
    generation check), so a stale device never enters the cache. Unknown tokens are not cached.

    What authenticated a device once and keeps acting for it (an MQTT connection, an HTTP long
    poll) ``watch``es the cache: a writer whose commit changed or removed devices' tokens, or
    removed devices, names them to invalidate() (Revocation), and every watcher is told, on the
    writer's thread, after the cache forgot them (a token checked from then on reads the
    committed store). A watcher only hands the news to its own thread; it must not block.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._map: dict[str, Device] = {}
        self._lock = threading.Lock()
        self._watchers: list[Callable[[Revoked], None]] = []
        self.generation = 0

    def get(self, token: str) -> Device | None:
        return self._map.get(token)

    def put(self, token: str, device: Device, *, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            if len(self._map) >= self._capacity:
                self._map.clear()
            self._map[token] = device

    def invalidate(self, revoked: Iterable[Revocation] = ()) -> None:
        """Forget every token; then tell the watchers about ``revoked`` (when there are any;
        of two for one device, the later)."""
        with self._lock:
            self.generation += 1
            self._map.clear()
            watchers = tuple(self._watchers)
        changes = {r.device_id: r for r in revoked}
        if not changes:
            return
        for watcher in watchers:
            try:
                watcher(changes)
            except Exception as exc:  # one watcher's bug must not fail the writer's commit
                _log.bind(error=str(exc)).error(
                    "a watcher of revoked access tokens failed: {}: {}", type(exc).__name__, exc)

    def watch(self, watcher: Callable[[Revoked], None]) -> Callable[[], None]:
        """Tell ``watcher`` about every revocation from now on; what stops it."""
        with self._lock:
            self._watchers.append(watcher)

        def unwatch() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._watchers.remove(watcher)

        return unwatch
