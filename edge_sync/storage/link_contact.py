"""The edge's last contact with the cloud, on the edge's clock: what a connect reads to tell how
long the edge was offline (link/offline.py, link/state.py sync_mode).

Layout (the ``meta`` database):
  link/last_contact_ms  -> u64 ms   written in the DownlinkActor's transaction of a downlink it
                                    applies (at most once a minute; always with a
                                    SyncCompletedMsg), and by the ConnectionActor when a synced
                                    link is lost or the agent stops
  last_ack_ms           -> u64 ms   the event log's (storage/event_log.py): written with every
                                    acknowledgement from the cloud
The last contact is the later of the two. A store of an earlier release has neither until its
first contact: the connect's sync decision then goes by its other rules.
"""

from __future__ import annotations

import lmdb
from loguru import logger

from edge_sync.errors import EdgeSyncError, StorageCorrupt
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog

_log = logger.bind(component="link")

_LAST_CONTACT = b"link/last_contact_ms"
REFRESH_MS = 60_000
"""A downlink refreshes the record when it is at least this old (or ahead of the clock)."""


class LinkContact:
    """The last contact's record in one store's transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self._store = store
        self._log = EventLog(store)

    def last_ms(self, txn: lmdb.Transaction) -> int | None:
        """The last contact (ms on the edge's clock), None when none was ever recorded.
        StorageCorrupt when a record is damaged."""
        recorded = self._store.meta_int(txn, _LAST_CONTACT) or None
        acked = self._log.last_ack_ms(txn)
        known = [ms for ms in (recorded, acked) if ms is not None]
        return max(known) if known else None

    def put(self, txn: lmdb.Transaction, now_ms: int) -> None:
        self._store.put_meta_int(txn, _LAST_CONTACT, max(0, now_ms))

    def record(self, now_ms: int) -> bool:
        """Record ``now_ms`` in a write of its own (the link was in contact until now); an
        error is logged, not raised: the next contact records it again. Whether it did."""
        try:
            self._store.write(lambda txn: self.put(txn, now_ms), maintenance=True)
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).error("last contact with the cloud not recorded: {}", exc)
            return False
        return True

    def refresh(self, txn: lmdb.Transaction, now_ms: int, *, force: bool = False) -> bool:
        """In a write transaction that applies what the cloud sent: record ``now_ms`` when
        ``force``, when nothing is recorded, when the record is REFRESH_MS old or more, or when
        it is ahead of the clock (the clock went back: the record follows it). Whether it
        wrote. One read of a meta key otherwise, so a burst of downlinks writes it once. A
        damaged record is written over (it must not fail the downlink that carries it)."""
        try:
            recorded = self._store.meta_int(txn, _LAST_CONTACT)
        except StorageCorrupt:
            recorded = 0
        if not (force or recorded == 0 or now_ms - recorded >= REFRESH_MS
                or now_ms < recorded):
            return False
        self.put(txn, now_ms)
        return True
