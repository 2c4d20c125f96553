"""The acknowledgements one MQTT connection owes, in the order their packets came (MQTT 3.1.1
§4.6), and its inflight count.

Every PUBLISH the connection accepts, of any QoS, waits here until the commit that holds its
events completes; only then is its PUBACK (QoS 1) or PUBREC (QoS 2) due, and never ahead of an
earlier publish's. A publish that commits nothing (a topic outside the API, an attributes
request, a QoS 2 resend) and a PUBCOMP join the line already settled. The line's length is the
connection's inflight count: publishes accepted and not yet acknowledged, which the connection
caps by not reading its socket (``mqtt.max_inflight_per_client``).

Pure: no loop, no thread, no clock (deadlines are passed in). The connection settles entries on
its loop as commits complete and sends what ``pop_due`` hands it.
"""

from __future__ import annotations

import enum
import math

__all__ = ["AckQueue", "Pending", "Reply"]


class Reply(enum.IntEnum):
    """What is sent once an entry is due."""

    NONE = 0
    """A QoS 0 publish: nothing (its failure is only logged)."""
    PUBACK = 1
    PUBREC = 2
    PUBCOMP = 3


class Pending:
    """One entry: a reply owed for ``packet_id``, due once settled."""

    __slots__ = ("deadline", "error", "packet_id", "reply", "settled")

    def __init__(self, reply: Reply, packet_id: int, deadline: float) -> None:
        self.reply = reply
        self.packet_id = packet_id
        self.deadline = deadline
        self.settled = False
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None = None) -> None:
        """The commit completed (``error``: it failed). Only the first outcome counts."""
        if not self.settled:
            self.settled = True
            self.error = error

    def __repr__(self) -> str:
        state = "pending" if not self.settled else ("failed" if self.error else "settled")
        return f"Pending({self.reply.name}, {self.packet_id}, {state})"


class AckQueue:
    """The line: a list read from ``_head`` (an idle connection's line is an empty list, not a
    deque's block of 64 slots)."""

    __slots__ = ("_head", "_line")

    def __init__(self) -> None:
        self._line: list[Pending] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._line) - self._head

    def add(self, reply: Reply, packet_id: int, deadline: float) -> Pending:
        """A publish whose commit is awaited until ``deadline``."""
        entry = Pending(reply, packet_id, deadline)
        self._line.append(entry)
        return entry

    def add_settled(self, reply: Reply, packet_id: int) -> Pending:
        """A reply with nothing to wait for: due once everything before it is."""
        entry = Pending(reply, packet_id, math.inf)
        entry.settled = True
        self._line.append(entry)
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
        return out
