"""A full store's refusals, at the queue (a real QueueActor on a real LMDB store at its size cap,
``store.max_size = 0``; the clock injected, the refusal ticks told by the test):

- every refused command is counted in ``edge_sync_appends_refused_total{reason}``, also one that
  makes no event (local-only data: a rule chain's saved timeseries, its state), which
  ``edge_sync_events_total{outcome="refused"}`` cannot count;
- the log tells of them in a few lines whatever their rate: the first in full (WARNING), one
  summary per interval (how many, from which entities), one INFO once the store accepts
  again; each refusal at DEBUG;
- a group committed one by one when full keeps the order of what fits and what is refused
  (the run ends only after an accepted command that no refusal followed), answers what it
  committed before a storage error, and a failing queue tells the refusals not told yet.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import lmdb
import pytest
from loguru import logger

from edge_sync.actors.messages import (
    Crash,
    MarkDeployed,
    PutLocalTimeseries,
    PutRuleState,
    RequireDevice,
)
from edge_sync.actors.queue_actor import RefusalsTick
from edge_sync.errors import InjectedFault, NotFound, QueueFull, StorageError
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_store import RuleStore
from tests.helpers.metric_values import metric_total
from tests.helpers.set_clock import SetClock
from tests.integration.test_queue_rule_mutations import (
    DEADLINE,
    T0,
    Queue,
    create_device,
    telemetry,
)

FULL = ("storage full, new data refused: stored data would exceed the size cap of 0 MiB "
        "(storage.max_size_mb)")


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    q = Queue(tmp_path / "queue")
    yield q
    q.stop()
    assert q.exits == []


@pytest.fixture
def lines() -> Iterator[list[Any]]:
    """The queue's records, DEBUG and up."""
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG", format="{message}",
                      filter=lambda r: r["extra"].get("component") == "queue", catch=False)
    yield records
    logger.remove(sink)


def local_only(dev: uuid.UUID, ts: int) -> tuple[Any, ...]:
    """What a chain that keeps a message local commits: its saved point and its state."""
    return (PutLocalTimeseries(dev, ((ts, (("t", 20.5),)),), 0), PutRuleState(dev, {"seq": ts}))


def refused(queue: Queue, dev: uuid.UUID, *mutations: Any, events: int = 0) -> None:
    with pytest.raises(QueueFull) as exc:
        queue.append(dev, telemetry(dev, events), *mutations).result(DEADLINE)
    assert str(exc.value) == FULL


def told(records: list[Any]) -> list[tuple[str, str]]:
    """The refusal run's lines."""
    return [(r["level"].name, r["message"]) for r in records
            if r["message"].startswith(("storage full: new data refused", "storage accepts"))
            or " more commands refused " in r["message"]]


def tick(queue: Queue) -> None:
    queue.child.ref.ask(RefusalsTick(), timeout=DEADLINE)


def test_every_refused_command_is_counted_also_without_events(queue: Queue) -> None:
    """Local-only data makes no event: its refusal used to be counted nowhere in /metrics."""
    a, b = create_device(queue, 1), create_device(queue, 2)
    queue.store.max_size = 0
    refused(queue, a, *local_only(a, T0))
    refused(queue, b, *local_only(b, T0 + 1))
    refused(queue, a, events=2)  # pushed data: its two events counted too
    ghost = uuid.UUID(int=99)
    queue.store.max_size = 64 << 20
    with pytest.raises(NotFound):  # not a full store's: counted apart
        queue.append(ghost, telemetry(ghost, 1), RequireDevice(ghost)).result(DEADLINE)
    snap = queue.metrics.snapshot()
    assert snap['edge_sync_appends_refused_total{reason="storage_full"}'] == 3
    assert snap['edge_sync_appends_refused_total{reason="rejected"}'] == 1
    assert snap['edge_sync_appends_refused_total{reason="unstorable"}'] == 0
    assert metric_total(snap, "edge_sync_events_total", outcome="refused") == 2


