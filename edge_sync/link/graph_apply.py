"""Applying the entity graph's downlinks: every kind of entity_graph.KINDS (created, updated,
deleted) inside the downlink's transaction, in full-sync order whatever the order of the
DownlinkMsg's lists, holding back what references something the edge does not have yet and
applying it once that arrives. Pure over a transaction and a GraphStore: no actor, no I/O
besides the store; the DownlinkActor orchestrates.

Per kind (ThingsBoard 4.x JSON, as ThingsBoard Edge's ``*CloudProcessor`` classes of
thingsboard-edge read them; ids from idMSB/idLSB, or the JSON when a kind has no id halves):
- every kind: its JSON kept as received in the graph (storage/graph_store.py), indexed by id,
  (type, name) and what it references; the same JSON again is "unchanged" (nothing written, no
  apply log entry), so a full sync sent again applies nothing twice;
- the tenant, device profiles, devices and device credentials also keep the edge's operational
  records (storage/entity_store.py: the device table, tokens, the profile names the uplink
  needs), as the DownlinkActor did before the graph;
- user credentials: only ``userId`` and ``enabled`` are kept, never a password, an activate or
  a reset token (ThingsBoard's UserCredentials JSON carries them);
- a widgets bundle keeps its ``widgets`` field beside its JSON;
- a relation (EntityRelation JSON) is keyed by its two ends, type and group.
An entity whose hard references (graph_store.hard_references) are not on the edge is held: the
payload's list field and that payload alone, serialized, with what it waits for; the downlink
succeeds. When an applied entity provides what a held one waits for, the held one is applied in
the same transaction (each release in a nested transaction: one whose content is refused then,
an access token another device took meanwhile say, stays held, waiting for nothing, with a
WARNING instead of failing the downlink that released it); one still lacking some references
waits for those only. An update of a held entity replaces the held payload; a delete drops it.
A delete removes the entity and its dependants (graph_store.GraphStore.delete_entity).

Conflicts with what the edge holds, as ThingsBoard Edge settles them (thingsboard-edge,
application/.../service/edge/rpc/processor/device/BaseDeviceProcessor.java):
- a device whose name another device has on the edge is applied under a unique name, its name
  + "_" + 15 random letters (BaseDeviceProcessor.updateDeviceNameIfDuplicateExists and
  BaseEdgeProcessor.generateUniqueNameIfDuplicateExists: never refused, never the other device
  evicted), and the JSON kept with that name, as ThingsBoard Edge saves the renamed device. The
  same device sent again while the name is still taken keeps the unique name it was given (no
  new letters each time); once the name is free, the next version of it takes the cloud's name;
- credentials whose access token another device has on the edge are refused alone
  (updateDeviceCredentials -> DeviceCredentialsDataValidator: "Device credentials are already
  assigned to another device!", thrown after the device and its profile were saved): the device
  keeps the token it had, the rest of the downlink is applied, and GraphOutcome.refused says
  why, so the DownlinkActor answers success=false as ThingsBoard Edge does. During a full sync
  the refused credentials count as sent (their device is still assigned).

Credentials that are not an access token (MQTT_BASIC, X509_CERTIFICATE, LWM2M_CREDENTIALS, or
any other type): a ThingsBoard device has one credentials row, which
DeviceCredentialsServiceImpl.updateDeviceCredentials replaces, so its access token is gone and
DefaultTransportApiService (validateCredentials, validateUserNameCredentials) finds no
ACCESS_TOKEN credentials for it from then on. The edge serves access tokens only: the device's
token is removed from its record and the token index (GraphOutcome.revoked, logged once the
downlink commits), the JSON kept in the graph. The same credentials again while the device
still has a token (sent unchanged by a full sync) remove it too. Access token credentials that
come later give the device that token again. A token removed (GraphOutcome.revoked) or replaced
by another (GraphOutcome.tokens_changed) closes what authenticated with the old one once the
downlink commits (link/downlink_actor.revocations).
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import lmdb

from edge_sync.common.entity_graph import BY_FIELD, KINDS, Kind, Ref, provides, relation_key
from edge_sync.common.wire import (
    ACTION_OF_UPDATE,
    compact_json,
    entity_id_in,
    gateway_flag,
    parse_entity_json,
    uuid_of,
)
from edge_sync.errors import BadRequest, Conflict
from edge_sync.proto import edge_pb2
from edge_sync.storage import graph_store as gs
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.records import Action, Device, DeviceProfile, Tenant

GRAPH_FIELDS = frozenset(k.downlink_field for k in KINDS)
"""The DownlinkMsg lists this module applies."""
_BY_RANK = sorted(KINDS, key=lambda k: k.sync_rank)
_ID_FIELD = {"TENANT": "id", "RULE_CHAIN_METADATA": "ruleChainId", "USER_CREDENTIALS": "userId",
             "DEVICE_CREDENTIALS": "deviceId"}
_ID_TYPE = {"RULE_CHAIN_METADATA": "RULE_CHAIN", "USER_CREDENTIALS": "USER",
            "DEVICE_CREDENTIALS": None}
_VERB = {gs.CREATED: "created", gs.CHANGED: "updated", gs.UNCHANGED: "unchanged"}
UNIQUE_SUFFIX_LETTERS = 15
"""ThingsBoard Edge's generateRandomAlphabeticString: name + "_" + StringUtils.randomAlphabetic(15)."""


