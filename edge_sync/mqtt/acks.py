"""The acknowledgements one MQTT connection owes, in the order their packets came (MQTT 3.1.1
§4.6), and its inflight count.

Every PUBLISH the connection accepts, of any QoS, waits here until the commit that holds its
events completes (the publishes of a read burst stored by one command wait as one entry);
only then is its PUBACK (QoS 1) or PUBREC (QoS 2) due, and never ahead of an earlier
publish's. A publish that commits nothing (a topic outside the API, an attributes
request, a QoS 2 resend) and a PUBCOMP join the line already settled. The line's length is the
connection's inflight count: publishes accepted and not yet acknowledged, which the connection
caps by not reading its socket (``mqtt.max_inflight_per_client``).

Pure: no loop, no thread, no clock (deadlines are passed in). The connection settles entries on
its loop as commits complete and sends what ``pop_due`` hands it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

__all__ = ["AckQueue", "Pending", "Reply"]


class Reply(enum.IntEnum):
    """What is sent once an entry is due."""

    NONE = 0
    """A QoS 0 publish: nothing is sent (its commit's failure closes the connection all the
    same)."""
    PUBACK = 1
    PUBREC = 2
    PUBCOMP = 3
    PUBACK_TOPIC_INVALID = 4
    """MQTT 5: PUBACK 0x90, a topic outside ThingsBoard's device API (ThingsBoard's
    MqttTransportHandler.processDevicePublish answers it so over MQTT 5)."""
    PUBACK_PAYLOAD_INVALID = 5
    """MQTT 5: PUBACK 0x99, a payload that cannot be read (ThingsBoard's
    sendResponseForAdaptorErrorOrCloseContext answers it so over MQTT 5)."""


class Pending:
    """One entry: the replies owed for publishes stored by one commit (one publish, or the
    publishes of a read burst that went to the store as one command: mqtt/burst.py), due
    together once settled, in their order."""

    __slots__ = ("deadline", "error", "replies", "settled")

    def __init__(self, replies: Sequence[tuple[Reply, int]], deadline: float) -> None:
        self.replies = replies
        self.deadline = deadline
        self.settled = False
        self.error: BaseException | None = None

    @property
    def reply(self) -> Reply:
        """The first (for an entry of one publish: its only) reply."""
        return self.replies[0][0]

    @property
    def packet_id(self) -> int:
        return self.replies[0][1]

    def settle(self, error: BaseException | None = None) -> None:
        """The commit completed (``error``: it failed). Only the first outcome counts."""
        if not self.settled:
            self.settled = True
            self.error = error

    def __repr__(self) -> str:
        state = "pending" if not self.settled else ("failed" if self.error else "settled")
        replies = ", ".join(f"{reply.name} {packet_id}" for reply, packet_id in self.replies)
        return f"Pending({replies}, {state})"


class AckQueue:
    """One connection's acknowledgements in the order their packets came: entries (one per
    commit awaited, or per reply with nothing to wait for) are added at the tail as packets
    are taken, settled in any order as commits complete, and taken off the head only once
    settled (``pop_due``) or past their deadline (``pop_overdue``), so no reply overtakes an
    earlier one. Its length is the connection's inflight count: replies (publishes), not
    entries.

    The line is a list read from ``_head`` (an idle connection's line is an empty list, not a
    deque's block of 64 slots), the part already taken dropped now and then."""

    __slots__ = ("_count", "_head", "_line")

    def __init__(self) -> None:
        self._line: list[Pending] = []
        self._head = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, reply: Reply, packet_id: int, deadline: float) -> Pending:
        """A publish whose commit is awaited until ``deadline``."""
        return self.add_all(((reply, packet_id),), deadline)

    def add_all(self, replies: Sequence[tuple[Reply, int]], deadline: float) -> Pending:
        """Publishes stored by one commit, awaited until ``deadline``: one entry."""
        entry = Pending(replies, deadline)
        self._line.append(entry)
        self._count += len(replies)
        return entry

    def add_settled(self, reply: Reply, packet_id: int) -> Pending:
        """A reply with nothing to wait for: due once everything before it is."""
        entry = self.add_all(((reply, packet_id),), math.inf)
        entry.settled = True
        return entry

    def _first(self) -> Pending | None:
        return self._line[self._head] if self._head < len(self._line) else None

    def _pop(self) -> Pending:
        line, head = self._line, self._head
        entry = line[head]
        head += 1
        if head == len(line):
            line.clear()
            head = 0
        elif head >= 1024 and head * 2 >= len(line):  # drop what was taken, now and then
            del line[:head]
            head = 0
        self._head = head
        self._count -= len(entry.replies)
        return entry

    def pop_due(self) -> Pending | None:
        """The first entry, taken off the line, when it is settled (a failed one too: the
        caller decides what its failure means); None while the first one still waits."""
        first = self._first()
        if first is not None and first.settled:
            return self._pop()
        return None

    def next_deadline(self) -> float | None:
        """When the first entry's wait runs out, if it still waits. Entries wait in the order
        of their deadlines, so no later one can be overdue before it."""
        first = self._first()
        if first is not None and not first.settled:
            return first.deadline
        return None

    def pop_overdue(self, now: float) -> Pending | None:
        """The first entry, taken off the line, when it still waits at ``now`` past its
        deadline."""
        first = self._first()
        if first is not None and not first.settled and first.deadline <= now:
            return self._pop()
        return None

    def drain(self) -> list[Pending]:
        """Everything still on the line, which is emptied (the connection ends)."""
        out = self._line[self._head:]
        self._line = []
        self._head = 0
        self._count = 0
        return out
