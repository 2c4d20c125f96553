"""`scripts/bench rules --quick --runs 1 --floor` end to end (about 20 s): one ingest run without
and with the 6-node chain, and with the two floor chains (in-process agents on fresh stores),
then the aggregation chain over 2 windows of 2 s for 10 devices posting 1,000 messages each per
window. The JSON line (the last line of stdout) has every figure; the aggregation's are exact
(every summary equals what was posted, the benchmark checks it), the speeds are only checked to
be measured (their targets are the benchmark's business, on a quiet machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.rules import FLOOR_CHAINS, INGEST_CHAIN, TARGETS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    """The JSON line of one quick run, which must exit 0 (no error)."""
    cmd = [sys.executable, "-m", "bench", "rules", "--quick", "--runs", "1", "--floor"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    lines = done.stdout.strip().splitlines()
    assert lines, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    line: dict[str, Any] = json.loads(lines[-1])
    assert done.returncode == 0, f"{line['errors']}\n{done.stderr[-4000:]}"
    return line


def test_quick_run_reports_the_ingest_figures(quick: dict[str, Any]) -> None:
    assert quick["bench"] == "rules" and quick["quick"] is True and quick["runs"] == 1
    assert quick["only"] == "all" and quick["errors"] == []
    assert len(INGEST_CHAIN["metadata"]["nodes"]) == 6
    assert quick["ingest"] == {"chain_nodes": 6, "duration_s": 1.0, "warmup_s": 1.0,
                               "threads": 4, "window": 32, "batch": 100, "devices": 16}
    samples = quick["samples"]
    assert samples["no_chain_eps"] == [quick["no_chain_eps"]]
    assert samples["chain_eps"] == [quick["chain_eps"]]
    assert quick["no_chain_eps"] > 0 and quick["chain_eps"] > 0
    assert samples["ratio"] == [quick["ratio"]]
    assert quick["ratio"] == pytest.approx(quick["chain_eps"] / quick["no_chain_eps"], abs=0.002)
    assert quick["targets"] == TARGETS == {"ratio": 0.5, "reduction": 500.0}
    assert quick["met"]["ratio"] is (quick["ratio"] >= 0.5)
    assert len(quick["machine"]) == 2 and quick["cpus"] >= 1


def test_quick_run_reports_the_floor_chains(quick: dict[str, Any]) -> None:
    # push only (1 node) and save -> push (2 nodes), each checked like the 6-node chain (every
    # entry one event, every node saw every entry, none failed: errors is empty above)
    assert list(FLOOR_CHAINS) == ["push", "save_push"]
    floor = quick["floor"]
    assert list(floor) == ["push", "save_push"]
    for name, nodes in (("push", 1), ("save_push", 2)):
        figures = floor[name]
        assert figures["nodes"] == nodes
        assert figures["eps"] > 0 and figures["samples"]["eps"] == [figures["eps"]]
        assert figures["samples"]["ratio"] == [figures["ratio"]]
        assert figures["ratio"] == pytest.approx(figures["eps"] / quick["no_chain_eps"],
                                                 abs=0.002)


def test_quick_run_aggregates_exactly(quick: dict[str, Any]) -> None:
    # 10 devices x 2 windows x 1,000 messages in; one summary per device and window out
    assert quick["aggregation"]["devices"] == 10 and quick["aggregation"]["windows"] == 2
    assert quick["aggregation"]["per_window"] == 1000 and quick["aggregation"]["interval_s"] == 2
    assert quick["aggregation_in"] == 20_000
    assert quick["aggregation_out"] == 20
    assert quick["reduction"] == 1000.0
    assert quick["aggregation_exact"] is True
    assert quick["met"]["reduction"] is True
    # each window's summaries were queued once the window closed: not before its 2 s interval
    # (the edge's wall clock in ms against the benchmark's monotonic clock: 10 ms of slack)
    waits = quick["aggregation"]["close_wait_s"]
    assert len(waits) == 2 and all(w >= 1.99 for w in waits)
    assert quick["aggregation"]["seconds"] >= sum(waits) - 0.05