def test_refusals_are_told_in_a_few_lines(queue: Queue, lines: list[Any]) -> None:
    a, b, c = create_device(queue, 1), create_device(queue, 2), create_device(queue, 3)
    queue.store.max_size = 0
    queue.clock.ms = T0 + 1000  # 2023-11-14T22:13:21.000Z
    refused(queue, a, *local_only(a, T0), events=1)
    assert [(r["level"].name, r["message"], r["extra"]) for r in lines
            if r["message"].startswith("storage full: new data")] == [
        ("WARNING", f"storage full: new data refused from now on ({FULL}); refusals are "
                    "summarised every 60 s until the store accepts again",
         {"component": "queue", "entity": str(a), "events": 1, "error": FULL})]
    for n in range(7):  # b four times, a twice, c once
        queue.clock.ms = T0 + 2000 + n
        dev = (b, b, a, b, c, a, b)[n]
        refused(queue, dev, *local_only(dev, T0 + n))
    tick(queue)
    queue.clock.ms = T0 + 70_000
    refused(queue, c, *local_only(c, T0))
    tick(queue)
    tick(queue)  # nothing refused, nothing accepted: the run goes on, nothing to tell
    queue.store.max_size = 64 << 20
    queue.append(a, (), *local_only(a, T0 + 9)).result(DEADLINE)
    tick(queue)  # accepted, none refused since the last tick: the run ended
    tick(queue)  # and nothing more
    queue.store.max_size = 0
    queue.clock.ms = T0 + 90_000
    refused(queue, b, *local_only(b, T0))  # a new run
    assert told(lines) == [
        ("WARNING", f"storage full: new data refused from now on ({FULL}); refusals are "
                    "summarised every 60 s until the store accepts again"),
        ("WARNING", "storage full: 7 more commands refused from 3 entities since the last line, "
                    f"8 since 2023-11-14T22:13:21.000Z; most: {b} (4), {a} (2), {c} (1)"),
        ("WARNING", "storage full: 1 more commands refused from 1 entities since the last line, "
                    f"9 since 2023-11-14T22:13:21.000Z; most: {c} (1)"),
        ("INFO", "storage accepts again after 9 refusals from 3 entities, from "
                 "2023-11-14T22:13:21.000Z to 2023-11-14T22:14:30.000Z"),
        ("WARNING", f"storage full: new data refused from now on ({FULL}); refusals are "
                    "summarised every 60 s until the store accepts again"),
    ]
    summary = next(r for r in lines if r["message"].startswith("storage full: 7 more"))
    assert summary["extra"] == {
        "component": "queue", "refused": 7, "total": 8, "entities": 3,
        "since": "2023-11-14T22:13:21.000Z", "last": "2023-11-14T22:13:22.006Z",
        "most_refused": {str(b): 4, str(a): 2, str(c): 1}}
    # each refusal still one DEBUG line, and "purging delivered events" at WARNING only
    # when a run starts
    each = [(r["level"].name, r["extra"]["entity"]) for r in lines
            if r["message"].startswith("append refused: ")]
    assert each == [("DEBUG", str(d)) for d in (a, b, b, a, b, c, a, b, c, b)]
    purging = [r["level"].name for r in lines
               if r["message"] == "storage full; purging delivered events"]
    assert purging == ["WARNING"] + ["DEBUG"] * 8 + ["WARNING"]
    assert queue.metrics.snapshot()['edge_sync_appends_refused_total{reason="storage_full"}'] == 10


# -- a group that mixes what fits and what is refused ------------------------------------------


class HeldClock(SetClock):
    """A fake clock whose reads wait while it is held. The queue reads it at the start of each
    commit: while one waits, what the test tells is gathered in the next group."""

    def __init__(self, now_ms: int) -> None:
        super().__init__(now_ms)
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()

    def now_ms(self) -> int:
        if not self.open.is_set():
            self.waiting.set()
            assert self.open.wait(DEADLINE)
        return self.ms


def one_group(queue: Queue, clock: HeldClock,
              *appends: tuple[uuid.UUID, tuple[Any, ...], tuple[Any, ...]]) -> list[Future[Any]]:
    """Tell ``appends`` (entity, events, mutations) while the queue is inside a commit before
    them: they are committed as one group."""
    clock.open.clear()
    clock.waiting.clear()
    queue.child.ref.tell(MarkDeployed(()))  # its commit waits on the clock
    assert clock.waiting.wait(DEADLINE)
    replies = [queue.append(e, events, *mutations) for e, events, mutations in appends]
    clock.open.set()
    return replies


def cap_above_now(queue: Queue) -> None:
    """The cap just above what is stored: an empty Append fits, hundreds of events do not."""
    with queue.store.read() as txn:
        queue.store.max_size = queue.store.live_bytes(txn) + 2 * 4096


def run_start() -> tuple[str, str]:
    return ("WARNING", f"storage full: new data refused from now on ({FULL}); refusals are "
                       "summarised every 60 s until the store accepts again")


