"""The device MQTT API of a real `edge-sync run` process, as it starts by default, with real
clients (paho-mqtt).

- No MQTT setting at all: MQTT is served (on the free port the test gives it), beside a TLS
  listener turned on with a test certificate; publishes over both are acknowledged and stored.
- The same device and client id connecting again closes the older connection, in one WARNING
  line (and no other) naming the device, the client id and both peers, and neither token nor
  password; a kept session does not survive a
  restart of the agent (session present 0 after it).
- A taken MQTT port stops the start with exit code 1 and a last line that says which port and
  how to move or turn off the listener; with EDGE_MQTT_ENABLED=false the agent starts.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import Agent
from tests.helpers.mqtt_app import publish_once, values
from tests.helpers.mqtt_device import MqttDevice, Tls
from tests.helpers.tls import make_pki
from tests.helpers.wait import wait_until

DEADLINE_S = 20.0


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(tmp_path / "agent") as a:
        yield a


def test_run_serves_mqtt_by_default_and_tls_beside_it(agent: Agent, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", host="localhost", name="server")
    agent.start({"EDGE_MQTT_TLS_ENABLED": "true", "EDGE_MQTT_TLS_CERT": str(pki.server_cert),
                 "EDGE_MQTT_TLS_KEY": str(pki.server_key)})
    device_id, token = agent.create_device("run-mqtt-1")
    with MqttDevice(agent.mqtt_port, token) as plain:
        assert plain.connect() == 0
        publish_once(plain, 1)
    with MqttDevice(agent.mqtt_tls_port, token, host="localhost", tls=Tls(pki.ca_cert)) as tls:
        assert tls.connect() == 0
        publish_once(tls, 2)
    assert agent.terminate() == 0
    assert values(agent.read_log(), device_id) == [1, 2]


def test_run_closes_the_older_connection_of_a_client_id_and_forgets_sessions_on_restart(
        agent: Agent) -> None:
    agent.start()
    device_id, token = agent.create_device("run-mqtt-2")
    with MqttDevice(agent.mqtt_port, token, client_id="station", clean_session=False) as first:
        assert first.connect() == 0
        assert first.subscribe("v1/devices/me/rpc/request/+", qos=1) == [1]
        with MqttDevice(agent.mqtt_port, token, client_id="station",
                        clean_session=False) as second:
            assert second.connect() == 0
            assert second.session_present is True  # the older one gave its session back
            wait_until(first.disconnected.is_set, timeout=DEADLINE_S, what="older closed")
            publish_once(second, 1)
    def ended(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r.get("device") == device_id
                and r.get("message", "").endswith("disconnected from MQTT")]

    def logged() -> list[dict[str, Any]] | None:
        records = agent.log_records()
        return records if ended(records) else None

    records = wait_until(logged, timeout=DEADLINE_S, what="the newer connection's end logged")
    takeovers = [r for r in records if r.get("level") == "WARNING"
                 and "client id connected again" in r.get("message", "")]
    assert len(takeovers) == 1  # the one line of the takeover
    assert (takeovers[0]["device"], takeovers[0]["client_id"]) == (device_id, "station")
    assert takeovers[0]["peer"] != takeovers[0]["older_peer"]
    assert len(ended(records)) == 1  # the newer connection's end; the older one's: the takeover
    assert token not in agent.stderr_text()
    assert agent.terminate() == 0
    agent.start()
    with MqttDevice(agent.mqtt_port, token, client_id="station", clean_session=False) as after:
        assert after.connect() == 0
        assert after.session_present is False  # kept in memory only
    assert values(agent.read_log(), device_id) == [1]


def test_run_refuses_to_start_when_its_mqtt_port_is_taken_unless_mqtt_is_off(
        agent: Agent) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", agent.mqtt_port))
        squatter.listen()
        code, err = agent.run_to_exit()
        assert code == 1, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert f"127.0.0.1:{agent.mqtt_port}" in last
        assert "EDGE_MQTT_PORT" in last and "EDGE_MQTT_ENABLED=false" in last
        agent.start({"EDGE_MQTT_ENABLED": "false"})  # off: the port is not wanted
        assert agent.admin("GET", "/api/status").status == 200
        assert agent.terminate() == 0
