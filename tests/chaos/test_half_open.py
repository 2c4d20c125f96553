"""Chaos scenario 3: a half-open link and connections reset mid-message.

Real processes on loopback: the reference cloud (`edge-cloud serve`), the fault proxy
(tests/chaos/proxy.py) in front of it, and `edge-sync run` linked through the proxy, with the
fast settings of conftest.FAST_LINK (keepalive 1 s + 1 s). Devices post while the faults
happen. Each fault must be detected, the link must come back by itself, and the cloud must end
up with every point that got 200 exactly once, in per-device order (Link.check_exactly_once).
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any

import pytest

from tests.helpers.agent import Agent, Load
from tests.helpers.cloud_proc import edge_status, link_state, wait_connected, wait_drained
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

KEEPALIVE_TIME_S = 1.0
KEEPALIVE_TIMEOUT_S = 1.0
MARGIN_S = 1.0  # the link's 50 ms tick, scheduling on a loaded machine
DEADLINE_S = 60.0


def log_time(record: dict[str, Any]) -> float:
    """A log record's timestamp as time.time() (ISO-8601 UTC with milliseconds)."""
    return datetime.fromisoformat(record["ts"]).timestamp()


def transitions(agent: Agent, old: str, new: str) -> list[dict[str, Any]]:
    """The link's "link OLD -> NEW" log records of the current run, in order."""
    return [r for r in agent.log_records()
            if r.get("component") == "link" and r.get("old_state") == old and r.get("state") == new]


def metric(agent: Agent, name: str) -> int:
    return int(edge_status(agent)["metrics"][name])


def test_half_open_idle_link_detected_within_keepalive(linked):
    link = linked()
    agent, proxy = link.agent, link.proxy
    wait_drained(agent, timeout=DEADLINE_S)  # idle: only keepalive can notice anything
    seen = len(transitions(agent, "CONNECTED", "BACKOFF"))
    bound = KEEPALIVE_TIME_S + KEEPALIVE_TIMEOUT_S + MARGIN_S

    started = time.time()
    proxy.blackhole()
    wait_until(lambda: len(transitions(agent, "CONNECTED", "BACKOFF")) > seen, timeout=bound + 5.0,
               what=f"the half-open link detected (keepalive {KEEPALIVE_TIME_S:.0f}s + "
               f"{KEEPALIVE_TIMEOUT_S:.0f}s)")
    record = transitions(agent, "CONNECTED", "BACKOFF")[seen]
    detected_after = log_time(record) - started
    assert detected_after <= bound, (detected_after, record["message"])

    proxy.pass_through()
    wait_connected(agent, timeout=DEADLINE_S)


def test_half_open_with_data_flowing_recovers_exactly_once(linked, soak):
    """The proxy swallows everything (both ways) while the devices keep posting; the edge
    notices (keepalive, or its unanswered uplinks: 3 resends of 1 s here), keeps accepting,
    reconnects once the link passes again, and the cloud gets everything exactly once, even
    though the old connection's held bytes reach the cloud when the partition heals."""
    cycles = 10 if soak else 2
    link = linked(EDGE_CLOUD_RETRY_MAX_RETRIES="3")
    agent, proxy = link.agent, link.proxy
    load = Load(agent, clients=4, devices_per_client=3)
    try:
        load.go()
        for _ in range(cycles):
            load.wait_acked(load.acked_total() + 200, timeout=DEADLINE_S)
            downs = len(transitions(agent, "CONNECTED", "BACKOFF"))
            accepted = metric(agent, "edge_sync_link_connects_accepted_total")
            proxy.blackhole()
            wait_until(lambda downs=downs: len(transitions(agent, "CONNECTED", "BACKOFF")) > downs,
                       timeout=DEADLINE_S, what="the half-open link detected")
            # Accepted means durable: the devices are still answered while the link is down.
            load.wait_acked(load.acked_total() + 100, timeout=DEADLINE_S)
            assert link_state(agent) != "CONNECTED"
            proxy.pass_through()
            wait_until(lambda n=accepted: metric(agent, "edge_sync_link_connects_accepted_total") > n,
                       timeout=DEADLINE_S, what="a new stream accepted")
        wait_connected(agent, timeout=DEADLINE_S)
        load.wait_acked(load.acked_total() + 200, timeout=DEADLINE_S)
        load.pause_and_park()
    finally:
        load.finish()
    assert load.refused() == []
    assert all(t.unanswered == [] for t in load.all_tracks)
    link.check_exactly_once(load)
    assert proxy.resets == 0  # only the partition: nothing was reset by the proxy


def test_resets_mid_message_lose_and_duplicate_nothing(linked, soak):
    """Connections are reset (RST) after a random number of bytes in one direction, while
    points flow: edge -> cloud cuts an uplink message in the middle; cloud -> edge cuts the
    answers, so the cloud has applied messages whose acknowledgement never arrives and the edge
    sends them again. Latency with jitter keeps several messages on the wire."""
    resets = 40 if soak else 6
    rng = random.Random(20241127)
    link = linked(cloud_env={"CLOUD_LOG_LEVEL": "DEBUG"})
    agent, proxy, cloud = link.agent, link.proxy, link.cloud
    proxy.latency(10, 5)
    load = Load(agent, clients=4, devices_per_client=3)
    try:
        load.go()
        for i in range(resets):
            direction = "up" if i % 2 == 0 else "down"
            n_bytes = rng.randint(1, 6000) if direction == "up" else rng.randint(1, 400)
            wait_connected(agent, timeout=DEADLINE_S)
            applied = cloud.applied_count(link.routing_key)
            cloud.wait_applied(link.routing_key, applied + 100, timeout=DEADLINE_S)  # flowing
            accepted = metric(agent, "edge_sync_link_connects_accepted_total")
            proxy.reset_after(n_bytes, direction)
            wait_until(lambda n=i + 1: proxy.resets == n, timeout=DEADLINE_S,
                       what=f"reset {i + 1} after {n_bytes} bytes {direction}")
            wait_until(lambda n=accepted: metric(agent, "edge_sync_link_connects_accepted_total") > n,
                       timeout=DEADLINE_S, what="the edge reconnected")
        load.wait_acked(load.acked_total() + 200, timeout=DEADLINE_S)
        load.pause_and_park()
    finally:
        load.finish()
    assert load.refused() == []
    assert all(t.unanswered == [] for t in load.all_tracks)
    total = link.check_exactly_once(load)
    assert proxy.resets == resets
    # The faults did what they are for: events were sent again after the resets, and the
    # cloud recognised some of them as already applied (an acknowledgement lost on the way).
    assert metric(agent, "edge_sync_uplink_events_sent_total") > total
    skipped = [r for r in cloud.log_records() if r.get("duplicates")]
    assert skipped, "no resend of an already applied event reached the cloud"
