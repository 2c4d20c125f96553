"""`scripts/bench mqtt --quick` end to end (about 15 s): a real `edge-sync run` and, when
Debian's mosquitto is installed, the two Mosquitto configs, loaded by the benchmark's own client
processes. The JSON line (the last line of stdout) has every figure, and the counts are not
zero. Without mosquitto the benchmark runs for edge-sync only (it is not installed from here)
and the Mosquitto test is skipped, saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.common import mosquitto_binary
from bench.mqtt import MOSQ_DEFAULT, MOSQ_SAVE, TARGETS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick() -> tuple[dict[str, Any], bool]:
    """The JSON line of one quick run, and whether Mosquitto was part of it."""
    have_mosquitto = mosquitto_binary() is not None
    cmd = [sys.executable, "-m", "bench", "mqtt", "--quick", "--no-install"]
    if not have_mosquitto:
        cmd.append("--no-mosquitto")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-4000:]
    return json.loads(lines[-1]), have_mosquitto


def test_quick_run_measures_edge_sync(quick: tuple[dict[str, Any], bool]) -> None:
    line, _ = quick
    assert line["bench"] == "mqtt" and line["quick"] is True and line["runs"] == 1
    assert line["errors"] == []
    rates = line["throughput_msgs_per_s"]["edge_sync"]
    assert set(rates) == {"1", "10"} and all(rates[k] > 0 for k in rates)
    latency = line["latency"]["edge_sync"]
    assert latency["acked"] > 0 and 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    idle = line["idle"]["edge_sync"]
    assert idle["clients"] == idle["established"] == 200
    assert idle["peak_rss_mb"] >= idle["rss_mb"] > 0
    cpu = line["cpu_pct"]["edge_sync"]["10"]
    assert cpu["server_cpu_pct"] > 0 and cpu["client_cpu_pct"] > 0
    assert set(line["targets"]) == set(TARGETS) == set(line["met"]) == set(line["figures"])
    assert line["figures"]["edge_sync_msgs_per_s_10_clients"] == rates["10"]
    assert isinstance(line["met"]["edge_sync_msgs_per_s_10_clients"], bool)
    assert line["met"]["edge_sync_idle_10000_peak_rss_mb"] is None  # 200 connections, not 10,000
    assert len(line["samples"]) == 1 and "edge_sync" in line["samples"][0]
    assert len(line["machine"]) == 2 and "loadavg_1m" in line["machine"][0]


def test_quick_run_measures_mosquitto(quick: tuple[dict[str, Any], bool]) -> None:
    line, have_mosquitto = quick
    if not have_mosquitto:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto): the benchmark ran "
                    "for edge-sync only")
    assert line["setup"]["mosquitto"]
    for name in (MOSQ_DEFAULT, MOSQ_SAVE):
        rates = line["throughput_msgs_per_s"][name]
        assert set(rates) == {"1", "10"} and all(rates[k] > 0 for k in rates), name
        assert line["latency"][name]["acked"] > 0, name
    assert line["idle"][MOSQ_DEFAULT]["established"] == 200
    for ratios in line["ratios"].values():
        assert all(isinstance(ratios[k], float) and ratios[k] > 0 for k in ("1", "10"))
    assert isinstance(line["met"]["ratio_to_mosquitto_save_every_change_10_clients"], bool)
