"""Packing events into one UplinkMsg: in read order, under the peer's maxInboundMessageSize,
and, for a peer that may apply one message's payloads concurrently (ThingsBoard), without two
order-sensitive events of one entity in concurrent flight. For such a peer an event that must
wait can be set aside ("held") instead of stopping the packing, so other entities' events go on;
the entity's later events are then held too, keeping its order. An event that names a second
entity is held for that one too: an alarm (its entity is the alarm) for its originator device, a
relation (its entity is its ``from`` end) for its ``to`` end. It waits while that entity has an
order-sensitive event in flight (its creation, say), events held, or a failed message unsettled,
so neither an alarm nor a relation overtakes the creation of what it names (ThingsBoard skips a
relation whose end it does not have: BaseRelationProcessor.processRelationMsg). A relation event
held holds both its ends: their later events are held behind it.

A RELATION_REQUEST (the edge asks for every relation from and to an entity) waits while a
relation event with that entity at either end is held, in this message or in flight, or failed
and unsettled: ThingsBoard reads the relations when it processes the request
(DefaultEdgeRequestsService.processRelationRequestMsg) and applies one message's payloads
concurrently (EdgeUplinkMessageDispatcher.processUplinkMsg), so a request that overtook the
edge's own relation change would be answered with the relation as it was, and the answer would
undo the change on the edge. Pure logic, no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_sync.common.wire import Owner
from edge_sync.errors import BadRequest
from edge_sync.link.event_payloads import event_payload
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import ORDER_SENSITIVE_ACTIONS, Action, Lane, StoredEvent

# Room for the UplinkMsg's own fields (id, firstEdgeSeqId, epoch) and a safety margin.
ENVELOPE_BYTES = 64
_FIELD_OVERHEAD = 6  # tag + length prefix of one repeated payload


@dataclass
class Packed:
    """One message's worth of events, and what could not be sent at all."""

    msg: edge_pb2.UplinkMsg
    seqs: list[int] = field(default_factory=list)
    entities: set[uuid.UUID] = field(default_factory=set)
    sensitive_entities: set[uuid.UUID] = field(default_factory=set)
    relation_ends: set[uuid.UUID] = field(default_factory=set)  # of the relation events packed
    last_seq: dict[Lane, int] = field(default_factory=dict)  # highest seq consumed per lane
    too_large: list[tuple[StoredEvent, int]] = field(default_factory=list)
    unmappable: list[tuple[StoredEvent, str]] = field(default_factory=list)
    held: list[StoredEvent] = field(default_factory=list)  # must wait: set aside, in order
    held_bytes: int = 0  # the stored size of ``held``
    consumed: int = 0  # how many events from the front were packed, held, skipped or refused
    size: int = ENVELOPE_BYTES


