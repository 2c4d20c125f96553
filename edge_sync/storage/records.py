"""The event log's and entity store's record types: lanes, statuses, events, devices, and the
tenant and device profiles the cloud syncs.

These frozen dataclasses are what the rest of the code speaks; only storage/codec.py knows how
they are laid out on disk.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

NIL_UUID = uuid.UUID(int=0)


class Lane(enum.IntEnum):
    """Priority lane. HIGH is read before NORMAL; order within a lane is seq order."""

    HIGH = 0
    NORMAL = 1


class Status(enum.StrEnum):
    PENDING = "PENDING"
    DEPLOYED = "DEPLOYED"
    DEAD = "DEAD"


class Scope(enum.StrEnum):
    """Attribute scopes, ThingsBoard's names."""

    CLIENT = "CLIENT_SCOPE"
    SERVER = "SERVER_SCOPE"
    SHARED = "SHARED_SCOPE"


class Action(enum.StrEnum):
    """Cloud event actions, ThingsBoard's names."""

    ADDED = "ADDED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    TIMESERIES_UPDATED = "TIMESERIES_UPDATED"
    ATTRIBUTES_UPDATED = "ATTRIBUTES_UPDATED"
    ATTRIBUTES_DELETED = "ATTRIBUTES_DELETED"
    TIMESERIES_DELETED = "TIMESERIES_DELETED"
    ALARM_ACK = "ALARM_ACK"
    ALARM_CLEAR = "ALARM_CLEAR"
    RELATION_ADD_OR_UPDATE = "RELATION_ADD_OR_UPDATE"
    RELATION_DELETED = "RELATION_DELETED"
    RELATIONS_DELETED = "RELATIONS_DELETED"
    RPC_CALL = "RPC_CALL"
    CREDENTIALS_UPDATED = "CREDENTIALS_UPDATED"
    ATTRIBUTES_REQUEST = "ATTRIBUTES_REQUEST"  # the edge asks the cloud for attributes
    RULE_CHAIN_METADATA_REQUEST = "RULE_CHAIN_METADATA_REQUEST"  # ... for a rule chain's metadata
    RELATION_REQUEST = "RELATION_REQUEST"  # ... for an entity's relations (a ThingsBoard cloud)


# Actions that go in the high lane: creation, updates, credentials, alarms, RPC responses and
# requests to the cloud (attributes a device waits for, a rule chain's missing metadata).
# They may overtake the normal lane's backlog, the entity's own data included, which is harmless
# for these (an entity is created before it has data). Deletes and relation changes stay in the
# normal lane so they follow the entity's data, as the delivery contract requires; so does a
# request for an entity's relations (RELATION_REQUEST), so that it follows the edge's own relation
# changes recorded before it, which the cloud's answer must not undo.
_HIGH_ACTIONS = frozenset(
    {
        Action.ADDED,
        Action.UPDATED,
        Action.ALARM_ACK,
        Action.ALARM_CLEAR,
        Action.RPC_CALL,
        Action.CREDENTIALS_UPDATED,
        Action.ATTRIBUTES_REQUEST,
        Action.RULE_CHAIN_METADATA_REQUEST,
    }
)

# Events whose order relative to the same entity's other events matters even to a peer that
# orders telemetry by ts (ThingsBoard): lifecycle, alarm state changes, relations, deletes.
ORDER_SENSITIVE_ACTIONS = frozenset(
    {
        Action.ADDED,
        Action.UPDATED,
        Action.DELETED,
        Action.ALARM_ACK,
        Action.ALARM_CLEAR,
        Action.RELATION_ADD_OR_UPDATE,
        Action.RELATION_DELETED,
        Action.RELATIONS_DELETED,
        Action.CREDENTIALS_UPDATED,
        Action.ATTRIBUTES_DELETED,
        Action.TIMESERIES_DELETED,
    }
)


def lane_for(event_type: str, action: str) -> Lane:
    """The default lane: alarms, RPC responses, creation/updates, credentials and requests to
    the cloud are HIGH; data, deletes (of entities, relations, attribute and timeseries keys),
    relation changes and requests for relations NORMAL."""
    if event_type == "ALARM" or action in _HIGH_ACTIONS:
        return Lane.HIGH
    return Lane.NORMAL


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as a producer hands it to the queue; seq, id and created_time come on append."""

    type: str  # cloud event type: DEVICE, ASSET, ALARM, RELATION, ...
    entity_type: str
    entity_id: uuid.UUID
    action: str
    body: Any  # msgpack-able (JSON-like) value
    ts: int  # the event's own time, ms since epoch (never used for ordering)
    lane: Lane = Lane.NORMAL


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the log holds it."""

    seq: int
    id: uuid.UUID
    created_time: int
    tenant_id: uuid.UUID
    edge_id: uuid.UUID
    type: str
    entity_type: str
    entity_id: uuid.UUID
    action: str
    body: Any
    ts: int
    lane: Lane
    size: int = 0  # encoded size in bytes
    status: Status = Status.PENDING
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The shape `edge-sync events --json` and the admin API print."""
        return {
            "seq": self.seq,
            "id": str(self.id),
            "created_time": self.created_time,
            "ts": self.ts,
            "type": self.type,
            "entity_type": self.entity_type,
            "entity_id": str(self.entity_id),
            "action": self.action,
            "status": self.status.value,
            "priority": self.lane.name,
            "body": self.body,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Device:
    id: uuid.UUID
    name: str
    type: str
    token: str = field(repr=False)
    created_time: int
    label: str = ""
    version: int = 1
    profile_id: uuid.UUID | None = None  # the cloud's deviceProfileId, when it sent one
    gateway: bool = False
    """May speak ThingsBoard's MQTT gateway API for other devices (ThingsBoard's
    ``additionalInfo.gateway``)."""

    def as_json(self, *, with_token: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "type": self.type,
            "label": self.label,
            "created_time": self.created_time,
            "gateway": self.gateway,
        }
        if self.profile_id is not None:
            out["device_profile_id"] = str(self.profile_id)
        if with_token:
            out["token"] = self.token
        return out


@dataclass(frozen=True, slots=True)
class Tenant:
    """The edge's tenant as the cloud synced it: its id, title and ThingsBoard JSON as sent."""

    id: uuid.UUID
    title: str
    entity: str  # the Tenant JSON text of the TenantUpdateMsg


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device profile the cloud synced. A ThingsBoard device's ``type`` is the name of its
    profile, so the edge finds a device's profile by name."""

    id: uuid.UUID
    name: str
    entity: str  # the DeviceProfile JSON text of the DeviceProfileUpdateMsg


@dataclass(frozen=True, slots=True)
class Counts:
    """Queue depth by lane and status, read in O(1) from LMDB's entry counts."""

    pending_high: int
    pending_normal: int
    deployed: int
    dead: int
    total: int
    next_seq: int
    evicted: int

    @property
    def pending(self) -> int:
        return self.pending_high + self.pending_normal
