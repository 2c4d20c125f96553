"""edge_sync.storage.verify on a real LMDB store: an event listed in the wrong pending lane AND
in its own is repaired into its own lane, never out of every status index."""

from __future__ import annotations

import uuid
from pathlib import Path

from edge_sync.storage import codec, verify
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import NIL_UUID, Lane, NewEvent, Status


def test_an_event_in_both_pending_lanes_is_kept_in_its_own(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "store")
    log = EventLog(store)
    try:
        entity = uuid.UUID(int=0xA)
        event = NewEvent("DEVICE", "DEVICE", entity, "TIMESERIES_UPDATED", {"i": 1}, 1001,
                         Lane.NORMAL)
        store.write(lambda txn: log.append(txn, [event], first_seq=1, created_time=5,
                                           tenant_id=NIL_UUID.bytes, edge_id=NIL_UUID.bytes))
        store.write(lambda txn: txn.put(codec.u64(1), b"", db=store.dbs["pending_high"]))

        with store.read() as txn:
            found = verify.audit(store, txn)
        assert [str(p) for p in found.problems] == [
            "pending_high seq 1: the event is of the normal lane"]

        store.write(lambda txn: verify.repair(store, txn))
        with store.read() as txn:
            assert verify.audit(store, txn).problems == []
            assert txn.get(codec.u64(1), db=store.dbs["pending_normal"]) == b""
            assert txn.get(codec.u64(1), db=store.dbs["pending_high"]) is None
            stored = log.get(txn, 1)
        assert stored is not None and stored.status is Status.PENDING and stored.lane is Lane.NORMAL
    finally:
        store.close()
