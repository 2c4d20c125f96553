"""Entry point of ``scripts/bench`` / ``python -m bench <benchmark> [options]``.

Exit codes: whatever the benchmark returns (0 ok, 1 failed); 2 for usage errors and unknown
benchmarks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = """\
usage: scripts/bench <benchmark> [options]

benchmarks:
  ingest    events/s in process vs raw LMDB, device HTTP API throughput and latency
  e2e       edge to cloud end to end: sustained and drain vs a raw ceiling, latency, RSS
  compare   edge-sync vs a Mosquitto QoS 1 bridge through an outage and kill -9 (installs mosquitto)
  rpc       server-side RPC round trip cloud -> device -> cloud at 100 and 1,000/s, shared-attribute fan-out
  mqtt      device MQTT server vs Mosquitto: QoS 1 msgs/s, PUBACK latency, RSS of 10,000 idle clients
  sync      an edge's first full sync of 10,000 entities: entities/s, peak RSS, exactness
  rules     ingest with a 6-node rule chain vs none, cloud traffic saved by an aggregation chain
  events-page  the Cloud Events page's query at 1,000,000 events: server time per page (Server-Timing)

Each benchmark prints progress on stderr and one JSON line (the last line of stdout).
`scripts/bench <benchmark> --help` lists its options.
"""

def _ingest(argv: Sequence[str]) -> int:
    from bench import ingest

    return ingest.main(argv)


def _e2e(argv: Sequence[str]) -> int:
    from bench import e2e

    return e2e.main(argv)


def _compare(argv: Sequence[str]) -> int:
    from bench import compare

    return compare.main(argv)


def _rpc(argv: Sequence[str]) -> int:
    from bench import rpc

    return rpc.main(argv)


def _mqtt(argv: Sequence[str]) -> int:
    from bench import mqtt

    return mqtt.main(argv)


def _sync(argv: Sequence[str]) -> int:
    from bench import sync

    return sync.main(argv)


def _rules(argv: Sequence[str]) -> int:
    from bench import rules

    return rules.main(argv)


def _events_page(argv: Sequence[str]) -> int:
    from bench import events_page

    return events_page.main(argv)


BENCHMARKS: dict[str, Callable[[Sequence[str]], int]] = {
    "ingest": _ingest, "e2e": _e2e, "compare": _compare, "rpc": _rpc, "mqtt": _mqtt,
    "sync": _sync, "rules": _rules, "events-page": _events_page}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stderr.write(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    bench = BENCHMARKS.get(name)
    if bench is None:
        sys.stderr.write(f"scripts/bench: unknown benchmark {name!r}\n\n{USAGE}")
        return 2
    return bench(rest)


if __name__ == "__main__":
    sys.exit(main())
