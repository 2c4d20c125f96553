"""The process helpers (tests/helpers/agent.py, cloud_proc.py) pick free ports, release them and
start a subprocess that binds them a moment later; with parallel test workers another process
may take one in between. Before a first start has served, the helper starts again on fresh
ports; a restart keeps the ports its clients know. Real subprocesses on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc


def test_an_agent_whose_port_was_taken_before_its_first_start_serves_on_fresh_ones(
        tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    taken_port = agent.http_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", taken_port))
        taken.listen()
        agent.start()
        try:
            assert agent.http_port != taken_port
            assert len(agent.stderr_paths) == 2  # the refused start, then the one that serves
            assert f"cannot listen on 127.0.0.1:{taken_port}" in agent.stderr_text(all_runs=True)
            assert agent.admin("GET", "/api/status").status == 200
            ports = (agent.http_port, agent.admin_port, agent.mqtt_port, agent.mqtt_tls_port)
            agent.kill9()
            agent.start()  # a restart: the same ports
            assert (agent.http_port, agent.admin_port, agent.mqtt_port,
                    agent.mqtt_tls_port) == ports
            assert agent.admin("GET", "/api/status").status == 200
        finally:
            agent.close()


def test_a_cloud_whose_port_was_taken_before_its_first_start_serves_on_fresh_ones(
        tmp_path: Path) -> None:
    cloud = CloudProc(tmp_path)
    taken_port = cloud.rpc_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", taken_port))
        taken.listen()
        cloud.start()
        try:
            assert cloud.rpc_port != taken_port
            assert len(cloud.stderr_paths) == 2
            ports = (cloud.rpc_port, cloud.admin_port)
            cloud.kill9()
            cloud.start()
            assert (cloud.rpc_port, cloud.admin_port) == ports
        finally:
            cloud.close()
