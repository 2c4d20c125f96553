"""The QueueActor for real (alone under actor_child, or inside a whole EdgeApp on tmp_path):
group commit, replies only after commit, the full-storage policies, and atomic conflicts.

Tests wait on futures with deadlines, never sleep.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import select
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from edge_sync.actors import queue_actor
from edge_sync.actors.messages import (
    Append,
    DeadLetter,
    EventsCommitted,
    MarkDeployed,
    PutLocalTimeseries,
)
from edge_sync.actors.queue_actor import QueueActor, QueuePolicy
from edge_sync.api.device_service import MAX_NAME_BYTES
from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.errors import BadRequest, EdgeSyncError, QueueFull
from edge_sync.metrics import Metrics
from edge_sync.status import collect_status
from edge_sync.storage import codec
from edge_sync.storage.entity_store import Conflict, EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent, Status, StoredEvent
from edge_sync.storage.rule_store import RuleStore
from edge_sync.storage.usage import storage_usage
from edge_sync.supervisor import actor_child
from tests.helpers.crashes import crash_and_wait_restarted
from tests.helpers.log_capture import log_records
from tests.helpers.metric_values import metric_total
from tests.helpers.wait import wait_until

DEADLINE = 10.0
ROOT = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------


AppFactory = Callable[..., EdgeApp]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """Start an EdgeApp on tmp_path (ports 0) with extra env settings; stopped after the test."""
    apps: list[EdgeApp] = []

    def make(name: str = "edge", **env: str) -> EdgeApp:
        cfg = load_edge_config(env={
            "EDGE_DATA_DIR": str(tmp_path / name), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
            "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_MQTT_ENABLED": "false", **env,
        })
        app = EdgeApp(cfg).start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop(timeout=30)


def all_events(store: LmdbStore, **filters: Any) -> list[StoredEvent]:
    with store.read() as txn:
        return list(EventLog(store).iter_events(txn, **filters))


def wait_all(futures: list[Future[Any]], deadline: float = DEADLINE) -> None:
    """Wait until every future is done; fail the test if one is still open at the deadline."""
    _done, not_done = concurrent.futures.wait(futures, timeout=deadline)
    assert not not_done, f"{len(not_done)} of {len(futures)} replies still open after {deadline}s"


class QueueUnderTest:
    """A QueueActor alone under actor_child, on its own store, recording exits and commits."""

    def __init__(self, path: Path, policy: QueuePolicy | None = None, *, initial_mb: int = 16,
                 max_mb: int = 64) -> None:
        self.store = LmdbStore(path, initial_map_mb=initial_mb, max_size_mb=max_mb)
        self.metrics = Metrics()
        self.exits: list[BaseException | None] = []
        self.committed: list[EventsCommitted] = []
        self.child: Any = actor_child(
            QueueActor, self.store, policy=policy or QueuePolicy(), metrics=self.metrics,
            on_committed=self.committed.append,
        )(self.exits.append)
        self.ref = self.child.ref

    def stop(self) -> None:
        self.child.stop(timeout=DEADLINE)
        self.store.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[QueueUnderTest]:
    q = QueueUnderTest(tmp_path / "queue")
    yield q
    q.stop()


def telemetry(entity: uuid.UUID, tag: Any, n: int = 1) -> tuple[NewEvent, ...]:
    return tuple(NewEvent("DEVICE", "DEVICE", entity, Action.TIMESERIES_UPDATED,
                          {"tag": tag, "k": k}, 1, Lane.NORMAL) for k in range(n))


_READER = r"""
import json, sys
from pathlib import Path
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog

store = LmdbStore(Path(sys.argv[1]), readonly=True)
log = EventLog(store)
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    seq = int(line)
    with store.read() as txn:
        event = log.get(txn, seq)
    print(json.dumps(None if event is None else event.as_json()), flush=True)
store.close()
"""


class ReaderProcess:
    """A read-only LmdbStore in another process: one JSON line (the event or null) per seq."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _READER, str(path)], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self._line() == "ready"

    def _line(self) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        assert ready, "reader process silent for 20s"
        line = self.proc.stdout.readline()
        assert line, f"reader process exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return json.loads(line)

    def get(self, seq: int) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{seq}\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> int:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=20)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()


