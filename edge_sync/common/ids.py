"""Time-based (version 1) UUIDs for the entity ids edge-sync creates: the reference cloud's
tenant, edges and devices, and the edge's own devices and alarms.

ThingsBoard gives its entities time-based ids (the Cassandra driver's ``Uuids.timeBased()``)
and reads time back from them: a ThingsBoard Edge takes the tenant's creation time from the
tenant id of the EdgeConfiguration (``Uuids.unixTimestamp``), which refuses any UUID that is not
version 1, so an edge given a random (version 4) tenant id never initialises. Ids stored before
time-based ones were made keep their values. (Some ThingsBoard server versions also take
a device's createdTime from the id an edge gives it, with the same call.)

The ids are made the way ThingsBoard makes them:
- the timestamp is the unix time in ms, as 100 ns intervals since 1582-10-15 (RFC 4122), so an
  id's ``unix_ms`` is the ms it was made in;
- within one process the timestamps strictly increase: an id made in the same ms as the last
  one, or while the clock stands behind it, takes the last timestamp + 1 (100 ns), so ids made
  in sequence are distinct and time-ordered, even under a frozen or stepped-back clock;
- the clock sequence (14 bits) is random once per process, and the node (48 bits) has its
  multicast bit set, as RFC 4122 asks of a node that is not a MAC address. The driver hashes
  the host's addresses and the process id into its node; here the node is random once per
  process, which gives the same property: processes that share a store (the server and the
  CLI) never make the same id, even in the same 100 ns.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

from edge_sync.common.wire import NULL_UUID

__all__ = ["NULL_UUID", "PROCESS_IDS", "TimeBasedIds", "from_ticks", "is_time_based",
           "random_clock_seq_and_node", "time_based", "unix_ms"]
# NULL_UUID (ThingsBoard's EntityId.NULL_UUID, the customer of an entity assigned to none) is
# itself time-based, at unix time 0; it is defined once, with the entity JSON.

GREGORIAN_OFFSET = 0x01B21DD213814000
"""100 ns intervals from 1582-10-15 00:00 (UUID time zero) to 1970-01-01 00:00 UTC."""

TICKS_PER_MS = 10_000

_NODE_MULTICAST = 1 << 40
_VARIANT_RFC4122 = 0x8000_0000_0000_0000


def random_clock_seq_and_node() -> int:
    """The low 64 bits of a version 1 UUID: RFC 4122 variant, random clock sequence, random
    node with the multicast bit set."""
    clock_seq = secrets.randbits(14)
    node = secrets.randbits(48) | _NODE_MULTICAST
    return _VARIANT_RFC4122 | (clock_seq << 48) | node


def from_ticks(ticks: int, clock_seq_and_node: int) -> uuid.UUID:
    """The version 1 UUID of a 60-bit timestamp (100 ns intervals since 1582-10-15)."""
    if not 0 <= ticks < 1 << 60:
        raise ValueError(f"timestamp {ticks} does not fit in 60 bits")
    time_low = ticks & 0xFFFF_FFFF
    time_mid = (ticks >> 32) & 0xFFFF
    time_hi = (ticks >> 48) & 0x0FFF
    msb = (time_low << 32) | (time_mid << 16) | 0x1000 | time_hi
    return uuid.UUID(int=(msb << 64) | clock_seq_and_node)


def unix_ms(value: uuid.UUID) -> int:
    """The unix time in ms of a version 1 UUID (ThingsBoard's ``Uuids.unixTimestamp``);
    ValueError for any other version, as ThingsBoard refuses them."""
    if value.version != 1:
        raise ValueError(f"{value} is not a time-based (version 1) UUID")
    return (value.time - GREGORIAN_OFFSET) // TICKS_PER_MS


def is_time_based(value: uuid.UUID) -> bool:
    return value.variant == uuid.RFC_4122 and value.version == 1


class TimeBasedIds:
    """A generator of version 1 UUIDs whose timestamps strictly increase; any thread."""

    def __init__(self, clock_seq_and_node: int | None = None) -> None:
        self._low = random_clock_seq_and_node() if clock_seq_and_node is None else clock_seq_and_node
        self._last = 0
        self._lock = threading.Lock()

    def new(self, now_ms: int | None = None) -> uuid.UUID:
        """An id made at ``now_ms`` (the system clock when None), or just after the last one."""
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        ticks = GREGORIAN_OFFSET + now_ms * TICKS_PER_MS
        with self._lock:
            if ticks <= self._last:
                ticks = self._last + 1
            self._last = ticks
        return from_ticks(ticks, self._low)


PROCESS_IDS = TimeBasedIds()
"""This process's generator: the one every id of the cloud comes from unless a test gives its own."""


def time_based(now_ms: int | None = None) -> uuid.UUID:
    """A new time-based id from this process's generator (see TimeBasedIds.new)."""
    return PROCESS_IDS.new(now_ms)
