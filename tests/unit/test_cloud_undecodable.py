"""The reference cloud's account of requests that are not valid protobuf (cloud/undecodable.py):
the timer that tells a minute's count when the minute ends, driven by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from loguru import logger

from edge_sync.cloud.undecodable import LOG_INTERVAL_S, UndecodableRequests
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def now_ms(self) -> int:
        return int(self.now * 1000)

    def monotonic(self) -> float:
        return self.now


class Timers:
    """The timers armed, in order: (delay, action); ``cancelled`` counts the cancels."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def arm(self, delay: float, action: Callable[[], None]) -> Callable[[], None]:
        self.armed.append((delay, action))
        return self.cancel

    def cancel(self) -> None:
        self.cancelled += 1


@pytest.fixture
def lines() -> Iterator[list[str]]:
    got: list[str] = []
    handle = logger.add(lambda m: got.append(m.record["message"]), level="DEBUG",
                        format="{message}", filter=lambda r: "protobuf" in r["message"])
    yield got
    logger.remove(handle)


def test_the_minutes_count_is_told_by_the_timer_when_it_ends(lines: list[str]) -> None:
    clock = Clock()
    fake = Timers()
    timers = fake.armed
    metrics = Metrics("edge_cloud")
    undecodable = UndecodableRequests(metrics, clock=clock, arm=fake.arm)

    def bad() -> None:
        with pytest.raises(DecodeError):
            undecodable.decode(b"\xff")

    assert undecodable.decode(edge_pb2.RequestMsg().SerializeToString()) == edge_pb2.RequestMsg()
    bad()
    assert (len(lines), timers) == (1, [])  # logged; nothing to tell at the minute's end
    clock.now += 10
    bad()
    bad()
    assert len(lines) == 1
    assert [delay for delay, _ in timers] == [LOG_INTERVAL_S - 10]  # armed once, for the end
    clock.now += LOG_INTERVAL_S - 10
    timers.pop()[1]()
    assert lines[1:] == ["2 more messages that are not valid protobuf from peers in the last "
                         "minute"]
    assert (timers, metrics.value("edge_cloud_undecodable_requests_total")) == ([], 3)
    undecodable.close()  # nothing left to tell
    assert len(lines) == 2


def test_a_timer_that_fires_early_waits_for_the_rest_of_the_minute(lines: list[Any]) -> None:
    clock = Clock()
    fake = Timers()
    timers = fake.armed
    undecodable = UndecodableRequests(Metrics("edge_cloud"), clock=clock, arm=fake.arm)
    for _ in range(2):
        with pytest.raises(DecodeError):
            undecodable.decode(b"\xff")
    clock.now += LOG_INTERVAL_S - 5  # the timer came 5 s early
    timers.pop()[1]()
    assert len(lines) == 1
    assert [delay for delay, _ in timers] == [5.0]  # armed again for the rest
    clock.now += 5
    timers.pop()[1]()
    assert lines[1:] == ["1 more messages that are not valid protobuf from peers in the last "
                         "minute"]


def test_the_stop_tells_the_count_and_cancels_the_timer(lines: list[str]) -> None:
    """The server stops within a minute of undecodable requests: the count is told at once and
    the timer set for the minute's end is cancelled; were it to fire all the same (a timer
    already running), it tells nothing more."""
    clock = Clock()
    fake = Timers()
    undecodable = UndecodableRequests(Metrics("edge_cloud"), clock=clock, arm=fake.arm)
    for _ in range(3):
        with pytest.raises(DecodeError):
            undecodable.decode(b"\xff")
    assert (len(lines), len(fake.armed), fake.cancelled) == (1, 1, 0)
    undecodable.close()
    assert lines[1:] == ["2 more messages that are not valid protobuf from peers in the last "
                         "minute"]
    assert fake.cancelled == 1
    clock.now += LOG_INTERVAL_S
    fake.armed.pop()[1]()
    assert (len(lines), fake.armed) == (2, [])
