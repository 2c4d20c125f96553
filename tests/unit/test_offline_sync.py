"""A connect after a long time offline asks for a full sync: the verdict on the time offline
(link/offline.py) as link/state.py sync_mode weighs it, and the last contact with the cloud it
is measured from (storage/link_contact.py) on a real LMDB store in tmp_path, across a reopen."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.errors import StorageCorrupt
from edge_sync.link.offline import judge_offline, span
from edge_sync.link.state import sync_mode
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import SyncState
from edge_sync.storage.link_contact import REFRESH_MS, LinkContact
from edge_sync.storage.records import NIL_UUID

NOW = 1_700_000_000_000
HOUR = 3_600_000
EDGE = uuid.UUID("0e000000-0000-4000-8000-00000000000a")
DONE = SyncState(completed_version="2.0", completed_ms=NOW - 100 * HOUR, generation=1)
BASE = "the last full sync completed at version 2.0"


def mode(last_contact_ms: int | None, *, hours: float = 24.0, state: SyncState = DONE,
         stored: uuid.UUID = EDGE) -> tuple[bool, str]:
    offline = judge_offline(last_contact_ms=last_contact_ms, now_ms=NOW, full_after_hours=hours)
    return sync_mode(stored_edge=stored, connected_edge=EDGE, state=state, version="2.0",
                     offline=offline)


@pytest.mark.parametrize(("last_contact_ms", "hours", "expected"), [
    (NOW - 25 * HOUR, 24.0, (True, "offline for 25.0 h (more than 24 h)")),
    (NOW - 26 * HOUR - 18 * 60_000, 24.0, (True, "offline for 26.3 h (more than 24 h)")),
    (NOW - 23 * HOUR, 24.0, (False, f"{BASE}; offline for 23.0 h (at most 24 h)")),
    (NOW - 24 * HOUR, 24.0, (False, f"{BASE}; offline for 24.0 h (at most 24 h)")),
    (NOW - 12 * 60_000, 24.0, (False, f"{BASE}; offline for 12.0 min (at most 24 h)")),
    (NOW - 40 * 60_000, 0.5, (True, "offline for 40.0 min (more than 0.5 h)")),
    (NOW - 1000 * HOUR, 0.0, (False, BASE)),  # 0: the rule is off
    (None, 24.0, (False, BASE)),  # no contact recorded: the other rules decide
])
def test_the_time_offline_decides_between_full_and_incremental(
        last_contact_ms: int | None, hours: float, expected: tuple[bool, str]) -> None:
    assert mode(last_contact_ms, hours=hours) == expected


def test_without_a_recorded_contact_the_existing_rules_still_decide() -> None:
    assert mode(None, stored=NIL_UUID) == (True, "first connect (no edge identity stored)")
    assert mode(None, state=SyncState()) == (True, "this store has never completed a full sync")
    assert mode(None, state=SyncState(completed_version="2.0", requested="operator")) == (
        True, "requested: operator")


def test_earlier_reasons_come_first_and_a_long_outage_comes_before_a_request() -> None:
    long_ago = NOW - 48 * HOUR
    assert mode(long_ago, state=SyncState(completed_version="1.9")) == (
        True, "edge version changed since the last full sync (1.9 -> 2.0)")
    assert mode(long_ago, state=SyncState(completed_version="2.0", requested="operator")) == (
        True, "offline for 48.0 h (more than 24 h)")


@pytest.fixture
def warnings() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    sink = logger.add(lambda m: seen.append({"level": m.record["level"].name,
                                             "message": m.record["message"],
                                             **m.record["extra"]}),
                      level="WARNING", format="{message}")
    yield seen
    logger.remove(sink)


def test_a_clock_that_went_back_asks_for_no_full_sync_and_is_logged(
        warnings: list[dict[str, Any]]) -> None:
    ahead = NOW + 2 * HOUR  # the last contact is two hours in the future
    assert mode(ahead) == (False, f"{BASE}; time offline unknown: the clock is 2.0 h behind "
                                  "the last contact (it went back)")
    assert [(w["level"], w["component"], w["last_contact_ms"], w["now_ms"]) for w in warnings] == [
        ("WARNING", "link", ahead, NOW)]
    assert warnings[0]["message"] == (
        "the edge's clock is 2.0 h behind its last contact with the cloud (the clock went back): "
        "the time offline is unknown and does not ask for a full sync")


def test_no_warning_when_the_clock_is_fine(warnings: list[dict[str, Any]]) -> None:
    mode(NOW - HOUR)
    mode(NOW - 30 * HOUR)
    assert warnings == []


def test_spans_read_in_seconds_minutes_or_hours() -> None:
    assert [span(ms) for ms in (0, 59_999, 60_000, HOUR - 1, HOUR, 26 * HOUR + 18 * 60_000)] == [
        "0.0 s", "60.0 s", "1.0 min", "60.0 min", "1.0 h", "26.3 h"]


# -- the last contact on disk ------------------------------------------------------------------


def open_store(path: Path) -> LmdbStore:
    return LmdbStore(path, initial_map_mb=8, max_size_mb=64)


def last(store: LmdbStore) -> int | None:
    with store.read() as txn:
        return LinkContact(store).last_ms(txn)


def test_the_last_contact_survives_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge")
    assert last(store) is None  # a new store: none recorded
    assert LinkContact(store).record(NOW - 3 * HOUR)
    store.close()
    store = open_store(tmp_path / "edge")  # the agent restarted
    try:
        assert last(store) == NOW - 3 * HOUR
    finally:
        store.close()


def test_the_last_contact_is_the_later_of_the_record_and_the_last_acknowledgement(
        tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge")
    try:
        log = EventLog(store)
        # an acknowledgement only: a store whose link acknowledged events and applied nothing
        store.write(lambda txn: store.put_meta_int(txn, b"last_ack_ms", NOW - 5 * HOUR))
        with store.read() as txn:
            assert log.last_ack_ms(txn) == NOW - 5 * HOUR
        assert last(store) == NOW - 5 * HOUR
        LinkContact(store).record(NOW - 2 * HOUR)
        assert last(store) == NOW - 2 * HOUR
        store.write(lambda txn: store.put_meta_int(txn, b"last_ack_ms", NOW - HOUR))
        assert last(store) == NOW - HOUR
    finally:
        store.close()


def test_a_downlink_refreshes_the_record_at_most_once_a_minute(tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge")
    contact = LinkContact(store)

    def refresh(now_ms: int, force: bool = False) -> tuple[bool, int | None]:
        wrote = store.write(lambda txn: contact.refresh(txn, now_ms, force=force))
        return wrote, last(store)
    try:
        assert refresh(NOW) == (True, NOW)  # nothing recorded yet
        assert refresh(NOW + REFRESH_MS - 1) == (False, NOW)
        assert refresh(NOW + REFRESH_MS) == (True, NOW + REFRESH_MS)
        assert refresh(NOW + REFRESH_MS + 5) == (False, NOW + REFRESH_MS)
        assert refresh(NOW + REFRESH_MS + 5, force=True) == (True, NOW + REFRESH_MS + 5)  # a sync's end
        assert refresh(NOW - HOUR) == (True, NOW - HOUR)  # the clock went back: it follows
    finally:
        store.close()


def test_a_damaged_record_fails_the_connects_reading_and_is_written_over(tmp_path: Path) -> None:
    store = open_store(tmp_path / "edge")
    contact = LinkContact(store)
    try:
        store.write(lambda txn: txn.put(b"link/last_contact_ms", b"\x01\x02",
                                        db=store.dbs["meta"]))
        with pytest.raises(StorageCorrupt, match="link/last_contact_ms"):
            last(store)  # the connect takes the store for damaged: a full sync
        assert store.write(lambda txn: contact.refresh(txn, NOW)) is True  # a downlink mends it
        assert last(store) == NOW
    finally:
        store.close()
