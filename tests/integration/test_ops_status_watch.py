"""`edge-sync status --watch` against a live agent (no cloud: its queue only grows): two
refreshes as plain blocks (stdout is not a terminal), the first without a drain rate, the second
not draining; `--json` gives one object per refresh with its drain figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.agent import Agent

pytestmark = pytest.mark.slow


def test_status_watch_two_refreshes(tmp_path, procs):
    agent = procs(Agent(tmp_path / "edge")).start()
    _device, token = agent.create_device("watched")
    for n in range(3):
        assert agent.post_telemetry(token, {"n": n}) == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    env.update(EDGE_DATA_DIR=str(agent.data_dir), EDGE_ADMIN_HOST="127.0.0.1",
               EDGE_ADMIN_PORT=str(agent.admin_port))

    def watch(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "status", "--watch",
                               "--interval", "0.2", "--count", "2", *extra], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    done = watch()
    assert done.returncode == 0, done.stderr
    assert "\033[" not in done.stdout  # not a terminal: no screen clearing
    blocks = [b for b in done.stdout.split("\n\n") if b.strip()]
    assert len(blocks) == 2
    for block in blocks:
        assert "agent:        running" in block
        assert "pending:      5 (high " in block  # ADDED, CREDENTIALS_UPDATED, 3 points
        assert "every 0.2s; Ctrl-C to stop" in block
    assert "drain:        — (measured from the next refresh)" in blocks[0]
    assert "drain:        0.0 events/s acknowledged, not draining" in blocks[1]

    done = watch("--json")
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["drain"] == {"pending": 5, "acked_per_s": None, "net_drain_per_s": None,
                              "empty_in_s": None}
    assert second["drain"]["pending"] == 5 and second["drain"]["net_drain_per_s"] == 0.0
    assert second["drain"]["empty_in_s"] is None
