"""Messages between the edge's actors: frozen dataclasses, imperative names for commands and
past-tense names for events.

A message may carry a ``reply`` future: the sender waits on it (with a timeout); the receiver
resolves it once the work is durable, or fails it with an EdgeSyncError. Bodies (JSON-like
values) are handed over with the message: the sender never touches them again.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_sync.devices.rpc import RpcRequest, RpcSent, Transition
from edge_sync.devices.subscribers import Subscriber
from edge_sync.storage.dead_letters import Selection
from edge_sync.storage.records import Device, NewEvent, Scope

if TYPE_CHECKING:
    from edge_sync.rules.engine import RuleEngine

Reply = Future  # resolved with the command's result (e.g. the seqs appended)

# -- entity store changes committed together with the events of the same Append ---------------


@dataclass(frozen=True, slots=True)
class CreateDevice:
    device: Device


@dataclass(frozen=True, slots=True)
class PutAttributes:
    entity_id: uuid.UUID
    scope: Scope
    values: tuple[tuple[str, Any], ...]
    ts: int


@dataclass(frozen=True, slots=True)
class PutLatestTelemetry:
    entity_id: uuid.UUID
    values: tuple[tuple[str, int, Any], ...]  # (key, ts, value)


@dataclass(frozen=True, slots=True)
class PutRpc:
    """A server-side RPC request's new state (devices/rpc.py)."""

    request: RpcRequest


@dataclass(frozen=True, slots=True)
class PutRuleState:
    """The entity's whole rule state (rules/session.py's record); None deletes it."""

    entity_id: uuid.UUID
    record: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PutLocalTimeseries:
    """Points the rule chain keeps on the edge (storage/rule_store.py), kept ``ttl_s`` seconds
    from the commit (0: the configured local retention)."""

    entity_id: uuid.UUID
    entries: tuple[tuple[int, tuple[tuple[str, Any], ...]], ...]  # (ts, ((key, value), ...))
    ttl_s: int


@dataclass(frozen=True, slots=True)
class RequireDevice:
    """Writes nothing: the Append fails with NotFound (nothing of it written) unless the device
    exists when it commits. The data of a device whose creation is still on its way carries
    it, so a creation that fails leaves no events of a device the edge does not have."""

    device_id: uuid.UUID


# -- edge-made changes of the entity graph (actors/graph_changes.py): checked, written and turned
# into their events inside the QueueActor's transaction, where the merged JSON and the seqs are
# known. A failed check (NotFound, Conflict, BadRequest) fails the Append, nothing of it written.


@dataclass(frozen=True, slots=True)
class PutAsset:
    """Create (``create``) or update an asset: ``fields`` (name, type, label, additionalInfo)
    replace the stored ones; an ADDED or UPDATED event with the merged Asset JSON (none when an
    update changes nothing). NotFound: an update of an unknown asset; Conflict: the name is
    another asset's, or the id is taken on creation."""

    asset_id: uuid.UUID
    fields: tuple[tuple[str, Any], ...]
    create: bool
    ts: int


@dataclass(frozen=True, slots=True)
class DeleteEntity:
    """Delete an entity made on the edge or synced (``entity_type``: ASSET or DEVICE) and what
    depends on it, cascade; one DELETED event. NotFound when there is no such entity."""

    entity_type: str
    entity_id: uuid.UUID
    ts: int


End = tuple[str | None, uuid.UUID]  # a relation's end: (entity type, or None to look it up; id)


@dataclass(frozen=True, slots=True)
class PutRelation:
    """Add or update a relation (RELATION_ADD_OR_UPDATE). NotFound when an end is unknown."""

    src: End
    dst: End
    rel_type: str
    group: str
    additional_info: Any
    ts: int


@dataclass(frozen=True, slots=True)
class DeleteRelation:
    """Delete one relation (RELATION_DELETED, with its JSON). NotFound when there is none."""

    src: End
    dst: End
    rel_type: str
    group: str
    ts: int


