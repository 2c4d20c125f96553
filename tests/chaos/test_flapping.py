"""Chaos scenario 2: a flapping link (up 30 s / down 10 s; up 3 s / down 1 s in the bounded
run) while data flows, and the circuit breaker under a storm of failed connection attempts.

Real processes on loopback: the reference cloud, the fault proxy (tests/chaos/proxy.py) in
front of it, and `edge-sync run` linked through the proxy with conftest.FAST_LINK (reconnect
100 ms .. 1 s, jitter 0.2; breaker: 3 failures, open 2 s). Checked: the sync completes with
every point that got 200 exactly once at the cloud, in per-device order; the edge's connection
attempts stay within what its backoff schedule allows over the run (the bound is computed from
the configured interval, maximum, multiplier, jitter and stable_after_s); the breaker opens
under the storm, stops attempts for open_s, lets one half-open probe through, and closes once
a probe succeeds.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

import pytest

from tests.helpers.agent import Agent, Load
from tests.helpers.cloud_proc import edge_status, wait_connected
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0
OPEN = "circuit breaker open"
HALF_OPEN = "circuit breaker half-open"
CLOSED = "circuit breaker closed"


def max_attempts(window_s: float, env: dict[str, str]) -> int:
    """The most connection attempts the edge's backoff allows within window_s.

    The edge attempts at once when it starts; after each failure it waits at least
    base * (1 - jitter), base = min(max, interval * multiplier ** failures); the failure count
    goes back to 0 only after a connection that stayed up stable_after_s. The breaker only adds
    waiting, so it is left out. Worst case over both choices (fail again, or stay up
    stable_after_s and reset), by dynamic programming on (attempts made, failure count)."""
    initial = float(env["EDGE_CLOUD_RECONNECT_INTERVAL_MS"]) / 1000
    top = float(env["EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS"]) / 1000
    mult = float(env["EDGE_CLOUD_RECONNECT_MULTIPLIER"])
    jitter = float(env["EDGE_CLOUD_RECONNECT_JITTER"])
    stable = float(env.get("EDGE_CLOUD_RECONNECT_STABLE_AFTER_S", "30"))
    cap = 0  # from this failure count on, every delay is the maximum
    while initial * mult ** cap < top and mult > 1:
        cap += 1

    def least_delay(failures: int) -> float:
        return min(top, initial * mult ** failures) * (1 - jitter)

    attempts, earliest = 1, {0: 0.0}  # failure count -> earliest time of the latest attempt
    while True:
        after: dict[int, float] = {}
        for failures, at in earliest.items():
            for nxt, when in ((min(failures + 1, cap), at + least_delay(failures)),
                              (1, at + stable + least_delay(0))):
                if when <= window_s and when < after.get(nxt, math.inf):
                    after[nxt] = when
        if not after:
            return attempts
        attempts, earliest = attempts + 1, after


def test_max_attempts_bound():
    env = {"EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100", "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
           "EDGE_CLOUD_RECONNECT_MULTIPLIER": "2", "EDGE_CLOUD_RECONNECT_JITTER": "0.2",
           "EDGE_CLOUD_RECONNECT_STABLE_AFTER_S": "1000"}
    # least delays 0.08, 0.16, 0.32, 0.64, then 0.8: attempts at 0, .08, .24, .56, 1.2, 2.0, ...
    assert [max_attempts(w, env) for w in (0, 0.07, 0.09, 1.19, 1.21, 2.01, 10.01)] == \
        [1, 1, 2, 4, 5, 6, 16]
    # A reset is worth it only when the connection needs to stay up briefly.
    assert max_attempts(10.0, {**env, "EDGE_CLOUD_RECONNECT_STABLE_AFTER_S": "0.1"}) > 16


def log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


def link_records(agent: Agent) -> list[dict[str, Any]]:
    return [r for r in agent.log_records() if r.get("component") == "link"]


def breaker_records(agent: Agent, what: str) -> list[dict[str, Any]]:
    return [r for r in link_records(agent) if r["message"].startswith(what)]


def attempts_logged(agent: Agent) -> list[dict[str, Any]]:
    """The "link BACKOFF -> CONNECTING: attempt N" records (every attempt after the first)."""
    return [r for r in link_records(agent)
            if r.get("old_state") == "BACKOFF" and r.get("state") == "CONNECTING"]


def metrics(agent: Agent) -> dict[str, int]:
    return {k: int(v) for k, v in edge_status(agent)["metrics"].items()
            if isinstance(v, int | float)}


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_flapping_link_sync_completes_exactly_once(linked, soak, mode):
    """The proxy flaps (mode "reset": every connection reset and new ones refused while down;
    "blackhole": everything held while down) as devices post. The backoff resets after 2 s up,
    so every down phase meets a fresh, fast storm of attempts."""
    up_s, down_s, cycles = (30.0, 10.0, 6) if soak else (3.0, 1.0, 4)
    window_start = time.time()
    link = linked(EDGE_CLOUD_RECONNECT_STABLE_AFTER_S="2")
    agent, proxy = link.agent, link.proxy
    load = Load(agent, clients=4, devices_per_client=3)
    try:
        load.go()
        load.wait_acked(100, timeout=DEADLINE_S)
        proxy.flap(up_s, down_s, mode=mode)
        wait_until(lambda: proxy.flaps >= cycles and proxy.mode == "pass",
                   timeout=cycles * (up_s + down_s) + DEADLINE_S, what=f"{cycles} flaps")
        proxy.pass_through()  # ends the schedule in an up phase
        assert proxy.flaps == cycles
        wait_connected(agent, timeout=DEADLINE_S)
        load.wait_acked(load.acked_total() + 200, timeout=DEADLINE_S)
        load.pause_and_park()
    finally:
        load.finish()
    assert load.refused() == []
    assert all(t.unanswered == [] for t in load.all_tracks)
    link.check_exactly_once(load)

    m = metrics(agent)
    window = time.time() - window_start
    bound = max_attempts(window, link.env)
    assert m["edge_sync_link_connect_attempts_total"] <= bound, \
        f"{m['edge_sync_link_connect_attempts_total']} attempts in {window:.1f}s, the backoff allows {bound}"
    if mode == "reset":
        # Every down phase broke the stream and the edge came back each time.
        assert m["edge_sync_link_connects_accepted_total"] >= cycles + 1, m
        # The storm opened the breaker; a half-open probe closed it again every time.
        opened, closed = breaker_records(agent, OPEN), breaker_records(agent, CLOSED)
        assert opened, "the breaker never opened under the storm"
        assert m["edge_sync_link_breaker_opened_total"] >= 1
        assert closed and log_time(closed[-1]) >= log_time(opened[-1])
        assert edge_status(agent)["link"]["breaker"] == "CLOSED"


def test_breaker_opens_under_a_failure_storm_and_closes_after_a_probe(linked):
    link = linked()
    agent, proxy = link.agent, link.proxy
    threshold = int(link.env["EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD"])
    open_s = float(link.env["EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S"])
    load = Load(agent, clients=2, devices_per_client=2)
    try:
        load.go()
        load.wait_acked(50, timeout=DEADLINE_S)
        refused_at = time.time()
        proxy.refuse(existing="reset")
        # The storm opens the breaker; its half-open probe fails and opens it again.
        wait_until(lambda: len(breaker_records(agent, OPEN)) >= 2, timeout=DEADLINE_S,
                   what="the breaker opened twice")
        proxy.pass_through()
        wait_until(lambda: breaker_records(agent, CLOSED), timeout=DEADLINE_S, what="the breaker closed")
        wait_connected(agent, timeout=DEADLINE_S)
        load.wait_acked(load.acked_total() + 100, timeout=DEADLINE_S)
        load.pause_and_park()
    finally:
        load.finish()
    link.check_exactly_once(load)

    records = [r for r in link_records(agent) if log_time(r) >= refused_at - 0.01]
    opened = [r for r in records if r["message"].startswith(OPEN)]
    attempts = [r for r in records if r.get("old_state") == "BACKOFF" and r.get("state") == "CONNECTING"]
    # It opened after `threshold` failed attempts (the reset stream itself was accepted, so
    # it does not count) ...
    assert len([a for a in attempts if log_time(a) <= log_time(opened[0])]) == threshold
    assert opened[0]["failures"] == threshold
    # ... and while open, no attempt: the next one is the half-open probe, open_s later
    # (log times have millisecond resolution).
    for o in opened:
        later = records[records.index(o) + 1:]  # in log order (times may be equal)
        first = next(i for i, r in enumerate(later) if r in attempts)
        assert log_time(later[first]) >= log_time(o) + open_s - 0.002, (o, later[first])
        assert first >= 1 and later[first - 1]["message"].startswith(HALF_OPEN), later[:first + 1]
    # The probe after the link came back was accepted and closed the breaker.
    closed = breaker_records(agent, CLOSED)
    assert len(closed) == 1 and log_time(closed[0]) > log_time(opened[-1])
    probes = [r for r in records if r["message"].startswith(HALF_OPEN)]
    assert len(probes) == len(opened)  # one probe per opening: the last one succeeded
    st = edge_status(agent)
    assert (st["link"]["state"], st["link"]["breaker"]) == ("CONNECTED", "CLOSED")
    assert st["metrics"]["edge_sync_link_breaker_opened_total"] == len(opened)


def test_no_tcp_connection_reaches_the_cloud_while_the_breaker_is_open(linked):
    """The proxy counts the TCP connections the edge opens: none while the breaker is open,
    and no more over the outage than the backoff schedule allows."""
    link = linked(EDGE_CLOUD_RECONNECT_INTERVAL_MS="500", EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="4000",
                  EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S="3", EDGE_CLOUD_RECONNECT_STABLE_AFTER_S="30")
    agent, proxy = link.agent, link.proxy
    refused_at = time.time()
    proxy.refuse(existing="reset")
    wait_until(lambda: breaker_records(agent, HALF_OPEN), timeout=DEADLINE_S,
               what="the breaker's first half-open probe")
    opened_at = log_time(breaker_records(agent, OPEN)[0])
    probe_at = log_time(breaker_records(agent, HALF_OPEN)[0])
    during_open = [round(t - opened_at, 2) for t in proxy.accept_times
                   if opened_at + 0.05 < t < probe_at - 0.05]
    assert during_open == [], (f"{len(during_open)} TCP connections reached the cloud while the "
                               f"breaker was open (s after opening: {during_open})")
    outage = [t for t in proxy.accept_times if refused_at <= t <= probe_at + 0.05]
    assert len(outage) <= max_attempts(probe_at + 0.05 - refused_at, link.env)
    proxy.pass_through()
    wait_connected(agent, timeout=DEADLINE_S)