ACCESS_TOKEN = "ACCESS_TOKEN"
_TYPE_SHOWN = 64
"""At most this many characters of a credentials type the cloud sent go in a log line."""


class TokenTaken(Conflict):
    """Device credentials whose access token another device has on the edge."""


def credentials_type(body: dict[str, Any]) -> str:
    """A DeviceCredentials JSON's credentialsType: ACCESS_TOKEN when the field is absent; a
    value that is not text (null, say), as JSON."""
    kind = body.get("credentialsType", ACCESS_TOKEN)
    return kind if isinstance(kind, str) else json.dumps(kind)


@dataclass(frozen=True, slots=True)
class Revoked:
    """A device whose credentials from the cloud are not an access token: its token removed."""

    device_id: uuid.UUID
    credentials_type: str  # as the cloud sent it, at most _TYPE_SHOWN characters


@dataclass(frozen=True, slots=True)
class Renamed:
    """A device applied under a unique name: the name the cloud gave it is another device's."""

    device_id: uuid.UUID
    cloud_name: str
    name: str  # the name it has on the edge
    holder_id: uuid.UUID  # the device that has cloud_name on the edge


def unique_name(name: str) -> str:
    """ThingsBoard Edge's unique name for an entity whose name is taken (BaseEdgeProcessor
    .generateRandomAlphabeticString): the name, "_" and 15 random letters."""
    letters = string.ascii_letters
    return f"{name}_" + "".join(secrets.choice(letters) for _ in range(UNIQUE_SUFFIX_LETTERS))


def is_unique_name_of(candidate: str, name: str) -> bool:
    """Whether ``candidate`` is a unique name made for ``name`` (unique_name)."""
    suffix = "_[A-Za-z]{" + str(UNIQUE_SUFFIX_LETTERS) + "}"
    return re.fullmatch(re.escape(name) + suffix, candidate) is not None


