"""A full store's refusals, at the queue (a real QueueActor on a real LMDB store at its size cap,
``store.max_size = 0``; the clock injected, the refusal ticks told by the test):

- every refused command is counted in ``edge_sync_appends_refused_total{reason}``, also one that
  makes no event (local-only data: a rule chain's saved timeseries, its state), which
  ``edge_sync_events_total{outcome="refused"}`` cannot count;
- the log tells of them in a few lines whatever their rate: the first in full (WARNING), one
  summary per interval (how many, from which entities), one INFO once the store accepts
  again; each refusal at DEBUG.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.actors.messages import PutLocalTimeseries, PutRuleState, RequireDevice
from edge_sync.actors.queue_actor import RefusalsTick
from edge_sync.errors import NotFound, QueueFull
from tests.helpers.metric_values import metric_total
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
    queue.clock.now = T0 + 1000  # 2023-11-14T22:13:21.000Z
    refused(queue, a, *local_only(a, T0), events=1)
    assert [(r["level"].name, r["message"], r["extra"]) for r in lines
            if r["message"].startswith("storage full: new data")] == [
        ("WARNING", f"storage full: new data refused from now on ({FULL}); refusals are "
                    "summarised every 60 s until the store accepts again",
         {"component": "queue", "entity": str(a), "events": 1, "error": FULL})]
    for n in range(7):  # b four times, a twice, c once
        queue.clock.now = T0 + 2000 + n
        dev = (b, b, a, b, c, a, b)[n]
        refused(queue, dev, *local_only(dev, T0 + n))
    tick(queue)
    queue.clock.now = T0 + 70_000
    refused(queue, c, *local_only(c, T0))
    tick(queue)
    tick(queue)  # nothing refused, nothing accepted: the run goes on, nothing to tell
    queue.store.max_size = 64 << 20
    queue.append(a, (), *local_only(a, T0 + 9)).result(DEADLINE)
    tick(queue)  # accepted, none refused since the last tick: the run ended
    tick(queue)  # and nothing more
    queue.store.max_size = 0
    queue.clock.now = T0 + 90_000
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