def pack(
    events: Sequence[StoredEvent],
    *,
    max_bytes: int,
    max_events: int,
    ordered_peer: bool,
    owner: Owner,
    busy: set[uuid.UUID] | None = None,
    busy_sensitive: set[uuid.UUID] | None = None,
    busy_relations: set[uuid.UUID] | None = None,
    skip: set[int] | None = None,
    hold: set[uuid.UUID] | None = None,
    max_hold: int = 0,
    max_hold_bytes: int | None = None,
) -> Packed:
    """Take events from the front of ``events`` while they fit.

    owner: the tenant and customer the entity JSON names (the connection's, at send time).
    busy: entities with events in flight; busy_sensitive: entities with order-sensitive events
    in flight; busy_relations: the ends of the relation events in flight (all three only matter
    when not ordered_peer). skip: seqs to pass over (dead-lettered, not yet committed). An event
    that is larger than max_bytes on its own is returned in too_large; one with no uplink mapping
    in unmappable: both are consumed, never sent.

    Not ordered_peer only: an event that must wait, or whose entity is in ``hold`` (entities
    whose events must not be sent now), is appended to ``held`` while fewer than ``max_hold``
    are held and their stored size (``StoredEvent.size``) stays within ``max_hold_bytes`` (None:
    no bound), and its entity's later events are held with it; otherwise (max_hold 0: always)
    packing stops before it. An alarm event also waits while its originator device is in
    ``hold``, has events held, or has an order-sensitive event in ``busy_sensitive`` or in this
    message; so does a relation event for its ``to`` end (see ``hold_keys``), and a relation
    event held holds both its ends. A RELATION_REQUEST also waits while its entity is an end of
    a relation event in ``busy_relations`` or in this message.
    """
    out = Packed(edge_pb2.UplinkMsg())
    busy = busy or set()
    busy_sensitive = busy_sensitive or set()
    busy_relations = busy_relations or set()
    holding = set(hold or ())
    for event in events:
        if len(out.seqs) >= max_events:
            break
        if skip and event.seq in skip:
            out.last_seq[event.lane] = event.seq
            out.consumed += 1
            continue
        sensitive = event.action in ORDER_SENSITIVE_ACTIONS
        eid = event.entity_id
        other = named_entity(event)
        if not ordered_peer and (
                eid in holding or _must_wait(eid, sensitive, out, busy, busy_sensitive)
                or (other is not None and (other in holding or other in busy_sensitive
                                           or other in out.sensitive_entities))
                or (event.action == Action.RELATION_REQUEST
                    and (eid in busy_relations or eid in out.relation_ends))):
            if len(out.held) >= max_hold or (
                    max_hold_bytes is not None and out.held_bytes + event.size > max_hold_bytes):
                break
            out.held.append(event)
            out.held_bytes += event.size
            holding.update(holds(event))
            out.last_seq[event.lane] = event.seq
            out.consumed += 1
            continue
        try:
            list_name, payload = event_payload(event, owner)
        except (BadRequest, KeyError, TypeError, ValueError) as exc:
            out.unmappable.append((event, str(exc)))
            out.last_seq[event.lane] = event.seq
            out.consumed += 1
            continue
        size = payload.ByteSize() + _FIELD_OVERHEAD
        if size + ENVELOPE_BYTES > max_bytes:
            out.too_large.append((event, size))
            out.last_seq[event.lane] = event.seq
            out.consumed += 1
            continue
        if out.size + size > max_bytes:
            break
        _append(out.msg, list_name, payload)
        out.size += size
        out.seqs.append(event.seq)
        out.entities.add(eid)
        if sensitive:
            out.sensitive_entities.add(eid)
        out.relation_ends.update(relation_ends(event))
        out.last_seq[event.lane] = event.seq
        out.consumed += 1
    if out.seqs:
        out.msg.firstEdgeSeqId = min(out.seqs)
    return out


def originator(event: StoredEvent) -> uuid.UUID | None:
    """The device an alarm event belongs to (its body's ``originator``); None for any other
    event, or an alarm without a readable originator."""
    if event.type != "ALARM" or not isinstance(event.body, dict):
        return None
    try:
        return uuid.UUID(str(event.body["originator"]))
    except (KeyError, ValueError):
        return None


def relation_to(event: StoredEvent) -> uuid.UUID | None:
    """The ``to`` end of a relation event (its body's ``to.id``; the event's entity is the
    ``from`` end); None for any other event, or a relation without a readable ``to``."""
    if event.type != "RELATION" or not isinstance(event.body, dict):
        return None
    to = event.body.get("to")
    if not isinstance(to, dict):
        return None
    try:
        return uuid.UUID(str(to["id"]))
    except (KeyError, ValueError):
        return None


def named_entity(event: StoredEvent) -> uuid.UUID | None:
    """The second entity an event must not overtake: an alarm's originator device, a
    relation's ``to`` end; None for any other event."""
    return originator(event) if event.type == "ALARM" else relation_to(event)


def hold_keys(event: StoredEvent) -> tuple[uuid.UUID, ...]:
    """The entities whose hold holds ``event``: its own, an alarm's originator device and a
    relation's ``to`` end."""
    other = named_entity(event)
    return (event.entity_id,) if other is None else (event.entity_id, other)


def relation_ends(event: StoredEvent) -> tuple[uuid.UUID, ...]:
    """Both ends of a relation event (``from``: its entity; ``to``: see ``relation_to``); only
    its entity when the ``to`` end is unreadable; none for any other event."""
    if event.type != "RELATION":
        return ()
    to = relation_to(event)
    return (event.entity_id,) if to is None else (event.entity_id, to)


def holds(event: StoredEvent) -> tuple[uuid.UUID, ...]:
    """The entities whose later events an event held (or failed and unsettled) holds behind
    it: its own, and a relation's ``to`` end too (so a RELATION_REQUEST for either end stays
    behind the relation). Not an alarm's originator device: an alarm held for its own entity (an
    acknowledgement waiting for the alarm's creation) leaves the device's events free."""
    return relation_ends(event) or (event.entity_id,)


def _must_wait(
    eid: uuid.UUID,
    sensitive: bool,
    out: Packed,
    busy: set[uuid.UUID],
    busy_sensitive: set[uuid.UUID],
) -> bool:
    if sensitive:
        return eid in busy or eid in out.entities
    return eid in busy_sensitive or eid in out.sensitive_entities


def _append(msg: edge_pb2.UplinkMsg, list_name: str, payload: Any) -> None:
    getattr(msg, list_name).append(payload)
