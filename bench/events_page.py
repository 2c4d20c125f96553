"""``scripts/bench events-page``: the Cloud Events page's query at a million events.

Method: a store of ``--events`` events (default 1,000,000; tests/helpers/event_store.py: ten
devices, 10 pending, 2 dead, the rest deployed) is written straight through EventLog in
transactions of 100,000 (``build_s``), then a real ``edge-sync run`` opens it (no cloud link)
and ``GET /api/cloud-events`` is asked ``--requests`` times per query, each on a fresh
connection, as the page asks it (``envelope=true&order=desc&limit=50``). The figure is the
server's own time for the query, from the answer's ``Server-Timing: query;dur=<ms>`` header
(the LMDB read transaction, the index walk, decoding, names; not the JSON encoding or the
network); ``client_ms`` is the whole round trip seen by the client. Median and maximum per
query:

- ``first_page``: the newest 50 events (what the page shows first); target < 300 ms;
- ``middle_page``: 50 events before seq n/2 (a cursor deep in the log);
- ``dead``, ``entity`` (one device's events, the entity index), ``action_deployed`` (an
  action + status filter, checked event by event), ``time_range`` (created-time bounds found
  by binary search), ``no_match`` (a type the log lacks: one full scan budget of 10,000).

Exit 1 when an answer is not 200 or a page does not hold the rows it must.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import SetupError, edge_env, emit, free_port, progress, terminate, wait_port

TARGET_FIRST_PAGE_MS = 300.0


def _get(port: int, query: str) -> tuple[float, float, dict[str, Any]]:
    """(server ms, client ms, body) of one GET /api/cloud-events?query."""
    started = time.perf_counter()
    url = f"http://127.0.0.1:{port}/api/cloud-events?envelope=true&order=desc&limit=50&{query}"
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = json.loads(resp.read())
        timing = resp.headers.get("Server-Timing", "")
    client = (time.perf_counter() - started) * 1000
    server = float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")
    return server, client, body


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench events-page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20, help="requests per query")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 5 requests")
    args = parser.parse_args(list(argv))
    if args.quick:
        args.events, args.requests = 100_000, 5
    from tests.helpers import event_store

    n = args.events
    with tempfile.TemporaryDirectory(prefix="bench-events-page-") as tmp:
        data = Path(tmp) / "data"
        progress(f"writing {n:,} events")
        build_s = event_store.build(data, n)
        progress(f"written in {build_s:.1f}s; starting edge-sync run")
        admin = free_port()
        log = Path(tmp) / "edge.stderr"
        with log.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "edge_sync.cli.edge", "run"],
                                    env=edge_env(data, admin_port=admin), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_port(admin, proc, "edge-sync run", log)
            entity = event_store.device_id(2)
            queries = {
                "first_page": ("", n),
                "middle_page": (f"before={n // 2}", n // 2 - 1),
                "dead": ("status=DEAD", 8),
                "entity": (f"entity={entity}", n - 7),
                "action_deployed": ("action=ATTRIBUTES_UPDATED&status=DEPLOYED", n - 10),
                "time_range": ("from=1767225660000&to=1767225660000", 61_000),
                "no_match": ("type=ALARM", None),
            }
            result: dict[str, Any] = {"bench": "events-page", "events": n,
                                      "build_s": round(build_s, 2), "requests": args.requests}
            ok = True
            for name, (query, top) in queries.items():
                servers, clients = [], []
                for _ in range(args.requests):
                    server, client, body = _get(admin, query)
                    servers.append(server)
                    clients.append(client)
                    got = body["rows"][0]["seq"] if body["rows"] else None
                    if got != top:
                        ok = False
                        progress(f"{name}: first row {got}, expected {top}")
                result[name] = {"server_ms_median": round(statistics.median(servers), 2),
                                "server_ms_max": round(max(servers), 2),
                                "client_ms_median": round(statistics.median(clients), 2)}
                progress(f"{name}: server {result[name]['server_ms_median']} ms median, "
                         f"{result[name]['server_ms_max']} ms max")
            result["target_first_page_ms"] = TARGET_FIRST_PAGE_MS
            result["meets_target"] = result["first_page"]["server_ms_max"] < TARGET_FIRST_PAGE_MS
            result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
            result["rows_ok"] = ok
        except SetupError as exc:
            progress(str(exc))
            return 1
        finally:
            code = terminate(proc)
        result["agent_exit_code"] = code
        emit(result)
        return 0 if ok and code == 0 else 1
