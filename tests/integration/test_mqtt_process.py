"""The device MQTT API of a real `edge-sync run` process, with real MQTT clients (paho-mqtt).

- QoS 1 telemetry from a device is acknowledged and in the log exactly once, in order; a
  connection with an unknown token is refused with CONNACK 5 and logged in one line that
  names neither the token nor anything but the peer; SIGTERM with a subscribed client
  connected stops the agent cleanly (exit 0).
- SIGKILL during QoS 1 publish storms from several clients, several times: after each restart
  every PUBACKed value is in the log exactly once, and per device the values are strictly
  increasing (a publish without its PUBACK is there at most once; the clients never resend).
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.storage.records import Action, StoredEvent
from tests.helpers.agent import Agent, read_log
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.wait import wait_until

DEADLINE_S = 20.0
MQTT_ON = {"EDGE_MQTT_ENABLED": "true"}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(tmp_path / "agent", env=MQTT_ON) as a:
        yield a


def telemetry_values(events: list[StoredEvent], device_id: str) -> list[int]:
    return [e.body["values"]["v"] for e in events
            if str(e.entity_id) == device_id and e.action == Action.TIMESERIES_UPDATED]


def test_run_acknowledges_qos1_after_commit_and_refuses_unknown_tokens(agent: Agent) -> None:
    agent.start()
    device_id, token = agent.create_device("mqtt-proc-1")
    with MqttDevice(agent.mqtt_port, token) as dev:
        assert dev.connect() == 0
        mids = [dev.publish(TELEMETRY, {"v": i}).mid for i in range(100)]
        wait_until(lambda: len(dev.acked_ids()) == 100, timeout=DEADLINE_S, what="100 PUBACKs")
        assert dev.acked_ids() == mids
    secret = f"wrong-{uuid.uuid4().hex}"
    with MqttDevice(agent.mqtt_port, secret) as intruder:
        reason = intruder.connect()
        assert reason is not None and reason.getName() == "Not authorized"
    with MqttDevice(agent.mqtt_port, token) as waiting:  # connected, subscribed, at SIGTERM
        assert waiting.connect() == 0
        assert waiting.subscribe("v1/devices/me/rpc/request/+") == [0]
        assert agent.terminate() == 0
        wait_until(waiting.disconnected.is_set, timeout=DEADLINE_S, what="client disconnected")
    assert telemetry_values(read_log(agent.data_dir), device_id) == list(range(100))
    refusals = [r for r in agent.log_records() if "CONNACK 5" in r.get("message", "")]
    assert len(refusals) == 1
    assert refusals[0]["device"] == "unknown"
    assert secret not in agent.stderr_text()
    assert token not in agent.stderr_text()


def test_sigkill_during_qos1_storms_loses_no_acknowledged_publish(agent: Agent) -> None:
    cycles, clients, burst = 5, 5, 400
    agent.start()
    devices = [agent.create_device(f"mqtt-storm-{i}") for i in range(clients)]
    acked: dict[str, list[int]] = {d: [] for d, _ in devices}
    published: dict[str, int] = {d: 0 for d, _ in devices}
    for cycle in range(cycles):
        conns: list[tuple[str, MqttDevice, dict[int, int]]] = []
        for device_id, token in devices:
            dev = MqttDevice(agent.mqtt_port, token)
            assert dev.connect() == 0
            conns.append((device_id, dev, {}))
        for device_id, dev, by_mid in conns:
            start = published[device_id]
            for v in range(start, start + burst):
                by_mid[dev.publish(TELEMETRY, {"v": v}).mid] = v
            published[device_id] = start + burst
        # kill once every client has had some acknowledged (a moment inside the storm)
        clients_now = [d for _, d, _ in conns]
        wait_until(lambda: all(len(d.acked_ids()) >= 20 for d in clients_now),  # noqa: B023
                   timeout=DEADLINE_S, what="PUBACKs on every connection")
        assert agent.kill9() == -signal.SIGKILL
        for device_id, dev, by_mid in conns:
            wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="client disconnected")
            dev.close()
            acked[device_id] += [by_mid[mid] for mid in dev.acked_ids()]
        assert any(len(d.acked_ids()) < burst for _, d, _ in conns), "killed after the storm"
        events = read_log(agent.data_dir)
        for device_id, _ in devices:
            logged = telemetry_values(events, device_id)
            assert logged == sorted(set(logged)), f"cycle {cycle}: duplicated or out of order"
            assert set(acked[device_id]) <= set(logged), f"cycle {cycle}: PUBACKed but lost"
            assert set(logged) <= set(range(published[device_id])), f"cycle {cycle}: never sent"
        agent.start()
    assert sum(len(v) for v in acked.values()) >= cycles * clients * 20