@dataclass(frozen=True, slots=True)
class DeleteRelations:
    """Delete every relation from or to an entity: one RELATION_DELETED event per relation,
    as ThingsBoard's deleteEntityRelations does. NotFound when the entity is unknown."""

    entity_id: uuid.UUID
    ts: int


@dataclass(frozen=True, slots=True)
class DeleteAttributes:
    """Delete attribute keys of one scope of an entity (ATTRIBUTES_DELETED)."""

    entity_id: uuid.UUID
    scope: Scope
    keys: tuple[str, ...]
    ts: int


@dataclass(frozen=True, slots=True)
class DeleteTimeseries:
    """Delete timeseries keys of an entity: the latest values the edge holds
    (TIMESERIES_DELETED)."""

    entity_id: uuid.UUID
    keys: tuple[str, ...]
    ts: int


GraphChange = (PutAsset | DeleteEntity | PutRelation | DeleteRelation | DeleteRelations
               | DeleteAttributes | DeleteTimeseries)
GRAPH_CHANGES = (PutAsset, DeleteEntity, PutRelation, DeleteRelation, DeleteRelations,
                 DeleteAttributes, DeleteTimeseries)

Mutation = (CreateDevice | PutAttributes | PutLatestTelemetry | PutRpc | PutRuleState
            | PutLocalTimeseries | RequireDevice | GraphChange)

# -- to the QueueActor -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    """Append events (and apply mutations) atomically; reply gets the list of seqs."""

    entity_id: uuid.UUID
    events: tuple[NewEvent, ...]
    reply: Reply | None = field(default=None, compare=False)
    mutations: tuple[Mutation, ...] = ()


@dataclass(frozen=True, slots=True)
class MarkDeployed:
    seqs: tuple[int, ...]
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int
    error: str
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SetIdentity:
    tenant_id: uuid.UUID
    edge_id: uuid.UUID
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ReplayDead:
    """The operator's replay of dead letters (storage/dead_letters.py's Selection): PENDING
    again, same seq and lane, in seq order, in one transaction; reply gets a ReplayResult."""

    selection: Selection
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PurgeDeployed:
    """Periodic: drop DEPLOYED events older than the retention period."""


@dataclass(frozen=True, slots=True)
class BuildEntityIndex:
    """The QueueActor to itself: one more step of the event log's entity index build (a store
    made before it); a message per step, so appends interleave with the build."""


@dataclass(frozen=True, slots=True)
class FlushGroup:
    """Internal to the QueueActor: commit what has been gathered so far."""


WriteCommand = Append | MarkDeployed | DeadLetter | SetIdentity

# -- to the shard actors (per-entity work) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostTelemetry:
    device_id: uuid.UUID
    entries: tuple[tuple[int, tuple[tuple[str, Any], ...]], ...]  # (ts, ((key, value), ...))
    reply: Reply | None = field(default=None, compare=False)
    requires_device: bool = False  # its Append carries RequireDevice


@dataclass(frozen=True, slots=True)
class PostClientAttributes:
    device_id: uuid.UUID
    values: tuple[tuple[str, Any], ...]
    ts: int
    reply: Reply | None = field(default=None, compare=False)
    requires_device: bool = False  # its Append carries RequireDevice


@dataclass(frozen=True, slots=True)
class ProvisionDevice:
    """Create a device on the edge: its ADDED and CREDENTIALS_UPDATED events go first.
    ``created_by``: the gateway that named it first (its lastConnectedGateway)."""

    device: Device
    reply: Reply | None = field(default=None, compare=False)
    created_by: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    """An alarm on a device (ADDED), or a change of one (ALARM_ACK, ALARM_CLEAR)."""

    device_id: uuid.UUID
    alarm_id: uuid.UUID
    action: str
    alarm: tuple[tuple[str, Any], ...]  # type, severity, status, details, ...
    ts: int
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PostRpcResponse:
    """A device's answer to a server-side RPC request."""

    device_id: uuid.UUID
    request_id: int
    response: Any
    ts: int
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PollRpc:
    """A device waits for its next server-side RPC request (resolved with the request's
    device JSON once it is recorded as delivered; a subscriber whose transport reports the
    delivery, ``acks`` true, is resolved at once with an RpcSent, the request in flight)."""

    device_id: uuid.UUID
    subscriber: Subscriber = field(compare=False)


