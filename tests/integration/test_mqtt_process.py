"""The device MQTT API of a real `edge-sync run` process, with real MQTT clients (paho-mqtt).

- QoS 1 telemetry from a device is acknowledged and in the log exactly once, in order; a
  connection with an unknown token is refused with CONNACK 5 and logged in one line that
  names neither the token nor anything but the peer; SIGTERM with a subscribed client
  connected stops the agent cleanly (exit 0).

SIGKILL during QoS 1 publish storms is the chaos suite's (tests/chaos/test_mqtt_kill9.py).
"""

from __future__ import annotations

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

