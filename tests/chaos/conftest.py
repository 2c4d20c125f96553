"""Fixtures of the chaos tests: a reference cloud, the fault proxy in front of it and an edge
linked through the proxy (real processes on loopback), and the exactly-once check of what the
cloud applied against what the devices were told."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_sync.storage.records import Status
from tests.chaos.proxy import FaultProxy
from tests.helpers.agent import Agent, Load, check_log, read_log
from tests.helpers.cloud_proc import CloudProc, check_delivered, link_env, wait_connected, wait_drained

RK = "rk-chaos"
SECRET = "sec-chaos-7c41d9e2"
DEADLINE_S = 60.0  # generous: other suites may load the machine

# The edge, tuned so that faults heal quickly (the settings for fast tests).
FAST_LINK = {
    "EDGE_CLOUD_KEEPALIVE_TIME_S": "1",
    "EDGE_CLOUD_KEEPALIVE_TIMEOUT_S": "1",
    "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
    "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
    "EDGE_CLOUD_RECONNECT_MULTIPLIER": "2.0",
    "EDGE_CLOUD_RECONNECT_JITTER": "0.2",
    "EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "3",
    "EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S": "2",
    "EDGE_CLOUD_RETRY_INTERVAL_MS": "1000",
    "EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS": "1000",  # an unanswered uplink is resent after 1 s
}
# The edge pings every second: let the cloud accept pings twice as often (no ping strikes).
CLOUD_ENV = {"EDGES_RPC_KEEPALIVE_PERMIT_TIME_S": "0.5"}


@dataclass
class Link:
    cloud: CloudProc
    proxy: FaultProxy
    agent: Agent
    env: dict[str, str]  # the edge's environment overrides
    routing_key: str = RK

    def check_exactly_once(self, load: Load) -> int:
        """Call with the load parked (or finished): the edge's log matches what the devices
        were told; once drained, the cloud applied every event of the log exactly once, in
        per-device order: every value that got 200 once, a value without an answer at most
        once, nothing else. Returns the number of events."""
        check_log(self.agent.data_dir, load)
        total = int(wait_drained(self.agent, timeout=DEADLINE_S)["queue"]["total"])
        self.cloud.wait_applied(RK, total, timeout=DEADLINE_S)
        cloud_events = self.cloud.events(RK)
        assert len(cloud_events) == total
        edge_log = read_log(self.agent.data_dir)
        assert [e.seq for e in edge_log if e.status is not Status.DEPLOYED] == []
        grouped = check_delivered(cloud_events, edge_log)
        tracks = {str(t.id): t for t in load.all_tracks}
        assert set(grouped) == set(tracks)
        for device_id, events in grouped.items():
            track = tracks[device_id]
            assert [e["action"] for e in events[:2]] == ["ADDED", "CREDENTIALS_UPDATED"], track.name
            values = [e["body"]["values"]["v"] for e in events[2:]]
            assert values == sorted(set(values)), f"{track.name}: duplicated or out of order"
            missing = sorted(set(track.acked) - set(values))
            assert missing == [], f"{track.name}: acknowledged values not in the cloud: {missing}"
            never = sorted(set(values) - set(track.acked) - set(track.unanswered))
            assert never == [], f"{track.name}: values the edge never accepted: {never}"
        return total


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[Callable[..., Link]]:
    """linked(cloud_env=None, **edge_env) -> Link: cloud, proxy (passing) and edge (FAST_LINK
    plus edge_env), connected. Everything is stopped at teardown."""
    started: list[CloudProc | FaultProxy | Agent] = []

    def make(*, cloud_env: dict[str, str] | None = None, **edge_env: str) -> Link:
        cloud = CloudProc(tmp_path / "cloud", env={**CLOUD_ENV, **(cloud_env or {})})
        started.append(cloud)
        cloud.start()
        cloud.create_edge("chaos-edge", RK, SECRET)
        proxy = FaultProxy(target=("127.0.0.1", cloud.rpc_port))
        started.append(proxy)
        proxy.start()
        env = link_env(cloud, RK, SECRET, **{**FAST_LINK, **edge_env,
                                             "CLOUD_RPC_PORT": str(proxy.port)})
        agent = Agent(tmp_path / "edge", env=env)
        started.append(agent)
        agent.start()
        wait_connected(agent, timeout=DEADLINE_S)
        return Link(cloud, proxy, agent, env)

    yield make
    for p in reversed(started):
        if isinstance(p, FaultProxy):
            p.stop()
        else:
            p.close()