@dataclass(frozen=True, slots=True)
class RpcAcknowledged:
    """The device acknowledged a request sent in flight (MQTT: the PUBACK of the packet that
    carried it): DELIVERED, or SUCCESSFUL when one-way."""

    device_id: uuid.UUID
    sent: RpcSent


@dataclass(frozen=True, slots=True)
class RpcUnsent:
    """Requests sent in flight were lost without the device's acknowledgement (``reason``:
    the MQTT session that held them was discarded, or its connection ended before they were
    written): QUEUED again, for the next subscriber. ``failed``: the transport can never send
    them (larger than the client's Maximum Packet Size): FAILED instead. ``quiet``: the loss
    is told in a line of its own (the MQTT server's stop): the requeue is logged at DEBUG."""

    device_id: uuid.UUID
    sent: tuple[RpcSent, ...]
    reason: str
    failed: bool = False
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class PollAttributes:
    """A device waits for its next shared attribute update (resolved with ThingsBoard's
    update JSON: the changed keys, and ``deleted``)."""

    device_id: uuid.UUID
    subscriber: Subscriber = field(compare=False)


@dataclass(frozen=True, slots=True)
class FetchSharedAttributes:
    """A device asked for shared attributes the edge does not hold: ask the cloud (at most
    once per interval) and resolve ``subscriber`` (True) when shared attributes arrive."""

    device_id: uuid.UUID
    subscriber: Subscriber | None = field(default=None, compare=False)
    wait_ms: int = 10_000  # how long the subscriber waits at most


@dataclass(frozen=True, slots=True)
class RpcQueued:
    """Server-side RPC requests stored for a device (by the DownlinkActor, or found open in
    the store at start)."""

    device_id: uuid.UUID
    requests: tuple[RpcRequest, ...]


@dataclass(frozen=True, slots=True)
class SharedAttributesApplied:
    """Shared attributes of a device were applied from the cloud: ``changed`` holds only the
    keys whose value changed, ``deleted`` the keys removed."""

    device_id: uuid.UUID
    changed: tuple[tuple[str, Any], ...]
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RpcNotRecorded:
    """Internal to an entity: the commit of an RPC request's change failed; the request is put
    back as it was (a delivery queued again, an answer awaited again, an expiry retried), or,
    when the device is known to have it (``change.kept``), kept delivered and its record tried
    again. ``again``: the failed commit was such a retry."""

    device_id: uuid.UUID
    change: Transition
    again: bool = False


@dataclass(frozen=True, slots=True)
class RpcHanded:
    """Internal to an entity: a delivered request was handed to the device's poll."""

    device_id: uuid.UUID
    request_uuid: uuid.UUID


@dataclass(frozen=True, slots=True)
class RpcDeliveredLate:
    """Internal to an entity: a delivery was recorded only once the request had expired; the
    device was not given it (EXPIRED), and its poll (released) waits on."""

    device_id: uuid.UUID
    change: Transition
    subscriber: Subscriber = field(compare=False)


@dataclass(frozen=True, slots=True)
class AttributesRequestQueued:
    """Internal to an entity: its request for shared attributes is in the queue as event
    ``seq`` (None: it could not be appended)."""

    device_id: uuid.UUID
    seq: int | None


@dataclass(frozen=True, slots=True)
class ChangeGraph:
    """An edge-made change of the entity graph, told to the actor of ``entity_id`` (for a
    relation: its ``from`` end) so it keeps that entity's order, then appended to the QueueActor
    (reply: the seqs of its events)."""

    entity_id: uuid.UUID
    change: GraphChange
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RequestRuleChainMetadata:
    """Ask the cloud for the metadata of rule chain ``entity_id`` (a RULE_CHAIN_METADATA_REQUEST
    event), unless a request for it is still pending: then reply gets that request's seq."""

    entity_id: uuid.UUID
    reply: Reply | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class MetadataRequestQueued:
    """Internal to an entity: its rule chain metadata request is event ``seq`` (None: it could
    not be appended)."""

    entity_id: uuid.UUID
    seq: int | None


