"""Chaos: clock skew and clock jumps. The edge runs in-process on an injected clock whose wall
time jumps back 10 minutes and forward 2 hours between posts (its monotonic time stays
monotonic), linked to an in-process reference cloud on the real clock. Ordering uses seqs
only, so:

- every point is accepted and delivered, in seq order, whatever its created_time or ts (points
  without a ts take the jumping clock's time; explicit ts values of 2001 and 2100 pass as sent);
- the edge logs ONE skew WARNING when the skew passes cloud.clock_skew_warn_s (60 s), however
  many connects and downlinks report it, and one INFO when the clocks agree again;
- nothing is rejected or dead-lettered for its timestamp; downlinks are applied in order.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.status import collect_status
from edge_sync.storage.records import Action, Status
from tests.helpers.agent import HttpClient, read_log
from tests.helpers.metric_values import metric_total
from tests.helpers.wait import wait_until

RK = "rk-clock"
SECRET = "sec-clock-7d21f0"
DEADLINE_S = 30.0
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
TS_2001 = 978_307_200_000  # 2001-01-01T00:00:00Z
TS_2100 = 4_102_444_800_000  # 2100-01-01T00:00:00Z
SKEW_SLACK_MS = 10_000  # the measured skew includes the time a downlink takes to arrive


class JumpingClock:
    """Wall time = the real time plus an offset the test moves; monotonic time is the real
    monotonic clock, untouched (timeouts and backoff must not notice the jumps)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self._lock = threading.Lock()
        self._offset_ms = offset_ms

    def jump_to(self, offset_ms: int) -> None:
        with self._lock:
            self._offset_ms = offset_ms

    @property
    def offset_ms(self) -> int:
        with self._lock:
            return self._offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class LogCapture:
    """Every loguru record while installed (a sink of this test only, removed at the end)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sink(self, message: Any) -> None:
        r = message.record
        with self._lock:
            self.records.append({"level": r["level"].name, "message": r["message"],
                                 **{k: v for k, v in r["extra"].items()}})

    def skew_lines(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r.get("component") == "link"
                    and "clocks" in r["message"] and "skew_ms" in r]


@pytest.fixture
def capture() -> Iterator[LogCapture]:
    cap = LogCapture()
    sink_id = logger.add(cap.sink, level="DEBUG", format="{message}")
    try:
        yield cap
    finally:
        logger.remove(sink_id)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    cfg = load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_HOST": "127.0.0.1",
        "EDGES_RPC_PORT": "0", "CLOUD_ADMIN_PORT": "0",
        "CLOUD_DOWNLINK_RESEND_TIMEOUT_MS": "2000",
    })
    server = CloudServer(cfg).start()
    server.service.create_edge("clock-edge", routing_key=RK, secret=SECRET)
    try:
        yield server
    finally:
        server.stop()


def start_edge(tmp_path: Path, cloud: CloudServer, clock: JumpingClock) -> EdgeApp:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_MQTT_ENABLED": "false",
        "CLOUD_ROUTING_KEY": RK, "CLOUD_ROUTING_SECRET": SECRET,
        "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(cloud.port),
        "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100", "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
        "EDGE_CLOUD_BATCH_TIMEOUT_MS": "50", "EDGE_CLOUD_CLOCK_SKEW_WARN_S": "60",
    })
    return EdgeApp(cfg, clock=clock).start()


@dataclass
class Run:
    """The edge under test and what the device posted (value -> the ts it sent, or None)."""

    app: EdgeApp
    cloud: CloudServer
    clock: JumpingClock
    device_id: str
    token: str
    http: HttpClient
    posted: list[tuple[int, int | None, int]] = field(default_factory=list)  # (value, ts, offset)
    phase: int = 0

    def post(self, count: int = 2) -> None:
        """`count` points without a ts (stamped with the edge's jumping clock)."""
        for _ in range(count):
            value = len(self.posted)
            resp = self.http.post_json(f"/api/v1/{self.token}/telemetry", {"v": value})
            assert resp.status == 200, (resp.status, resp.body)
            self.posted.append((value, None, self.clock.offset_ms))

    def post_with_ts(self, *stamps: int) -> None:
        """One request with one entry per ts, in the order given."""
        body = []
        for ts in stamps:
            body.append({"ts": ts, "values": {"v": len(self.posted) + len(body)}})
        resp = self.http.post_json(f"/api/v1/{self.token}/telemetry", body)
        assert resp.status == 200, (resp.status, resp.body)
        for entry in body:
            self.posted.append((entry["values"]["v"], entry["ts"], self.clock.offset_ms))

    def downlink(self) -> None:
        """Set a shared attribute in the cloud and wait until the edge applied it: a downlink,
        which carries the cloud's time."""
        self.phase += 1
        self.cloud.service.set_attributes(self.device_id, {"phase": self.phase})
        wait_until(lambda: self.shared() == self.phase, timeout=DEADLINE_S,
                   what=f"phase {self.phase} applied on the edge")

    def shared(self) -> Any:
        out = self.app.service.get_attributes(self.token, client_keys=None, shared_keys=("phase",))
        return out["shared"].get("phase")

    def skew_ms(self) -> int | None:
        value = self.app.link_board.value.get("clock_skew_ms")
        return None if value is None else int(value)  # type: ignore[call-overload]

    def wait_skew(self, target_ms: int) -> None:
        """The status shows the skew (published on the link's next tick)."""
        wait_until(lambda: near(self.skew_ms(), target_ms), timeout=DEADLINE_S,
                   what=f"a skew of {target_ms} ms in the link status")

    def jump(self, offset_ms: int) -> None:
        self.clock.jump_to(offset_ms)


def near(value: int | None, target: int) -> bool:
    return value is not None and abs(value - target) < SKEW_SLACK_MS


def test_clock_jumps_keep_seq_order_warn_once_and_reject_nothing(tmp_path, cloud, capture):
    clock = JumpingClock(offset_ms=-10 * MINUTE_MS)  # the edge starts 10 minutes slow
    app = start_edge(tmp_path, cloud, clock)
    http = HttpClient(app.http_port)
    try:
        wait_until(lambda: app.link_board.value["state"] == "CONNECTED", timeout=DEADLINE_S,
                   what="the link CONNECTED")
        device, created = app.service.create_device("clock-dev")
        created.result(10)
        wait_until(lambda: len(cloud.service.events(RK)) >= 2, timeout=DEADLINE_S,
                   what="the cloud to know the device")
        run = Run(app, cloud, clock, str(device.id), device.token, http)

        # 10 minutes slow from the start: the connect reported it (one WARNING); the sync's
        # downlinks and another one report it again, without a second WARNING.
        run.post()
        run.downlink()
        run.wait_skew(-10 * MINUTE_MS)
        assert [(r["level"], near(r["skew_ms"], -10 * MINUTE_MS)) for r in capture.skew_lines()] \
            == [("WARNING", True)]

        # Back on time: one INFO, the skew is gone.
        run.jump(0)
        run.post()
        run.downlink()
        run.downlink()
        run.wait_skew(0)

        # Two hours fast: one WARNING, positive skew.
        run.jump(2 * HOUR_MS)
        run.post()
        run.downlink()
        run.post()
        run.downlink()
        run.wait_skew(2 * HOUR_MS)

        # Straight from two hours fast to ten minutes slow (the wall clock goes back 2h10m
        # between two posts): still beyond the limit, so no new line; the status shows it.
        run.jump(-10 * MINUTE_MS)
        run.post()
        run.downlink()
        run.wait_skew(-10 * MINUTE_MS)

        # On time again, then points stamped by the device itself: 2100, then 2001 in one
        # request (ts going back inside one post), then 2001 alone.
        run.jump(0)
        run.post()
        run.downlink()
        run.post_with_ts(TS_2100, TS_2001)
        run.post_with_ts(TS_2001)
        run.post()

        def drained() -> bool:
            return collect_status(app.store, now_ms=0)["queue"]["pending"] == 0
        wait_until(drained, timeout=DEADLINE_S, what="the edge's queue drained")
        wait_until(lambda: app.link_board.value["in_flight_messages"] == 0, timeout=DEADLINE_S,
                   what="no uplink in flight")
        metrics = app.metrics.snapshot()
    finally:
        http.close()
        app.stop()

    # -- the log: one WARNING per excursion, one INFO per return ------------------------------
    lines = capture.skew_lines()
    assert [r["level"] for r in lines] == ["WARNING", "INFO", "WARNING", "INFO"], \
        [(r["level"], r["message"]) for r in lines]
    assert near(lines[0]["skew_ms"], -10 * MINUTE_MS)
    assert near(lines[1]["skew_ms"], 0)
    assert near(lines[2]["skew_ms"], 2 * HOUR_MS)
    assert near(lines[3]["skew_ms"], 0)
    assert "ordering uses seq and is unaffected" in lines[0]["message"]
    assert "check NTP" in lines[2]["message"]

    # -- nothing rejected for its timestamp ------------------------------------------------------
    assert metric_total(metrics, "edge_sync_dead_letters_total") == 0
    assert metric_total(metrics, "edge_sync_events_total", outcome="dead_lettered") == 0
    assert metric_total(metrics, "edge_sync_downlinks_total", outcome="failed") == 0
    rejected = [r for r in capture.records if r["level"] in ("WARNING", "ERROR")
                and r.get("component") in ("link", "queue", "downlink", "device-http")
                and "clocks" not in r["message"]]
    assert rejected == [], rejected

    # -- the edge's log: seq order = posting order, whatever the clock said ------------------------
    edge_log = read_log(tmp_path / "edge")
    assert all(e.status is Status.DEPLOYED for e in edge_log)
    points = [e for e in edge_log if e.action == Action.TIMESERIES_UPDATED]
    assert [e.body["values"]["v"] for e in points] == [v for v, _, _ in run.posted]
    created = [e.created_time for e in edge_log]
    assert any(b < a - HOUR_MS for a, b in itertools.pairwise(created)), \
        "created_time never went back: the clock did not jump"
    for e, (_value, ts, offset) in zip(points, run.posted, strict=True):
        if ts is not None:
            assert e.body["ts"] == ts
        else:  # stamped by the edge's clock, jumps included
            assert abs(e.body["ts"] - (time.time_ns() // 1_000_000 + offset)) < 5 * MINUTE_MS
            assert abs(e.created_time - e.body["ts"]) < SKEW_SLACK_MS

    # -- the cloud: everything once, applied in seq order, the stamps as sent --------------------
    applied = cloud.service.events(RK)
    assert [a.seq for a in applied] == [e.seq for e in edge_log]
    assert {a.store_id for a in applied} == {str(app.store.store_id)}
    cloud_points = [a for a in applied if a.action == "TIMESERIES_UPDATED"]
    assert all(a.entity_id == uuid.UUID(run.device_id) for a in cloud_points)
    assert [(a.body["values"]["v"], a.body["ts"]) for a in cloud_points] == \
        [(e.body["values"]["v"], e.body["ts"]) for e in points]
    stamps = [a.body["ts"] for a in cloud_points]
    assert TS_2001 in stamps and TS_2100 in stamps
    assert stamps.index(TS_2100) < stamps.index(TS_2001), "2100 was posted before 2001"
    assert any(b < a for a, b in itertools.pairwise(stamps)), "ts never went back"
    assert cloud.store.shared_attributes(uuid.UUID(run.device_id)) == {"phase": run.phase}
