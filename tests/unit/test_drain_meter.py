"""The drain figures of `edge-sync status --watch` (edge_sync/cli/drain.py) with an injected
clock: acknowledged per second, net drain, time to empty, a growing queue, a counter reset."""

from __future__ import annotations

from typing import Any

from edge_sync.cli.drain import DrainMeter, duration
from edge_sync.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_sample_has_no_rate() -> None:
    meter = DrainMeter(clock=Clock())
    d = meter.add(acked_total=10, pending=500)
    assert (d.acked_per_s, d.net_per_s, d.empty_in_s) == (None, None, None)
    assert d.text() == "drain:        — (measured from the next refresh)"


def test_draining_queue_gives_rate_and_time_to_empty() -> None:
    clock = Clock()
    meter = DrainMeter(window_s=60, clock=clock)
    meter.add(acked_total=0, pending=1000)
    clock.now += 2
    d = meter.add(acked_total=300, pending=800)  # 300 acked, 100 new: net 200 in 2 s
    assert (d.acked_per_s, d.net_per_s, d.empty_in_s) == (150.0, 100.0, 8.0)
    assert d.draining
    assert d.text() == ("drain:        150.0 events/s acknowledged, pending falls 100.0/s; "
                        "empty in 8s")
    assert d.as_json() == {"pending": 800, "acked_per_s": 150.0, "net_drain_per_s": 100.0,
                           "empty_in_s": 8.0}


def test_growing_queue_is_not_draining() -> None:
    clock = Clock()
    meter = DrainMeter(clock=clock)
    meter.add(acked_total=50, pending=100)
    clock.now += 4
    d = meter.add(acked_total=70, pending=120)
    assert (d.acked_per_s, d.net_per_s, d.empty_in_s) == (5.0, -5.0, None)
    assert not d.draining
    assert d.text() == ("drain:        5.0 events/s acknowledged, not draining "
                        "(queue grows by 5.0/s)")


def test_empty_queue() -> None:
    clock = Clock()
    meter = DrainMeter(clock=clock)
    meter.add(acked_total=0, pending=0)
    clock.now += 1
    d = meter.add(acked_total=0, pending=0)
    assert (d.net_per_s, d.empty_in_s) == (0.0, 0.0)
    assert d.text().endswith("queue empty")


def test_window_slides_and_a_counter_reset_gives_no_negative_rate() -> None:
    clock = Clock()
    meter = DrainMeter(window_s=10, clock=clock)
    for acked, pending in ((0, 1000), (100, 900), (200, 800)):
        meter.add(acked_total=acked, pending=pending)
        clock.now += 5
    # 15 s on: the sample of t=100 is out of the window, t=105 is the oldest kept
    d = meter.add(acked_total=600, pending=400)
    assert (d.acked_per_s, d.net_per_s) == (50.0, 50.0)
    clock.now += 5
    d = meter.add(acked_total=3, pending=400)  # the agent restarted: its counter starts again
    assert d.acked_per_s == 0.0


def test_duration() -> None:
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600, 90061)] == [
        "0s", "59s", "1m 01s", "59m 59s", "1h 00m", "25h 01m"]


def test_a_running_agents_status_counts_acknowledged_events_of_both_lanes() -> None:
    """The agent's status names the counter by lane (edge_sync_events_total, outcome acked),
    keyed as the metrics snapshot writes them; the deployed count is only the stopped agent's
    fallback (it falls when events are purged)."""
    metrics = Metrics()
    events = metrics.counter("edge_sync_events_total", "events", ("lane", "outcome"))
    clock = Clock()
    meter = DrainMeter(clock=clock)

    def status(pending: int) -> dict[str, Any]:
        return {"metrics": metrics.snapshot(), "queue": {"pending": pending, "deployed": 0}}

    meter.add_status(status(100))
    events.labels(lane="high", outcome="acked").inc(20)
    events.labels(lane="normal", outcome="acked").inc(130)
    events.labels(lane="normal", outcome="appended").inc(50)
    clock.now += 10
    drain = meter.add_status(status(0))
    assert drain.acked_per_s == 15.0
    assert drain.net_per_s == 10.0