@dataclass(frozen=True, slots=True)
class EntityDeleted:
    """Internal to an entity: its deletion is committed; devices waiting on it are answered
    (NotFound) at once."""

    entity_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SharedAttributesDeleted:
    """Internal to an entity: shared attribute keys deleted on the edge are committed; devices
    waiting for attribute updates get ``{"deleted": [...]}``, as for the cloud's deletes."""

    entity_id: uuid.UUID
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExpireRpcs:
    """Internal to a shard: an RPC deadline has come."""


@dataclass(frozen=True, slots=True)
class PassivateIdle:
    """Periodic: drop entity actors idle for longer than the configured time."""


@dataclass(frozen=True, slots=True)
class RuleChainChanged:
    """To every shard: another rule chain went in force. Each entity's windows are bound to it
    now (an orphan is warned about while its node can still be put back), entities with rule
    state on disk are loaded, and windows overdue close."""


@dataclass(frozen=True, slots=True)
class RuleStateStale:
    """Internal to an entity: an Append carrying its rule state failed, so the state in memory
    is ahead of the store's; it is dropped and read again from the store."""

    device_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class RuleRpcFinished:
    """A request the rule chain made finished, its final status committed: the chain goes on
    from the node that made it with the device's answer (or its error). ``reply``: settled
    once that run is committed, or found to have nothing to do; failed when it could not be
    (the shard not running, the run's Append refused)."""

    device_id: uuid.UUID
    request: RpcRequest
    reply: Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class SavesNotStored:
    """Internal to an entity: an Append carrying timeseries saves decided by a chain with a
    deduplicating save node failed; ``engine`` (the shard's, which decided them) forgets what
    it decided for ``originators``, so the device's retry is saved."""

    device_id: uuid.UUID
    engine: RuleEngine = field(compare=False)
    originators: frozenset[str]


EntityCommand = (
    PostTelemetry | PostClientAttributes | ProvisionDevice | RaiseAlarm | PostRpcResponse
    | PollRpc | PollAttributes | FetchSharedAttributes | RpcQueued | SharedAttributesApplied
    | RpcNotRecorded | RpcHanded | RpcDeliveredLate | RpcAcknowledged | RpcUnsent
    | AttributesRequestQueued
    | ChangeGraph | RequestRuleChainMetadata | MetadataRequestQueued | EntityDeleted
    | SharedAttributesDeleted | RuleStateStale | SavesNotStored | RuleRpcFinished
)
GRAPH_COMMANDS = (ChangeGraph, RequestRuleChainMetadata, MetadataRequestQueued, EntityDeleted,
                  SharedAttributesDeleted)
"""Entity commands addressed by ``entity_id`` (the others by ``device_id``)."""
ENTITY_COMMANDS = (
    PostTelemetry, PostClientAttributes, ProvisionDevice, RaiseAlarm, PostRpcResponse, PollRpc,
    PollAttributes, FetchSharedAttributes, RpcQueued, SharedAttributesApplied, RpcNotRecorded,
    RpcHanded, RpcDeliveredLate, RpcAcknowledged, RpcUnsent, AttributesRequestQueued,
    RuleStateStale, SavesNotStored, RuleRpcFinished,
    *GRAPH_COMMANDS,
)

# -- events published by the QueueActor --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsCommitted:
    """New events are durable; next_seq is the seq the next append will get."""

    next_seq: int


@dataclass(frozen=True, slots=True)
class EventsReplayed:
    """Dead letters are PENDING again (seq, lane): the link reads them again, below its cursor."""

    seqs: tuple[tuple[int, int], ...]  # (seq, Lane value), in seq order


@dataclass(frozen=True, slots=True)
class Crash:
    """Fault injection (admin API, only with admin.fault_injection on): the receiver raises."""

    reason: str = "injected fault"
