"""The process helpers (tests/helpers/agent.py, cloud_proc.py: ``spawn_until_serving``) pick
free ports and start a subprocess that binds them a moment later: a port another process took
in between refuses the start, which then starts again on fresh ports; a restart keeps the ports
its clients know. Real subprocesses on loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc
from tests.helpers.process import ServiceProcess


@pytest.mark.parametrize(("make", "ports"), [
    (Agent, lambda p: (p.http_port, p.admin_port, p.mqtt_port, p.mqtt_tls_port)),
    (CloudProc, lambda p: (p.rpc_port, p.admin_port)),
], ids=["agent", "cloud"])
def test_a_port_taken_before_the_first_start_is_replaced_then_kept_on_restart(
        tmp_path: Path, make: Callable[[Path], ServiceProcess],
        ports: Callable[[Any], tuple[int, ...]]) -> None:
    proc: Any = make(tmp_path)
    taken_port = ports(proc)[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", taken_port))
        taken.listen()
        proc.start()
        try:
            assert taken_port not in ports(proc)
            assert len(proc.stderr_paths) == 2  # the refused start, then the one that serves
            refused = proc.stderr_text(all_runs=True)
            assert "cannot listen" in refused and str(taken_port) in refused
            first = ports(proc)
            proc.kill9()
            proc.start()  # a restart: the same ports
            assert ports(proc) == first
            assert proc.running
        finally:
            proc.close()