# -- group commit ---------------------------------------------------------------------------------


def test_group_commit_many_appends_per_fsync(queue: QueueUnderTest) -> None:
    threads_n, per_thread = 8, 250
    appends = threads_n * per_thread
    entities = [uuid.UUID(int=1000 + t) for t in range(threads_n)]
    sent: list[list[tuple[Future[range], int]]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n)

    def fire(t: int) -> None:
        start.wait(timeout=DEADLINE)
        for i in range(per_thread):
            n = 1 + (i % 3)  # 1, 2 or 3 events per Append
            reply: Future[range] = Future()
            queue.ref.tell(Append(entities[t], telemetry(entities[t], (t, i), n), reply))
            sent[t].append((reply, n))

    workers = [threading.Thread(target=fire, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(DEADLINE)
        assert not w.is_alive()
    futures = [f for per in sent for f, _ in per]
    assert len(futures) == appends
    wait_all(futures)

    ranges = [f.result() for f in futures]
    total = sum(n for per in sent for _, n in per)
    assert all(len(r) == n for r, (_, n) in zip(ranges, [x for per in sent for x in per],
                                                strict=True))
    seqs = sorted(s for r in ranges for s in r)
    assert seqs == list(range(1, total + 1))  # every seq exactly once, no gaps
    # Each thread's Appends got increasing seqs in the order it sent them (FIFO mailbox).
    for per in sent:
        firsts = [f.result().start for f, _ in per]
        assert firsts == sorted(firsts)
    # Each range holds exactly the events of its Append.
    by_seq = {e.seq: e for e in all_events(queue.store)}
    assert len(by_seq) == total
    for t, per in enumerate(sent):
        for i, (f, n) in enumerate(per):
            got = [(by_seq[s].entity_id, by_seq[s].body["tag"], by_seq[s].body["k"])
                   for s in f.result()]
            assert got == [(entities[t], [t, i], k) for k in range(n)]
    snap = queue.metrics.snapshot()
    assert metric_total(snap, "edge_sync_events_total", outcome="appended") == total
    commits = snap["edge_sync_queue_commits_total"]
    assert 1 <= commits < appends / 2, f"{commits} commits for {appends} appends"
    assert queue.committed[-1] == EventsCommitted(next_seq=total + 1)
    assert queue.exits == []


def test_group_is_committed_when_group_max_events_is_reached(tmp_path: Path) -> None:
    q = QueueUnderTest(tmp_path / "queue", QueuePolicy(group_max_events=10))
    try:
        entity = uuid.uuid4()
        replies: list[Future[range]] = []
        for i in range(200):
            reply: Future[range] = Future()
            q.ref.tell(Append(entity, telemetry(entity, i, 5), reply))
            replies.append(reply)
        wait_all(replies)
        assert [r.result() for r in replies] == [range(1 + 5 * i, 6 + 5 * i) for i in range(200)]
        # At most 10 events (two Appends) per commit.
        assert q.metrics.snapshot()["edge_sync_queue_commits_total"] >= 100
    finally:
        q.stop()


def test_reply_resolves_only_after_commit(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    device, created = app.service.create_device("meter")
    assert created.result(DEADLINE) == range(1, 3)
    reader = ReaderProcess(tmp_path / "edge")
    try:
        for i in range(20):
            fut = app.service.post_telemetry(device.token, {"i": i})
            seqs = fut.result(DEADLINE)
            assert seqs == range(3 + i, 4 + i)
            # Visible to another process the moment the reply resolved: committed, not buffered.
            seen = reader.get(seqs.start)
            assert seen is not None
            assert (seen["entity_id"], seen["action"], seen["body"]["values"]) == (
                str(device.id), "TIMESERIES_UPDATED", {"i": i})
            assert seen["status"] == "PENDING"
            assert reader.get(seqs.start + 1) is None
    finally:
        assert reader.close() == 0
    # And the latest value went into the entity store in the same commit.
    with app.store.read() as txn:
        latest = EntityStore(app.store).latest(txn, device.id)
    assert latest["i"][1] == 19


# -- full storage ---------------------------------------------------------------------------------


SMALL = {"EDGE_STORAGE_MAP_SIZE_INITIAL_MB": "1", "EDGE_STORAGE_MAX_MB": "2"}
PAD = "x" * 1000


def _post_burst(app: EdgeApp, token: str, first: int, n: int) -> list[tuple[int, Future[range]]]:
    return [(c, app.service.post_telemetry(token, {"c": c, "pad": PAD}))
            for c in range(first, first + n)]


def _counters(app: EdgeApp, device_id: uuid.UUID) -> list[int]:
    return [e.body["values"]["c"] for e in all_events(app.store, entity_id=device_id)
            if e.action == Action.TIMESERIES_UPDATED]


def _http_post(port: int, token: str, body: bytes) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/{token}/telemetry", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


def test_refuse_policy_queue_full_keeps_everything_accepted(make_app: AppFactory,
                                                            tmp_path: Path) -> None:
    app = make_app(**SMALL)
    device, created = app.service.create_device("filler")
    created.result(DEADLINE)
    ok: list[int] = []
    refused: list[int] = []
    c = 0
    while not refused:
        assert c < 20_000, "storage never filled up"
        burst = _post_burst(app, device.token, c, 25)
        c += 25
        wait_all([f for _, f in burst])
        for counter, fut in burst:
            exc = fut.exception()
            if exc is None:
                ok.append(counter)
            else:
                assert isinstance(exc, QueueFull), repr(exc)
                refused.append(counter)
    assert len(ok) > 500  # the map grew from 1 to 2 MiB before refusing

    # HTTP: a body that cannot fit (60 KB: 15 contiguous pages in a full map) gets 507.
    status, headers, body = _http_post(app.http_port, device.token,
                                       json.dumps({"big": "y" * 60_000}).encode())
    assert status == 507
    assert headers.get("Retry-After") == "1"
    assert body["error"] == "insufficient storage"

    counters = _counters(app, device.id)
    assert sorted(counters) == sorted(ok)  # every accepted post once, no refused one
    assert len(counters) == len(set(counters))
    assert counters == sorted(counters)  # one device: log order is post order
    events = all_events(app.store)
    assert len(events) == len(ok) + 2
    assert [e.action for e in events[:2]] == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    snap = app.metrics.snapshot()
    assert metric_total(snap, "edge_sync_events_total", outcome="appended") == len(ok) + 2
    # + the HTTP one
    assert metric_total(snap, "edge_sync_events_total", outcome="refused") == len(refused) + 1
    assert metric_total(snap, "edge_sync_events_total", outcome="evicted") == 0
    assert app.supervisor.restarts("queue") == 0

    app.stop()
    store = LmdbStore(tmp_path / "edge", readonly=True)
    try:
        assert [e.body["values"]["c"] for e in all_events(store)[2:]] == counters
    finally:
        store.close()


class Filler:
    """Fills a QueueActor's small store with 1 KB events, 25 Appends at a time."""

    def __init__(self, q: QueueUnderTest) -> None:
        self.q = q
        self.entity = uuid.uuid4()
        self.accepted: list[int] = []  # tags, in seq order (seq = index + 1)
        self.tag = 0

    def one(self, tag: int) -> Future[range]:
        reply: Future[range] = Future()
        events = (NewEvent("DEVICE", "DEVICE", self.entity, Action.TIMESERIES_UPDATED,
                           {"tag": tag, "pad": PAD}, 1, Lane.NORMAL),)
        self.q.ref.tell(Append(self.entity, events, reply))
        return reply

    def fill(self, *, max_bursts: int = 1000) -> int:
        """Append bursts until one is refused (QueueFull); return how many were accepted."""
        before = len(self.accepted)
        for _ in range(max_bursts):
            burst = [(t, self.one(t)) for t in range(self.tag, self.tag + 25)]
            self.tag += 25
            wait_all([f for _, f in burst], deadline=3.0)
            full = False
            for t, f in burst:
                if f.exception() is None:
                    n = len(self.accepted)
                    assert f.result() == range(n + 1, n + 2)
                    self.accepted.append(t)
                else:
                    assert isinstance(f.exception(), QueueFull), repr(f.exception())
                    full = True
            if full:
                return len(self.accepted) - before
        raise AssertionError("storage never filled up")

    def ack(self, seqs: range) -> int:
        reply: Future[int] = Future()
        self.q.ref.tell(MarkDeployed(tuple(seqs), reply))
        return reply.result(3.0)


@pytest.fixture
def small_queue(tmp_path: Path) -> Iterator[Filler]:
    q = QueueUnderTest(tmp_path / "queue", initial_mb=1, max_mb=2)
    yield Filler(q)
    q.stop()


def test_full_store_accepts_a_batch_ack(small_queue: Filler) -> None:
    filler = small_queue
    assert filler.fill() > 500
    assert filler.q.metrics.snapshot()["edge_sync_events_purged_total"] == 0
    assert filler.ack(range(1, 101)) == 100
    events = all_events(filler.q.store)
    assert len(events) == len(filler.accepted)
    assert [e.status for e in events[:101]] == [Status.DEPLOYED] * 100 + [Status.PENDING]
    assert filler.q.exits == []


def test_full_store_records_every_ack_of_the_backlog(small_queue: Filler) -> None:
    filler = small_queue
    total = filler.fill()
    for first in range(1, total + 1, 100):
        batch = range(first, min(first + 100, total + 1))
        assert filler.ack(batch) == len(batch)
    events = all_events(filler.q.store)
    assert {e.status for e in events} == {Status.DEPLOYED}
    assert filler.q.exits == []


def test_when_full_delivered_events_are_purged_to_make_room(small_queue: Filler) -> None:
    filler = small_queue
    assert filler.fill() > 500
    assert filler.ack(range(1, 101)) == 100
    # Storage full again: the 100 delivered events are purged and make room for about as many.
    refill = filler.fill(max_bursts=20)
    assert filler.q.metrics.snapshot()["edge_sync_events_purged_total"] == 100
    assert refill >= 50, refill
    events = all_events(filler.q.store)
    assert [e.body["tag"] for e in events] == filler.accepted[100:]
    assert [e.seq for e in events] == list(range(101, len(filler.accepted) + 1))


def test_a_drained_full_store_is_healthy_and_accepts_new_data(small_queue: Filler) -> None:
    """The cloud drained the queue of a full store: its delivered events, kept for
    storage.retention_hours, still fill it, but a full store purges them before anything is
    refused (QueueActor._commit_when_full), so the health judges what is left: healthy, while
    the raw use stays near the cap. The next append is accepted."""
    filler = small_queue
    total = filler.fill()
    for first in range(1, total + 1, 100):
        filler.ack(range(first, min(first + 100, total + 1)))
    store = filler.q.store
    status = collect_status(store, now_ms=1)
    st, health = status["storage"], status["health_detail"]["storage"]
    parts = st["parts_bytes"]
    assert sum(parts.values()) == st["used_bytes"]
    assert parts["pending"] == 0 and parts["local_timeseries"] == 0
    assert st["used_bytes"] > 0.9 * store.max_size
    assert st["used_bytes"] - parts["delivered"] < 0.05 * store.max_size
    assert health["used_pct"] > 90.0
    assert health["value_pct"] < 5.0
    assert health["level"] == "healthy"
    # accepted: the delivered events purged to make room
    assert filler.one(filler.tag).result(DEADLINE) == range(total + 1, total + 2)
    assert filler.q.metrics.snapshot()["edge_sync_events_purged_total"] == total
    with store.read() as txn:
        after = storage_usage(store, txn)
    assert after.delivered == 0
    assert after.used < 0.05 * store.max_size


def test_evict_policy_keeps_accepting_and_keeps_the_high_lane(make_app: AppFactory) -> None:
    app = make_app(**SMALL, EDGE_STORAGE_FULL_POLICY="evict_oldest_normal")
    devices = []
    for i in range(5):
        device, created = app.service.create_device(f"dev-{i}")
        created.result(DEADLINE)
        devices.append(device)
    posts = 4000  # about three times what 2 MiB holds
    c = 0
    while c < posts:
        burst = _post_burst(app, devices[0].token, c, 50)
        c += 50
        wait_all([f for _, f in burst], deadline=3.0)
        for _, fut in burst:
            assert fut.exception() is None, repr(fut.exception())
    snap = app.metrics.snapshot()
    evicted = metric_total(snap, "edge_sync_events_total", outcome="evicted")
    assert evicted > 0
    with app.store.read() as txn:
        counts = EventLog(app.store).counts(txn)
    assert counts.evicted == evicted
    remaining = _counters(app, devices[0].id)
    assert len(remaining) + evicted == posts
    assert remaining == list(range(posts - len(remaining), posts))  # the oldest went first
    high = [(e.entity_id, e.action) for e in all_events(app.store) if e.lane is Lane.HIGH]
    assert high == [(d.id, a) for d in devices for a in (Action.ADDED, Action.CREDENTIALS_UPDATED)]
    assert counts.pending_high == 10
    assert app.supervisor.restarts("queue") == 0


# -- conflicts ------------------------------------------------------------------------------------


def test_a_crashed_queue_actor_leaves_no_purge_timer_behind(make_app: AppFactory) -> None:
    """Each incarnation of the QueueActor has one purge timer thread: one that dies stops its
    own, so three crashes leave exactly the one of the incarnation running."""
    old = set(threading.enumerate())  # another test's agent may still be stopping

    def purge_timers() -> int:
        return sum(1 for t in threading.enumerate()
                   if t.name == "ticker-purge" and t.is_alive() and t not in old)

    app = make_app()
    wait_until(lambda: purge_timers() == 1, timeout=DEADLINE,
               what="the QueueActor's purge timer started", show=purge_timers)
    for crash in range(1, 4):
        crash_and_wait_restarted(app, "queue", crash, timeout=DEADLINE)
    _, created = app.service.create_device("after-crashes")
    created.result(DEADLINE)  # the last incarnation works
    wait_until(lambda: purge_timers() == 1, timeout=DEADLINE,
               what="one purge timer, the running incarnation's",
               show=lambda: f"{purge_timers()} purge timers")


def test_second_device_with_same_name_fails_with_conflict_and_writes_nothing(
    make_app: AppFactory,
) -> None:
    app = make_app()
    first, f1 = app.service.create_device("boiler", token="tok-a")
    assert f1.result(DEADLINE) == range(1, 3)
    second, f2 = app.service.create_device("boiler", token="tok-b")
    with pytest.raises(Conflict, match="named 'boiler'"):
        f2.result(DEADLINE)
    third, f3 = app.service.create_device("other", token="tok-a")
    with pytest.raises(Conflict, match="access token"):
        f3.result(DEADLINE)
    # Appends after the refused ones still get the next seqs: nothing was consumed.
    assert app.service.post_telemetry("tok-a", {"v": 1}).result(DEADLINE) == range(3, 4)
    assert all_events(app.store, entity_id=second.id) == []
    assert all_events(app.store, entity_id=third.id) == []
    assert [(e.seq, e.action) for e in all_events(app.store)] == [
        (1, Action.ADDED), (2, Action.CREDENTIALS_UPDATED), (3, Action.TIMESERIES_UPDATED)]
    with app.store.read() as txn:
        ents = EntityStore(app.store)
        assert ents.device_by_name(txn, "boiler") == first
        assert ents.device_by_token(txn, "tok-b") is None
        assert ents.device(txn, second.id) is None
        assert ents.device(txn, third.id) is None
        assert ents.device_count(txn) == 1


def test_concurrent_creations_with_same_name_exactly_one_wins(make_app: AppFactory) -> None:
    app = make_app()
    attempts = [app.service.create_device("twin") for _ in range(10)]
    wait_all([f for _, f in attempts])
    winners = [d for d, f in attempts if f.exception() is None]
    losers = [(d, f.exception()) for d, f in attempts if f.exception() is not None]
    assert len(winners) == 1
    assert len(losers) == 9
    assert all(isinstance(exc, Conflict) for _, exc in losers)
    events = all_events(app.store)
    assert [(e.entity_id, e.action) for e in events] == [
        (winners[0].id, Action.ADDED), (winners[0].id, Action.CREDENTIALS_UPDATED)]
    assert {e.status for e in events} == {Status.PENDING}


# -- bodies the store cannot take -------------------------------------------------------------------


def test_unencodable_body_fails_alone_and_others_are_committed(make_app: AppFactory) -> None:
    app = make_app()
    bad, f1 = app.service.create_device("bad")
    good, f2 = app.service.create_device("good")
    wait_all([f1, f2])
    with pytest.raises(BadRequest):  # the device API refuses it up front
        app.service.post_telemetry(bad.token, {"k": "\ud800"})
    # the pre-validated in-process path does not check: the queue must isolate it
    poison = app.service.post_entries(bad.id, ((1, (("k", "\ud800"),)),))
    fine = [app.service.post_telemetry(good.token, {"k": i}) for i in range(20)]
    wait_all([poison, *fine], deadline=3.0)
    assert isinstance(poison.exception(), EdgeSyncError)
    assert [f.exception() for f in fine] == [None] * 20
    assert [e.body["values"]["k"] for e in all_events(app.store, entity_id=good.id)[2:]] == list(
        range(20))


def test_longest_allowed_key_of_multibyte_characters_is_stored(make_app: AppFactory) -> None:
    app = make_app()
    device, created = app.service.create_device("d")
    created.result(DEADLINE)
    key = "é" * 127  # 254 bytes: the longest key of 2-byte characters that is allowed
    with pytest.raises(BadRequest):
        app.service.post_telemetry(device.token, {"é" * 128: 1})  # 256 bytes: refused up front
    fut = app.service.post_telemetry(device.token, {key: 1})
    fut.result(DEADLINE)
    with app.store.read() as txn:
        assert EntityStore(app.store).latest(txn, device.id)[key][1] == 1


def test_longest_allowed_device_name_of_multibyte_characters(make_app: AppFactory) -> None:
    """Names are limited to 255 bytes of UTF-8 (MAX_NAME_BYTES), not 255 characters."""
    app = make_app()
    longest = "名" * 85  # 3-byte characters: 255 bytes, the longest name allowed
    assert len(longest.encode()) == MAX_NAME_BYTES
    for too_long in (longest + "x", "名" * 86):  # 256 and 258 bytes: refused up front
        with pytest.raises(BadRequest, match="device name must be 1 to 255 bytes"):
            app.service.create_device(too_long)
    device, created = app.service.create_device(longest, token="tok-longest")
    assert created.result(DEADLINE) == range(1, 3)  # nothing consumed a seq before it
    assert [(e.seq, e.action, e.entity_id) for e in all_events(app.store)] == [
        (1, Action.ADDED, device.id), (2, Action.CREDENTIALS_UPDATED, device.id)]
    with app.store.read() as txn:
        ents = EntityStore(app.store)
        assert ents.device_by_name(txn, longest) == device
        assert ents.device(txn, device.id) == device
        assert ents.device(txn, device.id).name == longest
        assert ents.device_count(txn) == 1


def test_when_full_local_timeseries_points_give_way_before_any_refusal(small_queue: Filler) -> None:
    """The local timeseries is the edge's own copy: a full store drops its soonest-expiring
    points (counted, logged) before it refuses an event."""
    filler = small_queue
    device = uuid.uuid4()
    for start in range(0, 400, 50):
        reply: Future[range] = Future()
        entries = tuple((1_000 + ts, (("v", "x" * 1000),)) for ts in range(start, start + 50))
        filler.q.ref.tell(Append(device, (), reply, (PutLocalTimeseries(device, entries, 0),)))
        reply.result(3.0)
    rules = RuleStore(filler.q.store)
    with filler.q.store.read() as txn:
        assert rules.local_points(txn) == 400
        kept = storage_usage(filler.q.store, txn)
    # 400 points of 1 KB: their part of the store, not reclaimable (the health counts them)
    assert (kept.local_points, kept.pending, kept.delivered) == (400, 0, 0)
    assert kept.local_timeseries > 400 * 1000
    assert kept.unreclaimable == kept.used
    accepted = filler.fill()
    assert accepted > 500
    snap = filler.q.metrics.snapshot()
    assert snap['edge_sync_rule_local_points_removed_total{reason="storage_full"}'] == 400
    # full again once the points were gone
    assert metric_total(snap, "edge_sync_events_total", outcome="refused") >= 1
    with filler.q.store.read() as txn:
        assert rules.local_points(txn) == 0
        full = storage_usage(filler.q.store, txn)
    assert (full.local_points, full.local_timeseries, full.delivered) == (0, 0, 0)
    assert full.pending > 0.9 * filler.q.store.max_size  # the queue took their room
    assert [e.body["tag"] for e in all_events(filler.q.store)] == filler.accepted


def _stale_listings_ahead(path: Path, kept: int) -> None:
    """A store whose local timeseries expiry index starts with 50 listings that delete nothing
    (a device's points written at one expiry, then written again, kept until deleted, by an
    earlier release run on the store: it knows only its own index), and ``kept`` points of 5 KB
    of another device expiring after them."""
    store = LmdbStore(path, initial_map_mb=1, max_size_mb=2)
    rules = RuleStore(store)
    soon = int(time.time() * 1000) + 86_400_000
    stale, device = uuid.UUID(int=0x51), uuid.UUID(int=0xD5)
    store.write(lambda txn: rules.put_local(
        txn, stale, tuple((ts, (("v", ts),)) for ts in range(50)), soon))
    row = stale.bytes + struct.pack(">H", 1) + b"v"
    store.write(lambda txn: [txn.put(row + codec.u64(ts), codec.pack((None, -ts)),
                                     db=store.dbs["rule_local_ts"]) for ts in range(50)])
    if kept:
        store.write(lambda txn: rules.put_local(
            txn, device, tuple((ts, (("v", "x" * 5000),)) for ts in range(kept)),
            soon + 60_000))
    store.close()


@contextlib.contextmanager
def _filled_with_stale_listings_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int
                                      ) -> Iterator[tuple[QueueUnderTest, list[Any]]]:
    """A QueueActor on ``_stale_listings_ahead``'s store (batches of 5 points), filled until it
    refused: the queue and the records logged while it filled; stopped afterwards."""
    monkeypatch.setattr(queue_actor, "_PURGE_BATCH", 5)
    path = tmp_path / "queue"
    _stale_listings_ahead(path, kept=kept)
    q = QueueUnderTest(path, initial_mb=1, max_mb=2)
    try:
        filler = Filler(q)
        with log_records() as records:
            assert filler.fill() > 0
        yield q, records
    finally:
        q.stop()


def test_when_full_stale_index_listings_ahead_are_passed_in_bounded_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch visits at most 4 listings per point it may drop (5 points: 20 listings): the
    store-full path goes on past batches that only took stale listings out, until one drops a
    point, and logs what it did."""
    with _filled_with_stale_listings_ahead(tmp_path, monkeypatch, kept=10) as (q, records):
        snap = q.metrics.snapshot()
        assert snap['edge_sync_rule_local_points_removed_total{reason="storage_full"}'] == 10
        dropped = [(r["extra"]["count"], r["extra"]["stale_listings"]) for r in records
                   if r["message"].startswith("storage full: dropped the")]
        # 20 + 20 stale, then 10 stale and 5 points; then 5 points
        assert dropped == [(5, 50), (5, 0)]
        assert not [r for r in records if "stale expiry index listings" in r["message"]]
        with q.store.read() as txn:
            assert RuleStore(q.store).local_points(txn) == 50  # kept until deleted
            assert q.store.entries(txn, "rule_local_expiry_sets") == 0


def test_when_full_a_drop_that_finds_only_stale_listings_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _filled_with_stale_listings_ahead(tmp_path, monkeypatch, kept=0) as (q, records):
        snap = q.metrics.snapshot()
        assert snap['edge_sync_rule_local_points_removed_total{reason="storage_full"}'] == 0
        assert [r["message"] for r in records if "local timeseries" in r["message"]] == [
            "storage full: no local timeseries point dropped; removed 50 stale expiry index "
            "listings"]
        with q.store.read() as txn:
            assert RuleStore(q.store).local_points(txn) == 50
            assert q.store.entries(txn, "rule_local_expiry_sets") == 0


def test_the_queue_builds_the_entity_index_of_a_store_made_before_it_while_it_appends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening reads no event; the started QueueActor builds the index one transaction per
    message (25 events in steps of 10 here), and events appended meanwhile are indexed too."""
    import edge_sync.storage.event_log as event_log

    monkeypatch.setattr(event_log, "_INDEX_BUILD_CHUNK", 10)
    path = tmp_path / "queue"
    a, b = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
    store = LmdbStore(path)
    log = EventLog(store)
    events = [NewEvent("DEVICE", "DEVICE", a if i % 2 else b, Action.TIMESERIES_UPDATED,
                       {"i": i}, 1, Lane.NORMAL) for i in range(25)]
    store.write(lambda txn: log.append(txn, events, first_seq=1, created_time=1,
                                       tenant_id=bytes(16), edge_id=bytes(16)))
    store.write(lambda txn: (txn.drop(store.dbs["events_by_entity"], delete=False),
                             txn.delete(b"entity_index", db=store.dbs["meta"])))
    store.close()

    q = QueueUnderTest(path)
    try:
        reply: Future[range] = Future()
        q.ref.tell(Append(a, telemetry(a, "new"), reply))
        assert reply.result(timeout=DEADLINE) == range(26, 27)

        def built() -> bool:
            with q.store.read() as txn:
                return EventLog(q.store).entity_index_ready(txn)
        wait_until(built, timeout=DEADLINE, what="the entity index built")
        with q.store.read() as txn:
            got = [e.seq for e in EventLog(q.store).iter_events(txn, entity_id=a)]
            index = sorted(codec.from_u64(k[16:]) for k in
                           txn.cursor(db=q.store.dbs["events_by_entity"]).iternext(values=False))
        assert got == [*range(2, 26, 2), 26]
        assert index == list(range(1, 27))
    finally:
        q.stop()


def test_a_dead_letter_is_logged_with_its_entity_and_lane(queue: QueueUnderTest) -> None:
    """docs/logs.md's recipe for every dead letter of one device selects on entity_id: the
    queue's "event dead-lettered" line carries it, with entity_type and lane."""
    device, asset = uuid.UUID(int=0xD1), uuid.UUID(int=0xA1)
    first: Future[range] = Future()
    queue.ref.tell(Append(device, telemetry(device, "big"), first))
    second: Future[range] = Future()
    queue.ref.tell(Append(asset, (NewEvent("ASSET", "ASSET", asset, Action.ATTRIBUTES_UPDATED,
                                           {"a": 1}, 1, Lane.HIGH),), second))
    wait_all([first, second])
    with log_records() as records:
        replies: list[Future[Any]] = []
        for seq, error in ((first.result()[0], "too large"), (second.result()[0], "refused"),
                           (99, "unknown seq: not dead-lettered")):
            reply: Future[Any] = Future()
            queue.ref.tell(DeadLetter(seq, error, reply))
            replies.append(reply)
        wait_all(replies)
    assert [r.result() for r in replies] == [True, True, False]
    logged = [(r["level"].name, r["extra"]) for r in records
              if r["message"] == "event dead-lettered"]
    assert logged == [
        ("WARNING", {"component": "queue", "seq": 1, "entity_type": "DEVICE",
                     "entity_id": str(device), "lane": "normal", "error": "too large"}),
        ("WARNING", {"component": "queue", "seq": 2, "entity_type": "ASSET",
                     "entity_id": str(asset), "lane": "high", "error": "refused"}),
    ]
