"""The reference cloud's record types: edges, devices, applied events and queued downlinks.

Frozen dataclasses; only cloud/store.py knows how they are laid out in LMDB.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

DOWNLINK_ID_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    """An edge registered with the cloud. The secret itself is never stored, only its hash."""

    edge_id: uuid.UUID
    tenant_id: uuid.UUID
    routing_key: str
    name: str
    type: str
    created_time: int
    salt: bytes = field(repr=False)
    secret_hash: bytes = field(repr=False)
    kdf: tuple[str, int, int, int] = field(repr=False)  # ("scrypt", n, r, p)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.edge_id),
            "name": self.name,
            "type": self.type,
            "routing_key": self.routing_key,
            "tenant_id": str(self.tenant_id),
            "created_time": self.created_time,
        }


@dataclass(frozen=True, slots=True)
class CloudDevice:
    """A device as the cloud knows it: assigned to one edge, created by the cloud or the edge."""

    id: uuid.UUID
    edge_id: uuid.UUID
    name: str
    type: str
    label: str
    token: str | None = field(repr=False)
    created_time: int
    origin: str  # "cloud" (edge-cloud device create) or "edge" (an uplinked ADDED)

    def as_json(self, *, with_token: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "edge_id": str(self.edge_id),
            "name": self.name,
            "type": self.type,
            "label": self.label,
            "created_time": self.created_time,
            "origin": self.origin,
        }
        if with_token:
            out["token"] = self.token
        return out


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    """One uplink payload the cloud applied, in the order it applied them (per edge, across the
    edge's stores). ``incarnation``/``store_id``: the edge store that sent it (0/None: an edge
    that sends no store id); its seqs count from 1 in each store."""

    apply_index: int
    seq: int | None
    entity_type: str
    entity_id: uuid.UUID
    action: str
    body: Any
    ts: int
    applied_at: int
    incarnation: int = 0
    store_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The shape of `edge-cloud events --json` and GET /api/events."""
        return {
            "apply_index": self.apply_index,
            "seq": self.seq,
            "entity_type": self.entity_type,
            "entity_id": str(self.entity_id),
            "action": self.action,
            "body": self.body,
            "ts": self.ts,
            "applied_at": self.applied_at,
            "store_id": self.store_id,
        }


@dataclass(frozen=True, slots=True)
class QueuedDownlink:
    """A downlink waiting in an edge's durable queue, or (``durable`` False) a stream-local
    downlink of a sync, numbered among the edge's downlinks all the same. ``payload`` is a
    serialized DownlinkMsg without id and time."""

    number: int
    msg_id: int
    payload: bytes = field(repr=False)
    durable: bool = True


@dataclass(frozen=True, slots=True)
class ParkedDownlink:
    """A downlink set aside for good, kept with why: refused by the edge (success=false) as
    many times as ``downlink.max_attempts`` allows, or larger than the edge accepts. ``kinds``:
    the DownlinkMsg's fields (deviceUpdateMsg, ...); ``attempts`` 0 when not known (a record
    of an earlier release)."""

    number: int
    msg_id: int
    kinds: str
    cause: str  # "refused", "too_large", or "unknown" (a record of an earlier release)
    error: str
    attempts: int
    parked_at: int
    in_sync: bool

    def as_json(self) -> dict[str, Any]:
        """The shape of GET /api/edges/{edge}/downlinks/parked and `edge-cloud status --json`."""
        return {"number": self.number, "downlink_id": self.msg_id, "kinds": self.kinds,
                "cause": self.cause, "error": self.error, "attempts": self.attempts,
                "parked_at": self.parked_at, "in_sync": self.in_sync}


def downlink_msg_id(number: int) -> int:
    """The positive int32 downlinkMsgId of the edge's downlink number ``number`` (from 1)."""
    return (number - 1) % DOWNLINK_ID_MAX + 1
