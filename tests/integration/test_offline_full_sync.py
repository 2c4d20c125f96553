"""A long outage asks for a full sync, a short one for an incremental sync. A whole EdgeApp on
tmp_path runs on an injected clock whose wall time the test moves forward during each outage
(its monotonic time is the real one, so timeouts and backoff run as usual), linked over gRPC on
loopback to the scripted fake cloud (tests/helpers/fake_peer.py), which records each
SyncRequestMsg with its fullSync flag. The outages: the fake ends the stream and refuses
connects while the clock moves 23 h (incremental), then 25 h (full). A link that stays
connected without traffic is in contact all along: 20 h of quiet, then 10 h offline asks for
an incremental sync (counted from the loss, not from the last downlink 30 h before); 20 h of
quiet, a stop, and a restart 5 h later too (the stop is recorded on disk); a restart 25 h
after a stop asks for a full sync. Each decision's reason is in the link's log line, and the
link is degraded while it is down (under health.link_down_warning_s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.link.state import edge_version
from edge_sync.proto import edge_pb2
from edge_sync.storage.link_contact import LinkContact
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.wait import wait_until

DEADLINE_S = 30.0
HOUR_MS = 3_600_000
ROUTING_KEY, SECRET = "rk-offline", "secret-offline"


class ShiftedClock:
    """Wall time = the real time plus an offset the test moves; monotonic time untouched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset_ms = 0

    def shift(self, hours: float) -> None:
        with self._lock:
            self._offset_ms += int(hours * HOUR_MS)

    def now_ms(self) -> int:
        with self._lock:
            return time.time_ns() // 1_000_000 + self._offset_ms

    def monotonic(self) -> float:
        return time.monotonic()


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = ShiftedClock()
        self.fake = FakeCloud(uplinks="ack").start()
        self.app: EdgeApp | None = None

    def start(self) -> EdgeApp:
        env = {
            "EDGE_DATA_DIR": str(self.tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_MQTT_ENABLED": "false",
            "CLOUD_ROUTING_KEY": ROUTING_KEY, "CLOUD_ROUTING_SECRET": SECRET,
            "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(self.fake.port),
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
            "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "300", "EDGE_CLOUD_RECONNECT_JITTER": "0",
            # the circuit breaker must not hold the connect back after the refusals
            "EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "1000",
        }  # cloud.sync.full_after_offline_hours: the default, 24
        self.app = EdgeApp(load_edge_config(env=env), clock=self.clock).start()
        return self.app

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop(timeout=30)
            self.app = None

    def state(self) -> str:
        assert self.app is not None
        return str(self.app.link_board.value["state"])

    def synced(self, n: int) -> bool | None:
        """The fullSync flag of the n-th sync request (1-based) once it came and the link is
        CONNECTED after it."""
        self.fake.wait_for(lambda: len(self.fake.sync_requests) >= n, timeout=DEADLINE_S,
                           what=f"sync request {n}")
        wait_until(lambda: self.state() == "CONNECTED", timeout=DEADLINE_S,
                   what=f"CONNECTED after sync {n}")
        return self.fake.sync_requests[n - 1][1]

    def outage(self, hours: float) -> None:
        """The cloud goes away (its stream ends, connects are refused) for ``hours`` on the
        edge's clock, then comes back."""
        self.fake.response_code = edge_pb2.SERVER_UNAVAILABLE
        self.fake.drop_streams()
        # BACKOFF is published after the loss is recorded; then a refused connect at least
        wait_until(lambda: self.state() == "BACKOFF", timeout=DEADLINE_S, what="the link down")
        refused = len(self.fake.connects)
        self.fake.wait_for(lambda: len(self.fake.connects) > refused, what="a refused connect")
        assert self.app is not None
        link = self.app.admin_api.status()["health_detail"]["link"]
        assert (link["level"], link["warning_over_s"]) == ("degraded", 300.0)
        assert 0 <= link["down_for_s"] < 300
        self.clock.shift(hours)
        self.fake.response_code = edge_pb2.ACCEPTED

    def last_contact(self) -> int | None:
        assert self.app is not None
        with self.app.store.read() as txn:
            return LinkContact(self.app.store).last_ms(txn)

    def close(self) -> None:
        self.stop()
        self.fake.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def link_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO",
                      filter=lambda r: r["extra"].get("component") == "link")
    yield lines
    logger.remove(sink)


def sync_reasons(lines: list[str]) -> list[str]:
    """What each SYNCING transition logged: "<full|incremental> sync requested: <why>"."""
    return [line.split("; ", 1)[1] for line in list(lines)
            if line.startswith("link CONNECTING -> SYNCING")]


def test_an_outage_over_a_day_asks_for_a_full_sync_and_a_shorter_one_does_not(
        rig: Rig, link_logs: list[str]) -> None:
    before = rig.clock.now_ms()
    rig.start()
    assert rig.synced(1) is True  # the first connect
    contact = rig.last_contact()  # recorded with the sync's completion
    assert contact is not None and before <= contact <= rig.clock.now_ms()

    rig.outage(23)
    assert rig.synced(2) is False
    rig.outage(25)
    assert rig.synced(3) is True

    rig.clock.shift(20)  # connected, nothing sent either way
    rig.outage(10)
    assert rig.synced(4) is False

    rig.clock.shift(20)
    rig.stop()  # in contact until it stops: recorded
    rig.clock.shift(5)
    rig.start()
    assert rig.synced(5) is False
    rig.stop()
    rig.clock.shift(25)
    rig.start()
    assert rig.synced(6) is True

    version = edge_version()
    assert sync_reasons(link_logs) == [
        "full sync requested: first connect (no edge identity stored)",
        f"incremental sync requested: the last full sync completed at version {version}; "
        "offline for 23.0 h (at most 24 h)",
        "full sync requested: offline for 25.0 h (more than 24 h)",
        f"incremental sync requested: the last full sync completed at version {version}; "
        "offline for 10.0 h (at most 24 h)",
        f"incremental sync requested: the last full sync completed at version {version}; "
        "offline for 5.0 h (at most 24 h)",
        "full sync requested: offline for 25.0 h (more than 24 h)",
    ]
