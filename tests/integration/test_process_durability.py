"""Durability of a real `edge-sync run` process: SIGKILL at random moments, and SIGTERM.

Four client threads each own three devices and post telemetry ``{"v": n}`` sequentially, n
counting up per device, over keep-alive connections. Every value that got a 200 is recorded, in
order; a request that got no answer (the process was killed under it) is recorded as unanswered.
After each restart the LMDB log is read directly (read-only) while the clients are parked, and
`check_log` asserts:

- every acknowledged value is there exactly once, and per device the values are strictly
  increasing (so unanswered ones appear at most once and never out of order);
- nothing is there that was not posted;
- the whole log decodes, seqs are strictly increasing, an event once seen keeps its seq and id
  (seqs are never reused), and new events only ever get seqs above the previous maximum.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import Agent, History, Load, check_log, read_log

DEFAULT_CYCLES = 12
SOAK_CYCLES = 100
SEED = 20240501

pytestmark = pytest.mark.slow


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(tmp_path / "agent") as a:
        yield a


def test_sigkill_at_random_moments_loses_no_acknowledged_event(
    agent: Agent, soak: bool
) -> None:
    cycles = SOAK_CYCLES if soak else DEFAULT_CYCLES
    rng = random.Random(SEED)
    agent.start()
    load = Load(agent)
    history = History()
    check_log(agent.data_dir, load, history)
    cycles_with_progress = 0
    try:
        for _ in range(cycles):
            acked_before = load.acked_total()
            load.go()
            time.sleep(rng.uniform(0.05, 0.5))  # a random moment, not a wait for a condition
            load.gate.close()
            assert agent.kill9() == -signal.SIGKILL
            load.pause_and_park()
            agent.start()
            check_log(agent.data_dir, load, history)
            if load.acked_total() > acked_before:
                cycles_with_progress += 1
    finally:
        load.finish()
    assert load.refused() == [], "requests answered with something other than 200"
    assert cycles_with_progress >= cycles // 2, (cycles_with_progress, cycles)
    # The last start serves on the store the kills left behind, and stops cleanly.
    device = load.all_tracks[0]
    assert agent.post_telemetry(device.token, {"v": device.next_value}) == 200
    device.acked.append(device.next_value)
    device.next_value += 1
    assert agent.terminate() == 0
    check_log(agent.data_dir, load, history)


def test_sigterm_exits_0_with_everything_acknowledged_on_disk(agent: Agent) -> None:
    agent.start()
    device_id, token = agent.create_device("quiet")
    for v in range(20):
        assert agent.post_telemetry(token, {"v": v}) == 200
    assert agent.terminate() == 0
    records = agent.log_records()
    assert next(r for r in records if r["message"] == "stop requested")["signal"] == "SIGTERM"
    assert records[-1]["message"] == "edge-sync stopped"
    assert [r for r in records if r["level"] in ("WARNING", "ERROR", "CRITICAL")] == []

    def values() -> list[int]:
        events = [e for e in read_log(agent.data_dir) if e.entity_id == uuid.UUID(device_id)]
        return [e.body["values"]["v"] for e in events[2:]]

    assert values() == list(range(20))
    # The store it left opens cleanly for the next run.
    agent.start()
    assert agent.post_telemetry(token, {"v": 20}) == 200
    assert agent.terminate() == 0
    assert values() == list(range(21))


def test_sigterm_while_clients_post_acknowledges_nothing_that_is_not_on_disk(
    agent: Agent,
) -> None:
    agent.start()
    load = Load(agent)
    try:
        load.go()
        load.wait_acked(200)
        agent.signal(signal.SIGTERM)  # the clients keep posting into the shutdown
        assert agent.wait_exit() == 0
        load.pause_and_park()
    finally:
        load.finish()
    assert load.refused() == [], "requests answered with something other than 200"
    check_log(agent.data_dir, load)
    assert agent.log_records()[-1]["message"] == "edge-sync stopped"


def test_second_agent_on_the_same_store_never_acknowledges_what_it_does_not_store(
    tmp_path: Path,
) -> None:
    with Agent(tmp_path / "a") as first, \
            Agent(tmp_path / "b", data_dir=tmp_path / "a" / "data") as second:
        first.start()
        device_id, token = first.create_device("shared")
        second.spawn()
        acked: list[int] = []
        if second.wait_ready_or_exit() is not None:
            assert second.proc is not None and second.proc.returncode == 4, second.stderr_text()
        else:
            for v in range(0, 10, 2):
                for agent, value in ((first, v), (second, v + 1)):
                    if agent.post_telemetry(token, {"v": value}) == 200:
                        acked.append(value)
        assert first.terminate() == 0
        if second.running:
            assert second.terminate() == 0
    events = [e for e in read_log(tmp_path / "a" / "data") if e.entity_id == uuid.UUID(device_id)]
    stored = [e.body["values"]["v"] for e in events[2:]]
    assert sorted(set(acked) - set(stored)) == []