@dataclass(slots=True)
class GraphOutcome:
    """What the graph part of one downlink did (told, counted and logged after the commit)."""

    done: list[str] = field(default_factory=list)  # for the downlink's log line
    applied: list[tuple[str, str]] = field(default_factory=list)  # (type, ADDED/UPDATED/DELETED)
    held: list[str] = field(default_factory=list)  # what was held, and for what
    released: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)  # devices applied under a unique name
    revoked: list[Revoked] = field(default_factory=list)  # devices whose token went
    # devices whose access token the cloud replaced by another: connections that authenticated
    # with the old one are closed once the downlink commits
    tokens_changed: list[uuid.UUID] = field(default_factory=list)
    # payloads refused alone while the rest was applied (credentials whose token another
    # device has): the downlink is answered success=false with these, as ThingsBoard Edge does
    refused: list[str] = field(default_factory=list)
    profiles_changed: bool = False
    devices_changed: bool = False  # the token cache must forget
    devices_removed: list[uuid.UUID] = field(default_factory=list)  # their actors are told
    # every entity put: (type, id, CREATED / CHANGED / UNCHANGED), for link/relation_requests.py
    saved: list[tuple[str, uuid.UUID, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Change:
    """One payload, parsed and checked."""

    kind: Kind
    action: Action
    entity_id: uuid.UUID | None  # None: a relation
    body: dict[str, Any] | None  # None: a delete without JSON
    text: str = ""  # the JSON kept
    extra: str | None = None
    rel: tuple[Ref, Ref, str, str] | None = None

    @property
    def entity_type(self) -> str:
        return self.kind.entity_type

    def what(self) -> str:
        if self.rel is not None:
            return gs.describe_relation(self.rel[0], self.rel[1], self.rel[2])
        name = gs.name_of(self.entity_type, self.body or {})
        return f"{self.entity_type} {self.entity_id}" + (f" ({name})" if name else "")

    def held_key(self) -> bytes:
        if self.rel is not None:
            return gs.held_relation_key(*self.rel)
        assert self.entity_id is not None
        return gs.held_entity_key(self.entity_type, self.entity_id)


def parse_payload(field_name: str, m: Any) -> _Change:
    """A payload of list ``field_name`` as a change; BadRequest when it cannot be applied."""
    kind = BY_FIELD[field_name]
    etype = kind.entity_type
    if "msgType" in m.DESCRIPTOR.fields_by_name:
        found = ACTION_OF_UPDATE.get(m.msgType)
        if found is None:
            raise BadRequest(f"{field_name} type {m.msgType} unknown")
        action = found
    else:  # credentials: always the current ones
        action = Action.UPDATED
    body: dict[str, Any] | None = None
    if action != Action.DELETED or m.entity:
        try:
            body = parse_entity_json(m.entity, field_name)
        except BadRequest:
            if action != Action.DELETED:
                raise
    change = _Change(kind, action, None, body, m.entity)
    if etype == "RELATION":
        change.rel = relation_key(body or {})
        if change.rel is None:
            raise BadRequest(f"{field_name}: relation without both ends (from, to)")
        return change
    if kind.has_id_halves and (m.idMSB or m.idLSB):
        change.entity_id = uuid_of(m.idMSB, m.idLSB)
    elif body is not None:
        id_field = _ID_FIELD.get(etype, "id")
        change.entity_id = entity_id_in(body, id_field, field_name, _ID_TYPE.get(etype, etype))
    elif etype != "TENANT":  # a tenant is deleted without JSON; the others need an id
        raise BadRequest(f"{field_name}: no id")
    if etype == "USER_CREDENTIALS" and body is not None:
        # never a password, an activate or a reset token: the user and whether it is enabled
        change.text = json.dumps({"userId": body.get("userId"),
                                  "enabled": bool(body.get("enabled"))},
                                 separators=(",", ":"))
        change.body = json.loads(change.text)
    if etype == "WIDGETS_BUNDLE" and m.HasField("widgets"):
        change.extra = m.widgets
    return change


class GraphApplier:
    """Applies graph payloads inside a write transaction (see the module docstring)."""

    def __init__(self, graph: GraphStore) -> None:
        self.graph = graph
        self.entities: EntityStore = graph.entities_store

    # -- a DownlinkMsg --------------------------------------------------------------------------

    def apply(self, txn: lmdb.Transaction, msg: edge_pb2.DownlinkMsg, now_ms: int,
              out: GraphOutcome) -> None:
        """Every graph payload of ``msg``, in full-sync order (Kind.sync_rank)."""
        present = [(BY_FIELD[fd.name].sync_rank, fd.name, value) for fd, value in msg.ListFields()
                   if fd.name in GRAPH_FIELDS]
        for _, field_name, payloads in sorted(present, key=lambda p: p[0]):
            for m in payloads:
                self.apply_payload(txn, field_name, m, now_ms, out)

    def mark_seen(self, txn: lmdb.Transaction, msg: edge_pb2.DownlinkMsg) -> None:
        """A downlink applied before, redelivered during a full sync: what it names is still
        assigned to the edge, so the end of the sync must not take it for gone. Only marked
        seen, never applied again (a later update may have replaced what it carried)."""
        for kind in _BY_RANK:
            for m in getattr(msg, kind.downlink_field):
                try:
                    change = parse_payload(kind.downlink_field, m)
                except BadRequest:
                    continue
                if change.action == Action.DELETED:
                    continue
                if change.rel is not None:
                    self.graph.mark_seen(txn, relation=change.rel)
                elif change.entity_id is not None:
                    self.graph.mark_seen(txn, entity=(change.entity_type, change.entity_id))

    def apply_payload(self, txn: lmdb.Transaction, field_name: str, m: Any, now_ms: int,
                      out: GraphOutcome) -> None:
        """One payload, then whatever it releases (and what that releases, in order).
        Credentials whose access token another device has are refused alone (TokenTaken:
        nothing of them written), as ThingsBoard Edge refuses them after saving their device;
        during a full sync they still count as sent, so the sweep leaves the device's
        credentials as they are."""
        change = parse_payload(field_name, m)
        try:
            provided = self._apply_change(txn, change, field_name, m, now_ms, out)
        except TokenTaken as exc:
            assert change.entity_id is not None
            self.graph.mark_seen(txn, entity=(change.entity_type, change.entity_id))
            out.refused.append(str(exc))
            out.done.append(f"{change.what()} refused: {exc}")
            return
        self._release(txn, provided, now_ms, out)

    # -- holding and releasing -----------------------------------------------------------------

    def release_ready(self, txn: lmdb.Transaction, now_ms: int, out: GraphOutcome) -> None:
        """Apply every held entity whose references are all on the edge now, and narrow what
        the others wait for: for what arrived other than by a downlink (a device or an asset
        made on the edge). One read of the held table."""
        ready: list[Ref] = []
        for key in self.graph.held_keys(txn):
            held = self.graph.held_payload(txn, key)
            if held is not None:
                ready.extend(r for r in held.entity.waiting_for if self.graph.present(txn, r))
        self._release(txn, sorted(set(ready)), now_ms, out)

    def _release(self, txn: lmdb.Transaction, provided: list[Ref], now_ms: int,
                 out: GraphOutcome) -> None:
        queue: deque[Ref] = deque(provided)
        while queue:
            ref = queue.popleft()
            for key in self.graph.waiting_on(txn, ref):
                held = self.graph.held_payload(txn, key)
                if held is None or self.graph.held_outside_sync(txn, key):
                    continue
                lacking = [r for r in held.entity.waiting_for if not self.graph.present(txn, r)]
                if lacking:  # what it still waits for, and nothing that has arrived
                    self.graph.narrow_held(txn, key, lacking)
                    continue
                self.graph.drop_held(txn, key)
                m = getattr(edge_pb2.DownlinkMsg(), held.field).add()
                m.MergeFromString(held.payload)
                more = self._nested(txn, lambda child, h=held, p=m: self._apply_released(
                    child, h, p, now_ms, out))
                if isinstance(more, BadRequest):  # refused now: kept held, waiting for
                    # nothing (a later version of it replaces it, a delete drops it)
                    out.warnings.append(f"{held.entity.what} not applied once its references "
                                        f"came, kept held: {more}")
                    self.graph.hold(txn, key, entity_type=held.entity.entity_type,
                                    entity_id=held.entity.id, what=held.entity.what,
                                    field=held.field, payload=held.payload, waiting_for=(),
                                    now_ms=held.entity.since_ms)
                    continue
                out.released.append(held.entity.what)
                queue.extend(more)

    def _apply_released(self, txn: lmdb.Transaction, held: gs.HeldPayload, m: Any, now_ms: int,
                        out: GraphOutcome) -> list[Ref]:
        change = parse_payload(held.field, m)
        sub = GraphOutcome()
        provided = self._apply_change(txn, change, held.field, m, now_ms, sub)
        out.done.extend(f"{d} (released)" for d in sub.done)
        out.applied.extend(sub.applied)
        out.saved.extend(sub.saved)
        out.held.extend(sub.held)
        out.warnings.extend(sub.warnings)
        out.renamed.extend(sub.renamed)
        out.revoked.extend(sub.revoked)
        out.tokens_changed.extend(sub.tokens_changed)
        out.profiles_changed |= sub.profiles_changed
        out.devices_changed |= sub.devices_changed
        return provided

    def _nested(self, txn: lmdb.Transaction, fn: Any) -> Any:
        """fn in a nested transaction: its writes are kept only if it returns; refused content
        leaves nothing and gives the BadRequest."""
        child = self.graph.store.env.begin(write=True, parent=txn)
        try:
            result = fn(child)
        except BadRequest as exc:
            child.abort()
            return exc
        except BaseException:
            child.abort()
            raise
        child.commit()
        return result

    # -- one change -----------------------------------------------------------------------------

    def _apply_change(self, txn: lmdb.Transaction, c: _Change, field_name: str, m: Any,
                      now_ms: int, out: GraphOutcome) -> list[Ref]:
        """Apply (or hold, or delete) one change; what it provides once applied."""
        graph = self.graph
        if c.action == Action.DELETED:
            self._delete(txn, c, now_ms, out)
            return []
        assert c.body is not None
        refs = ([c.rel[0], c.rel[1]] if c.rel is not None
                else gs.hard_references(c.entity_type, c.body))
        self._check(txn, c, out)  # refused content fails before anything is held or written
        missing = [r for r in refs if not graph.present(txn, r)]
        if missing:
            what = c.what()
            if c.entity_type == "USER_CREDENTIALS":  # held as kept: never a password or token
                m = type(m)(entity=c.text)
            graph.hold(txn, c.held_key(), entity_type=c.entity_type, entity_id=c.entity_id,
                       what=what, field=field_name, payload=m.SerializeToString(),
                       waiting_for=missing, now_ms=now_ms)
            waits = ", ".join(str(r) for r in missing)
            out.held.append(f"{what} waits for {waits}")
            out.done.append(f"{what} held (waits for {waits})")
            return []
        if c.rel is not None:
            result = graph.put_relation(txn, c.text, now_ms=now_ms, body=c.body)
            out.done.append(f"{c.what()} {_VERB[result]}")
            if result != gs.UNCHANGED:
                out.applied.append(("RELATION", gs.ADDED if result == gs.CREATED else gs.UPDATED))
            return []
        assert c.entity_id is not None
        if graph.edge_change_pending(txn, c.entity_id, c.entity_type):
            # the edge changed it and its event has not reached the cloud: what the cloud sends
            # (a full sync, before uplinks start) predates that change, which the cloud applies
            # when the event arrives; the edge's version stays
            out.done.append(f"{c.what()} kept: the edge's own change is on its way to the cloud")
            return provides(c.entity_type, c.entity_id, c.body)
        renamed = self._unique_device_name(txn, c) if c.entity_type == "DEVICE" else None
        result = graph.put_entity(txn, c.entity_type, c.entity_id, c.text, now_ms=now_ms,
                                  extra=c.extra, body=c.body, refs=refs)
        if renamed is not None and result != gs.UNCHANGED:  # logged when it is applied
            out.renamed.append(renamed)
        # (checked already: the operational write refuses nothing now)
        if result != gs.UNCHANGED or not self._operational_current(txn, c):
            self._operational(txn, c, now_ms, out)
        out.done.append(f"{c.what()} {_VERB[result]}")
        out.saved.append((c.entity_type, c.entity_id, result))
        if result != gs.UNCHANGED:
            out.applied.append((c.entity_type, gs.ADDED if result == gs.CREATED else gs.UPDATED))
        return provides(c.entity_type, c.entity_id, c.body)

    def _delete(self, txn: lmdb.Transaction, c: _Change, now_ms: int, out: GraphOutcome) -> None:
        graph = self.graph
        if c.rel is not None:
            src, dst, rel_type, group = c.rel
            gone = graph.delete_relation(txn, src, dst, rel_type, group, now_ms=now_ms)
            out.done.append(f"{c.what()} deleted" if gone else f"{c.what()} (none) deleted")
            if gone:
                out.applied.append(("RELATION", gs.DELETED))
            return
        entity_id = c.entity_id
        if entity_id is None:  # a tenant deleted without JSON: the edge's tenant
            tenant = self.entities.tenant(txn)
            found = graph.entities(txn, entity_type="TENANT")
            entity_id = tenant.id if tenant is not None else found[0].id if found else None
            if entity_id is None:
                out.done.append("tenant (none) deleted")
                return
        rels: list[str] = []
        removed = graph.delete_entity(txn, c.entity_type, entity_id, now_ms=now_ms,
                                      relations_removed=rels)
        out.applied.extend(("RELATION", gs.DELETED) for _ in rels)
        if not removed:
            out.done.append(f"{c.entity_type} {entity_id} (none) deleted")
            return
        out.applied.extend((r.kind, gs.DELETED) for r in removed)
        extra = f" with {len(removed) - 1} dependants" if len(removed) > 1 else ""
        out.done.append(f"{c.entity_type} {entity_id} deleted{extra}")
        dead = [uuid.UUID(r.key) for r in removed if r.kind == "DEVICE"]
        if dead:  # their open RPC requests were closed with them (RpcStore.close_device)
            out.devices_changed = True
            out.devices_removed.extend(dead)
        if any(r.kind == "DEVICE_PROFILE" for r in removed):
            out.profiles_changed = True

    # -- the operational records -----------------------------------------------------------------

    def _check(self, txn: lmdb.Transaction, c: _Change, out: GraphOutcome) -> None:
        """Refuse content the edge cannot apply (BadRequest), before anything is written."""
        body = c.body or {}
        if c.entity_type == "DEVICE_PROFILE":
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"deviceProfileUpdateMsg: device profile {c.entity_id} has no "
                                 "name")
        elif c.entity_type == "DEVICE":
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest("deviceUpdateMsg: device has no name")
            # a name another device has is not refused: _unique_device_name renames
            if body.get("deviceProfileId") is not None:
                entity_id_in(body, "deviceProfileId", "deviceUpdateMsg", "DEVICE_PROFILE")
            try:
                int(body.get("createdTime") or 0)
            except (TypeError, ValueError) as exc:
                raise BadRequest("deviceUpdateMsg: createdTime is not a number") from exc
        elif c.entity_type == "DEVICE_CREDENTIALS":
            token = body.get("credentialsId")
            if credentials_type(body) != ACCESS_TOKEN:  # nothing to check: no token kept
                return
            if not isinstance(token, str) or not token:
                raise BadRequest("deviceCredentialsUpdateMsg: no credentialsId")
            holder = self.entities.device_by_token(txn, token)
            if holder is not None and holder.id != c.entity_id:  # never the token in the text
                raise TokenTaken(f"credentials of device {c.entity_id} refused: their access "
                                 f"token is used by device {holder.id} on the edge (ThingsBoard "
                                 "Edge: Device credentials are already assigned to another "
                                 "device!)")

    def _unique_device_name(self, txn: lmdb.Transaction, c: _Change) -> Renamed | None:
        """A device whose name another device has on the edge: applied under ThingsBoard
        Edge's unique name (see the module docstring), its JSON changed to match. The unique
        name it was given before is kept while the name is still taken."""
        assert c.body is not None and c.entity_id is not None
        name = str(c.body["name"])
        holder = self.entities.device_by_name(txn, name)
        if holder is None or holder.id == c.entity_id:
            return None
        current = self.entities.device(txn, c.entity_id)
        if current is not None and is_unique_name_of(current.name, name):
            new_name = current.name
        else:
            new_name = unique_name(name)
            while self.entities.device_by_name(txn, new_name) is not None:
                new_name = unique_name(name)
        c.body = {**c.body, "name": new_name}
        c.text = compact_json(c.body)
        return Renamed(c.entity_id, name, new_name, holder.id)

    def _operational_current(self, txn: lmdb.Transaction, c: _Change) -> bool:
        """Whether the operational record already matches an unchanged JSON (an entity kept
        before the graph existed has none yet)."""
        assert c.entity_id is not None
        if c.entity_type == "DEVICE":
            return self.entities.has_device(txn, c.entity_id)
        if c.entity_type == "DEVICE_PROFILE":
            return self.entities.device_profile(txn, c.entity_id) is not None
        if c.entity_type == "TENANT":
            return self.entities.tenant(txn) is not None
        if c.entity_type == "DEVICE_CREDENTIALS":
            device = self.entities.device(txn, c.entity_id)
            body = c.body or {}
            if credentials_type(body) != ACCESS_TOKEN:  # current once the device has no token
                return device is None or not device.token
            return device is not None and device.token == body.get("credentialsId")
        return True

    def _operational(self, txn: lmdb.Transaction, c: _Change, now_ms: int,
                     out: GraphOutcome) -> None:
        assert c.entity_id is not None and c.body is not None
        if c.entity_type == "TENANT":
            self.entities.put_tenant(txn, Tenant(c.entity_id, str(c.body.get("title") or ""),
                                                 c.text))
        elif c.entity_type == "DEVICE_PROFILE":
            name = str(c.body["name"])
            displaced = self.entities.put_device_profile(
                txn, DeviceProfile(c.entity_id, name, c.text))
            if displaced is not None:  # names are unique in a tenant: a rename not synced yet
                out.warnings.append(f"device profile name {name!r} moves from {displaced} to "
                                    f"{c.entity_id}")
            out.profiles_changed = True
        elif c.entity_type == "DEVICE":
            self._device(txn, c.entity_id, c.body, now_ms)
            out.devices_changed = True
        elif c.entity_type == "DEVICE_CREDENTIALS":
            token = c.body.get("credentialsId")
            device = self.entities.device(txn, c.entity_id)
            kind = credentials_type(c.body)[:_TYPE_SHOWN]
            if kind != ACCESS_TOKEN:
                self._revoke(txn, c.entity_id, device, kind, out)
                return
            if device is not None and isinstance(token, str):
                if device.token and device.token != token:
                    out.tokens_changed.append(c.entity_id)
                self.entities.put_device(txn, replace(device, token=token))
                out.devices_changed = True

    def _revoke(self, txn: lmdb.Transaction, device_id: uuid.UUID, device: Device | None,
                kind: str, out: GraphOutcome) -> None:
        """Credentials of type ``kind``, not an access token: the device's token goes (see the
        module docstring), so the device API refuses it (HTTP 401, MQTT CONNACK 5) from the
        commit on, as ThingsBoard's DefaultTransportApiService.validateCredentials does once
        DeviceCredentialsServiceImpl.updateDeviceCredentials replaced the credentials row."""
        if device is None or not device.token:
            out.done.append(f"device {device_id}: credentials type {kind}, no access token")
            return
        self.entities.put_device(txn, replace(device, token=""))
        out.devices_changed = True
        out.revoked.append(Revoked(device_id, kind))
        out.done.append(f"device {device_id}: credentials type {kind}, access token removed")

    def _device(self, txn: lmdb.Transaction, device_id: uuid.UUID, body: dict[str, Any],
                now: int) -> None:
        old = self.entities.device(txn, device_id)
        profile_id = old.profile_id if old else None  # kept when a downlink names none
        if body.get("deviceProfileId") is not None:
            profile_id = entity_id_in(body, "deviceProfileId", "deviceUpdateMsg", "DEVICE_PROFILE")
        gateway = gateway_flag(body.get("additionalInfo"))
        if gateway is None:  # no additionalInfo (the reference cloud sends none): kept
            gateway = old.gateway if old else False
        self.entities.put_device(txn, Device(
            id=device_id, name=str(body["name"]), type=str(body.get("type") or "default"),
            token=old.token if old else "", created_time=int(body.get("createdTime") or now),
            label=str(body.get("label") or ""), version=(old.version + 1) if old else 1,
            profile_id=profile_id, gateway=gateway))

