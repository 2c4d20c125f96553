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


@pytest.fixture
def lines() -> Iterator[list[str]]:
    got: list[str] = []
    handle = logger.add(lambda m: got.append(m.record["message"]), level="DEBUG",
                        format="{message}", filter=lambda r: "protobuf" in r["message"])
    yield got
    logger.remove(handle)


def test_the_minutes_count_is_told_by_the_timer_when_it_ends(lines: list[str]) -> None:
    clock = Clock()
    timers: list[tuple[float, Callable[[], None]]] = []
    metrics = Metrics("edge_cloud")
    undecodable = UndecodableRequests(metrics, clock=clock,
                                      arm=lambda delay, action: timers.append((delay, action)))

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
    timers: list[tuple[float, Callable[[], None]]] = []
    undecodable = UndecodableRequests(Metrics("edge_cloud"), clock=clock,
                                      arm=lambda delay, action: timers.append((delay, action)))
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
