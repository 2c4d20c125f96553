"""Chaos: kill -9 of a real `edge-sync run` during a QoS 1 publish storm over MQTT.

Twenty devices, each on its own real MQTT client (paho-mqtt, clean session), keep a window of
QoS 1 telemetry publishes in flight (`{"v": n}`, n counting up per device). The agent is killed
with SIGKILL 20 times (150 times, 50 devices with --soak) and started again each time on the same
data folder and ports. The moment of each kill is drawn from a seeded generator (the seed is
printed; CHAOS_SEED replays the draws): a fifth of the kills come while the clients reconnect,
after a random number of CONNACKs; the others once every client is back, after a random number
of PUBACKs (none, up to 100, or up to 3,000). After each kill the clients reconnect and go on
from where they were: they never publish a PUBACKed value again, nor one that was in flight when
the connection dropped (tests/helpers/mqtt_storm.py says why).

Proved, after every kill (only the events that run added are read) and over the whole log at the
end:

- every PUBACKed value is in the event log exactly once; a value published without its PUBACK is
  there at most once; nothing else is there; per device the values are strictly increasing
  (publishing order); the log's counts agree with its events, exactly;
- the events of a run only follow those of earlier runs (no seq reused, none lost);
- on each connection the PUBACKs came in publishing order;
- each kill after PUBACKs hit publishes in flight, and found every client reconnected after the
  restart before it (one connection per client and run, never two);
- after the last restart, linked to a reference cloud (`edge-cloud serve`), the whole log drains
  to it: each event applied once, per device in order, the same values.

SIGKILL ends the process, not the machine: the page cache survives, so this proves that no
PUBACK leaves before its commit and that the store recovers from a process dying anywhere, not
that the commit reached the disk (a power cut is beyond a process test).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    check_delivered,
    link_env,
    wait_connected,
    wait_drained,
)
from tests.helpers.mqtt_storm import LogCursor, Storm, check_storm_log, telemetry_values

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**31))
RK, SECRET = "rk-mqtt-kill9", "sec-mqtt-kill9-4e1a"
MQTT_ON = {"EDGE_MQTT_ENABLED": "true"}
WINDOW = 10  # QoS 1 publishes in flight per client (paho's own limit is 20)
DEADLINE_S = 60.0  # generous: other suites may load the machine


@dataclass(frozen=True)
class Kill:
    """When a kill comes: once `connections` clients have reconnected (fewer than all: the
    others are still connecting), or, with every client back, after `acks` more PUBACKs."""

    connections: int
    acks: int | None

    def __str__(self) -> str:
        return f"{self.acks} PUBACKs" if self.acks is not None else f"{self.connections} CONNACKs"


def next_kill(rng: random.Random, devices: int, most: int) -> Kill:
    """A fifth of the kills while the clients reconnect; the others with every client back,
    after no PUBACK at all (the first commits in flight) a fifth of the time, up to 100 a
    quarter of the time, else up to ``most``."""
    draw = rng.random()
    if draw < 0.2:
        return Kill(rng.randint(0, devices - 1), None)
    if draw < 0.36:
        return Kill(devices, 0)
    if draw < 0.56:
        return Kill(devices, rng.randint(1, 100))
    return Kill(devices, rng.randint(100, most))


@dataclass
class Run:
    """What one run of the agent (start to kill) saw."""

    kill: Kill
    acked: int
    present: int  # published without PUBACK, in the log
    absent: int  # published without PUBACK, not in the log


@pytest.mark.timeout(3600)
def test_kill9_during_qos1_storms_keeps_every_puback(
        tmp_path: Path, soak: bool, procs: Callable[[Any], Any]) -> None:
    kills, devices, most = (150, 50, 6000) if soak else (20, 20, 3000)
    rng = random.Random(SEED)
    print(f"\nmqtt kill -9 storm: seed {SEED} (CHAOS_SEED={SEED} replays the kill moments)")
    started = time.monotonic()
    agent: Agent = procs(Agent(tmp_path / "edge", env=MQTT_ON))
    agent.start()
    storm = Storm(agent, devices, window=WINDOW)
    cursor = LogCursor(agent.data_dir, storm)
    cursor.start_at_current_end()
    runs: list[Run] = []
    before = [0] * devices  # each client's connections before the run (read while held)
    base = 0  # all connections before the run
    storm.start()
    try:
        for k in range(1, kills + 1):
            label = f"run {k} (seed {SEED})"
            kill = next_kill(rng, devices, most)
            storm.wait_connected(base + kill.connections, timeout=DEADLINE_S)
            if kill.acks is not None:
                storm.wait_acks(storm.progress.acks + kill.acks, timeout=DEADLINE_S)
            assert agent.kill9() == -signal.SIGKILL
            storm.hold(timeout=DEADLINE_S)
            acked, present, absent = cursor.check_run(label)
            back = [c.connections - b for c, b in zip(storm.clients, before, strict=True)]
            assert set(back) <= {0, 1}, f"{label}: a client connected twice: {back}"
            if kill.acks is not None:
                assert back == [1] * devices, f"{label}: not every client reconnected: {back}"
                assert acked >= kill.acks, f"{label}: {acked} acknowledged"
                assert present + absent > 0, f"{label}: the kill hit no publish in flight"
            else:
                assert sum(back) >= kill.connections, label
            runs.append(Run(kill, acked, present, absent))
            before = [c.connections for c in storm.clients]
            base = storm.progress.connected
            storm.release()
            agent.start()
        # the last run: no kill; some more of the storm, then every client drains and leaves
        storm.wait_connected(base + devices, timeout=DEADLINE_S)
        storm.wait_acks(storm.progress.acks + devices * WINDOW * 5, timeout=DEADLINE_S)
        storm.stop(timeout=DEADLINE_S)
    finally:
        for client in storm.clients:
            client.stop()
    storm_s = time.monotonic() - started

    acked, present, absent = cursor.check_run(f"the last run (seed {SEED})")
    assert (present, absent) == (0, 0), "a client stopped with publishes unacknowledged"
    assert acked >= devices * WINDOW * 5
    assert [c.connections - b for c, b in zip(storm.clients, before, strict=True)] == \
        [1] * devices
    assert all(c.connections == c.ended for c in storm.clients)
    events = check_storm_log(agent.data_dir, storm)
    assert len(runs) == kills
    assert sum(r.acked for r in runs) + acked == storm.acked_total()
    assert sum(r.present + r.absent for r in runs) == storm.maybe_total()
    stored_unacked = sum(r.present for r in runs)
    assert sum(len(v) for v in telemetry_values(events).values()) == \
        storm.acked_total() + stored_unacked

    # the log drains to a cloud: the agent linked to one after the last restart
    assert agent.terminate() == 0
    cloud: CloudProc = procs(CloudProc(tmp_path / "cloud"))
    cloud.start()
    cloud.create_edge("edge-mqtt-kill9", RK, SECRET)
    agent.start(env=link_env(cloud, RK, SECRET, EDGE_CLOUD_BATCH_SIZE="1000",
                             EDGE_CLOUD_BATCH_TIMEOUT_MS="50"))
    wait_connected(agent, timeout=DEADLINE_S)
    total = int(wait_drained(agent, timeout=DEADLINE_S * 2)["queue"]["total"])
    assert total == len(events)
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    cloud_events = cloud.events(RK)
    assert len(cloud_events) == total
    grouped = check_delivered(cloud_events, read_log(agent.data_dir))
    on_edge = telemetry_values(events)
    for client in storm.clients:
        in_cloud = [e["body"]["values"]["v"] for e in grouped[str(client.device_id)][2:]]
        assert in_cloud == on_edge[client.device_id], client.device
    assert agent.terminate() == 0
    assert cloud.terminate() == 0
    print(f"mqtt kill -9 storm (seed {SEED}): {kills} kills of a {devices}-client storm in "
          f"{storm_s:.0f}s, {time.monotonic() - started:.0f}s with the drain; "
          f"{storm.acked_total()} values PUBACKed, {storm.maybe_total()} in flight at a kill "
          f"({stored_unacked} of them stored); {total} events applied by the cloud; kills "
          f"after {', '.join(str(r.kill) for r in runs)}")
