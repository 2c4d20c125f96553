"""What the store's live data is made of, from LMDB's own statistics (``txn.stat`` of each
named database: its branch, leaf and overflow pages; constant time, no scan).

The parts add up to LmdbStore.live_bytes exactly:

- ``pending``: the events waiting for the cloud (``pending_high``, ``pending_normal``, and their
  share of ``events`` and ``events_by_entity``);
- ``delivered``: the delivered events kept for ``storage.retention_hours``
  (``deployed_by_time`` and their share of ``events`` and ``events_by_entity``). They are
  reclaimable on demand: a commit that finds the store full purges them all before anything
  is dropped, refused or evicted (actors/queue_actor.py ``_commit_when_full``);
- ``local_timeseries``: the points rule chains keep on the edge (``rule_local_ts``) and their
  expiry index (``rule_local_expiry_sets``, and ``rule_local_expiry``, the one of an earlier
  release, until its entries are purged). At the cap they are dropped, soonest-expiring first,
  before any new data is refused or any event evicted, but they are data an operator asked to
  keep, so they are not counted as reclaimable;
- ``latest``: the devices' latest values (``latest_ts``);
- ``other``: everything else: dead letters (``dead`` and their share of the event tables),
  devices, attributes, the entity graph, RPC requests, rule state, rule chains, LMDB's meta
  pages.

Pending, delivered and dead events share the ``events`` table (and its entity index), in seq
order, so which pages hold which cannot be told without reading them: their bytes are an
estimate, the two tables' pages shared out by the count of events of each status (exact when
the events are of equal size). Every other figure is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lmdb

from edge_sync.storage.env import LmdbStore

PARTS = ("pending", "delivered", "local_timeseries", "latest", "other")
"""The parts, in the order the status shows them (the ``part`` label of
``edge_sync_storage_part_bytes``)."""

_SHARED = ("events", "events_by_entity")
_OWN = {"pending_high": "pending", "pending_normal": "pending", "deployed_by_time": "delivered",
        "rule_local_ts": "local_timeseries", "rule_local_expiry_sets": "local_timeseries",
        "rule_local_expiry": "local_timeseries",
        "latest_ts": "latest"}


@dataclass(frozen=True, slots=True)
class StorageUsage:
    """The store's live bytes (``used``) split into PARTS, and the local points kept."""

    used: int
    pending: int
    delivered: int
    local_timeseries: int
    latest: int
    other: int
    local_points: int

    @property
    def reclaimable(self) -> int:
        """Bytes a full store frees on demand before it drops, refuses or evicts anything:
        the delivered events kept."""
        return self.delivered

    @property
    def unreclaimable(self) -> int:
        """What the health's storage level and the storage alerts judge: used minus the
        reclaimable bytes."""
        return self.used - self.reclaimable

    def parts(self) -> dict[str, int]:
        return {part: int(getattr(self, part)) for part in PARTS}


def _pages(st: Any) -> int:
    """Pages of one database, from its ``txn.stat`` (lmdb's _StatDict)."""
    return int(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])


def storage_usage(store: LmdbStore, txn: lmdb.Transaction) -> StorageUsage:
    """The usage as ``txn`` sees it (O(number of tables))."""
    parts = dict.fromkeys(PARTS, 0)
    psize = 4096
    shared = 0
    entries: dict[str, int] = {}
    pages_other = 2  # LMDB's two meta pages, which live_bytes counts too
    for name, db in store.dbs.items():
        st = txn.stat(db)
        psize = int(st["psize"])
        entries[name] = int(st["entries"])
        if name in _SHARED:
            shared += _pages(st)
        elif name in _OWN:
            parts[_OWN[name]] += _pages(st) * psize
        else:
            pages_other += _pages(st)
    total = entries.get("events", 0)
    pending = entries.get("pending_high", 0) + entries.get("pending_normal", 0)
    dead = entries.get("dead", 0)
    deployed = max(0, total - pending - dead)
    shared_bytes = shared * psize
    if total:
        pending_share = shared_bytes * pending // total
        delivered_share = shared_bytes * deployed // total
    else:  # no events: the tables' (empty) pages are nobody's
        pending_share = delivered_share = 0
    parts["pending"] += pending_share
    parts["delivered"] += delivered_share
    parts["other"] += pages_other * psize + shared_bytes - pending_share - delivered_share
    used = sum(parts.values())
    return StorageUsage(used=used, local_points=entries.get("rule_local_ts", 0), **parts)
