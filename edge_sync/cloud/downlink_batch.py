"""Downlinks queued one after another for an edge travel together: one DownlinkMsg carrying
their entries, in queue order (the DownlinkMsg's lists are repeated; ThingsBoard Edge and our
edge apply every entry of them, in one transaction on our edge). The stream keeps one downlink
in flight per edge, so without this an edge could take at most one downlink per round trip: a
shared attribute set on a thousand devices would be a thousand round trips.

Three kinds travel together, each only with its own kind (an edge applies a message's
entityData before its deviceRpcCallMsg whatever the order of the lists, so mixing them could
reorder them):

- server-side RPC requests (deviceRpcCallMsg with a requestMsg), not expired;
- attribute updates (a DownlinkMsg holding only entityData: shared attributes set by the
  operator, answers to attribute requests); several for one device are applied in order, so
  the last value wins as it would one by one;
- entity changes of the same shape (the same DownlinkMsg lists: assets assigned one after
  another, each with its profile; relations; not devices): each list keeps the queue's
  order, and every message had its lists in the same order, so applying them together is
  applying them one by one (an entity changed twice: the last change wins).

Pure logic: which queued downlinks after the head go with it, and the combined message. A
batch the edge refuses is split (the stream then sends its parts one by one), so one bad
downlink never fails the others.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

from edge_sync.cloud import downlinks
from edge_sync.cloud.records import QueuedDownlink
from edge_sync.proto import edge_pb2

MAX_BATCH = 100
"""Downlinks in one DownlinkMsg at most."""

_FRAMING = 64  # the id, the cloud's time and the list's framing


class Kind(enum.Enum):
    RPC = "deviceRpcCallMsg"
    ATTRIBUTES = "entityData"
    ENTITIES = "entities"


_NEVER = 2**63 - 1
_NOT_ENTITIES = frozenset({"deviceRpcCallMsg", "entityData", "syncCompletedMsg",
                           "edgeConfiguration", "downlinkMsgId", "cloudTimeMillis",
                           # a device's downlinks travel alone, as before the graph (its
                           # creation carries its token: refused alone, parked alone)
                           "deviceUpdateMsg", "deviceCredentialsUpdateMsg"})


def _classify(item: QueuedDownlink) -> tuple[Kind, int, tuple[str, ...]] | None:
    if not item.durable:
        return None
    msg = edge_pb2.DownlinkMsg.FromString(item.payload)
    fields = tuple(fd.name for fd, _ in msg.ListFields())
    if fields == ("deviceRpcCallMsg",):
        for call in msg.deviceRpcCallMsg:
            if call.HasField("requestMsg") and (call.requestUuidMSB or call.requestUuidLSB):
                return Kind.RPC, call.expirationTime, fields
        return None
    if fields == ("entityData",):
        return Kind.ATTRIBUTES, _NEVER, fields
    if fields and not _NOT_ENTITIES.intersection(fields):
        return Kind.ENTITIES, _NEVER, fields
    return None


def kind_of(item: QueuedDownlink) -> tuple[Kind, int] | None:
    """(kind, expirationTime) of a queued downlink that may travel with others of its kind (an
    attribute update or an entity change never expires: 2**63 - 1), else None (a sync's
    downlinks never do)."""
    found = _classify(item)
    return None if found is None else (found[0], found[1])


def batch_of(head: QueuedDownlink, following: Iterable[QueuedDownlink], *, now_ms: int,
             max_bytes: int, max_count: int = MAX_BATCH) -> list[QueuedDownlink]:
    """``head`` and the downlinks of its kind that directly follow it in the queue and can go
    with it: not expired, and the combined message within ``max_bytes``. [head] when the head
    is of no kind that travels together."""
    head_kind = _classify(head)
    if head_kind is None:
        return [head]
    out = [head]
    size = len(head.payload) + _FRAMING
    for item in following:
        if len(out) >= max_count:
            break
        kind = _classify(item)
        if kind is None or kind[0] is not head_kind[0] or kind[1] < now_ms:
            break
        if kind[0] is Kind.ENTITIES and kind[2] != head_kind[2]:
            break
        size += len(item.payload)
        if size > max_bytes:
            break
        out.append(item)
    return out


def combined(items: list[QueuedDownlink]) -> QueuedDownlink:
    """One queued downlink carrying the entries of ``items``: numbered as the first (its place
    in the queue), sent under the last one's downlinkMsgId. A batch is always the head of the
    queue and what follows it, so one formed again later (after a reconnect, with more queued
    behind) ends further on and gets another id: a downlinkMsgId never names two contents."""
    if len(items) == 1:
        return items[0]
    msg = edge_pb2.DownlinkMsg()
    for item in items:
        msg.MergeFromString(item.payload)  # appends each list's entries, in order
    return QueuedDownlink(items[0].number, items[-1].msg_id, msg.SerializeToString(),
                          durable=True)



# -- packs: many entity payloads in one DownlinkMsg (a full sync, queued graph changes) ---------

MAX_PACK = 100
"""Payloads in one packed DownlinkMsg at most (ThingsBoard sends a sync in packs of 50
messages and waits for each pack; here a pack is one message, one round trip)."""

THINGSBOARD_APPLY_ORDER: tuple[str, ...] = (
    "syncCompletedMsg", "edgeConfiguration", "entityData", "deviceRpcCallMsg",
    "deviceCredentialsRequestMsg", "deviceProfileUpdateMsg", "deviceUpdateMsg",
    "deviceCredentialsUpdateMsg", "assetProfileUpdateMsg", "assetUpdateMsg",
    "entityViewUpdateMsg", "ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg",
    "dashboardUpdateMsg", "alarmUpdateMsg", "alarmCommentUpdateMsg", "customerUpdateMsg",
    "relationUpdateMsg", "widgetsBundleUpdateMsg", "widgetTypeUpdateMsg", "userUpdateMsg",
    "userCredentialsUpdateMsg", "adminSettingsUpdateMsg", "otaPackageUpdateMsg",
    "queueUpdateMsg", "tenantProfileUpdateMsg", "notificationTemplateUpdateMsg",
    "notificationTargetUpdateMsg", "notificationRuleUpdateMsg", "oAuth2ClientUpdateMsg",
    "oAuth2DomainUpdateMsg", "tenantUpdateMsg", "resourceUpdateMsg", "calculatedFieldUpdateMsg",
)
"""The order in which a ThingsBoard Edge applies a DownlinkMsg's lists, whatever their order
on the wire (thingsboard-edge DefaultDownlinkMessageService.processDownlinkMsg, 4.x): each list
whole, one after the other. Our edge applies a message's payloads in full-sync order (and holds
one whose references are missing). So kinds may share a pack only where both orders agree: a
pack is closed before a kind that a ThingsBoard Edge would apply ahead of a kind already in it
(the shared attributes of a device, say, are never in its device's pack: ThingsBoard applies
entityData first)."""
_APPLY_POS = {name: i for i, name in enumerate(THINGSBOARD_APPLY_ORDER)}
_FIELD_NUMBER = {f.name: f.number for f in edge_pb2.DownlinkMsg.DESCRIPTOR.fields}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_TAGS = {name: _varint(number << 3 | 2) for name, number in _FIELD_NUMBER.items()}


def encoded_entry(field: str, entry: bytes) -> bytes:
    """One entry of a DownlinkMsg list as it is on the wire (tag, length, message): packs are
    these, concatenated (a protobuf parser appends each to its list, in order)."""
    return _TAGS[field] + _varint(len(entry)) + entry


class Packer:
    """Fills DownlinkMsgs with entries given in full-sync order: up to ``max_count`` entries,
    the stamped message within ``max_bytes`` (an entry larger than that travels alone, and the
    stream parks it as too large), kinds together only where a ThingsBoard Edge's apply order
    agrees (THINGSBOARD_APPLY_ORDER)."""

    def __init__(self, max_bytes: int, max_count: int = MAX_PACK) -> None:
        self._max_bytes = max_bytes
        self._max_count = max_count
        self._parts: list[bytes] = []
        self._size = 0
        self._fields: set[str] = set()
        self._max_pos = -1
        self.entries = 0
        """Entries packed so far (all packs)."""

    def add(self, field: str, entry: bytes) -> bytes | None:
        """Add an entry; the pack it closed (the entry starts the next one), if any."""
        wire = encoded_entry(field, entry)
        pos = _APPLY_POS.get(field, len(_APPLY_POS))
        done = None
        if self._parts and (
                len(self._parts) >= self._max_count
                or downlinks.stamped_size(self._size + len(wire)) > self._max_bytes
                or (field not in self._fields and pos < self._max_pos)):
            done = self.flush()
        self._parts.append(wire)
        self._size += len(wire)
        self._fields.add(field)
        self._max_pos = max(self._max_pos, pos)
        self.entries += 1
        return done

    def flush(self) -> bytes | None:
        """The pack being filled (None when empty); the next entry starts a new one."""
        if not self._parts:
            return None
        out = b"".join(self._parts)
        self._parts, self._size, self._fields, self._max_pos = [], 0, set(), -1
        return out


def pack_all(entries: Iterable[tuple[str, bytes]], *, max_bytes: int,
             max_count: int = MAX_PACK) -> Iterator[bytes]:
    """The packs of ``entries`` (field, serialized entry), in order."""
    packer = Packer(max_bytes, max_count)
    for field, entry in entries:
        done = packer.add(field, entry)
        if done is not None:
            yield done
    last = packer.flush()
    if last is not None:
        yield last


def split(payload: bytes) -> list[bytes]:
    """A packed DownlinkMsg as one DownlinkMsg per entry, in ThingsBoard's apply order (a pack
    the edge refused is sent again entry by entry, so a bad entry is refused alone)."""
    msg = edge_pb2.DownlinkMsg.FromString(payload)
    out = []
    fields = sorted(msg.ListFields(), key=lambda f: _APPLY_POS.get(f[0].name, len(_APPLY_POS)))
    for fd, value in fields:
        if not fd.is_repeated:
            one = edge_pb2.DownlinkMsg()
            getattr(one, fd.name).CopyFrom(value)
            out.append(one.SerializeToString())
            continue
        for entry in value:
            out.append(encoded_entry(fd.name, entry.SerializeToString()))
    return out


def entry_count(payload: bytes) -> int:
    """How many entries a DownlinkMsg carries (its lists' lengths, plus its single fields)."""
    msg = edge_pb2.DownlinkMsg.FromString(payload)
    return sum(len(v) if fd.is_repeated else 1 for fd, v in msg.ListFields())