def test_a_group_whose_last_append_is_refused_leaves_the_run_going(
        tmp_path: Path, lines: list[Any]) -> None:
    """A group [Y fits, X refused] commits one by one when full: the run goes on (X was the
    last word), so the next ticks tell X's refusal and no end; the end comes with an accepted
    command after it."""
    clock = HeldClock(T0)
    queue = Queue(tmp_path / "queue", clock)
    try:
        a, b = create_device(queue, 1), create_device(queue, 2)
        queue.store.max_size = 0
        refused(queue, a, events=1)
        cap_above_now(queue)
        y, x = one_group(queue, clock, (b, (), ()), (a, telemetry(a, 400), ()))
        assert y.result(DEADLINE) == range(3, 3)
        with pytest.raises(QueueFull) as exc:
            x.result(DEADLINE)
        assert str(exc.value) == FULL
        tick(queue)
        tick(queue)  # nothing accepted since X: no end
        assert told(lines) == [
            run_start(),
            ("WARNING", "storage full: 1 more commands refused from 1 entities since the last "
                        f"line, 2 since 2023-11-14T22:13:20.000Z; most: {a} (1)")]
        assert queue.append(b, ()).result(DEADLINE) == range(3, 3)
        tick(queue)
        assert told(lines)[2:] == [
            ("INFO", "storage accepts again after 2 refusals from 1 entities, from "
                     "2023-11-14T22:13:20.000Z to 2023-11-14T22:13:20.000Z")]
        assert queue.exits == []
    finally:
        queue.stop()


class FailingStore(LmdbStore):
    """The real store, whose write of a rule state ``{"fail": n}`` fails as a disk error would
    (StorageError) from its ``n``-th write on; the earlier ones are left to the store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen = 0

    def write(self, fn: Callable[[lmdb.Transaction], Any], *, maintenance: bool = False) -> Any:
        def apply(txn: lmdb.Transaction) -> Any:
            result = fn(txn)
            for state in _poisoned(self, txn):
                self._seen += 1
                if self._seen >= state:
                    raise StorageError("write failed: injected I/O error")
            return result
        return super().write(apply, maintenance=maintenance)


POISONED = uuid.UUID(int=77)


def _poisoned(store: LmdbStore, txn: lmdb.Transaction) -> list[int]:
    state = RuleStore(store).state(txn, POISONED)
    return [state["fail"]] if state else []


def test_a_storage_error_in_a_full_group_answers_what_it_committed_first(
        tmp_path: Path) -> None:
    """A full group is committed one by one; when the third fails on a storage error, the
    first (committed) is answered with its seqs and the second's refusal is counted; only
    the failed one and those after it fail."""
    queue = Queue(tmp_path / "queue", HeldClock(T0), store_class=FailingStore)
    clock = queue.clock
    assert isinstance(clock, HeldClock)
    try:
        a, b = create_device(queue, 1), create_device(queue, 2)
        cap_above_now(queue)
        # the whole group's write is the poison's first (refused: over the cap), Z alone its second
        y, x, z = one_group(queue, clock, (b, (), ()), (a, telemetry(a, 400), ()),
                            (b, (), (PutRuleState(POISONED, {"fail": 2}),)))
        assert y.result(DEADLINE) == range(3, 3)
        with pytest.raises(QueueFull):
            x.result(DEADLINE)
        with pytest.raises(StorageError) as exc:
            z.result(DEADLINE)
        assert str(exc.value) == "write failed: injected I/O error"
        assert queue.exited.wait(DEADLINE)
        snap = queue.metrics.snapshot()
        assert snap['edge_sync_appends_refused_total{reason="storage_full"}'] == 1
        assert [type(e) for e in queue.exits] == [StorageError]
    finally:
        queue.stop()


def test_a_failed_queue_tells_the_refusals_not_told_yet(queue: Queue, lines: list[Any]) -> None:
    """The queue actor fails (its successor starts a run of its own): the refusals since the
    last summary are told before it goes."""
    a, b = create_device(queue, 1), create_device(queue, 2)
    queue.store.max_size = 0
    refused(queue, a, events=1)
    refused(queue, b, events=1)
    queue.child.ref.tell(Crash("test"))
    assert queue.exited.wait(DEADLINE)
    assert told(lines) == [
        run_start(),
        ("WARNING", "storage full: 1 more commands refused from 1 entities since the last "
                    f"line, 2 since 2023-11-14T22:13:20.000Z; most: {b} (1)")]
    assert [type(e) for e in queue.exits] == [InjectedFault]
    queue.exits.clear()
