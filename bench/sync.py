"""``scripts/bench sync``: an edge's first full sync of a large entity graph, on loopback.

Each run, on fresh stores: the reference cloud's store gets one edge and a plant of
``--entities`` entities for it (bench/graph_population.py: mostly devices, assets and relations,
some of every kind, a dashboard just under the 4 MiB message limit unless
``--no-big-dashboard``), written by this process before the server starts (not timed in the
sync; ``seed_s`` says how long it took). Then ``edge-cloud serve`` and ``edge-sync run`` start
as subprocesses (default settings: only the stores, ports, log level and a 100 ms reconnect
delay are set), the edge on an empty store, so its first connect asks for a full sync.

Measured:

- ``sync_s``: the edge's own record of its full sync (``GET /api/status`` ``sync``): from
  ``full_started_ms`` (its DownlinkActor records the sync as started when the cloud has
  accepted the connect, just before SyncRequestMsg goes out) to ``last_full_ms`` (the commit
  of the transaction applying SyncCompletedMsg, which comes after every entity). Both are the
  edge's clock. ``spawn_to_synced_s`` is the benchmark's own clock from spawning the edge to
  seeing its link CONNECTED (interpreter start-up and the connect included).
- ``entities_per_s``: the plant's entities (``--entities``) / ``sync_s``; ``entries_per_s``:
  every entry the edge received (the plant, the cloud's own entities, rule chain metadata,
  device credentials) / ``sync_s``.
- ``edge_peak_rss_mb`` / ``cloud_peak_rss_mb``: VmHWM of each process when the sync has
  completed (the edge: since its start; the cloud: since its start, which reads nothing of the
  plant before the edge connects).
- ``cpu_s``: CPU seconds of each process from the moment the benchmark first sees the link
  SYNCING (its status is polled every 100 ms) to CONNECTED, so ``cpu_s / sync_s`` says how
  busy each was.
- ``sync_downlinks``: the DownlinkMsgs of the sync (cloud/full_sync.full_sync, read from the
  store before the cloud starts), each one round trip (one downlink in flight) and one edge
  transaction; ``ms_per_downlink`` = ``sync_s`` / that.

Exactness, checked every run (any failure is an error, exit 1): the edge's status counts by
kind (``graph.entities`` and ``graph.relations``) equal what the cloud assigns to the edge
(graph_population.edge_expected), nothing is held (``graph.held.count`` 0) and no full sync is
in progress; and the edge's graph store, read entity by entity (graph_population.edge_graph,
read-only while the edge runs), equals the cloud's view, JSON included (``exact``).

The seeding goes through the product's APIs, which queue for the edge what a live edge would be
sent (``queued_after_seed``: about one downlink per entity). The full sync goes first and
supersedes them: at its end (the edge's acknowledgement of SyncCompletedMsg) the cloud drops the
queued downlinks that carry only graph changes (cloud/session.py ``_drop_superseded``, for an
edge-sync edge that asked for the sync); whatever it keeps is sent after the sync and must leave
the edge as it is. Not measured unless ``--drain-queue``: then ``queue_drain_s`` is the time from
the sync's end until the cloud's queue for the edge is empty (about 0 when the sync dropped it
all), ``superseded_by_sync`` how many queued downlinks the sync dropped (the cloud's stream
``downlinks_superseded``, read once the queue is empty; ``queued_after_seed`` when none of the
seeding's is sent again), and the edge is checked again afterwards (``exact_after_queue``; a
difference is an error too).

``--profile DIR``: after the measured runs, one more run (not in the figures: sampling slows
both processes) with ``py-spy record --gil --threads --format raw`` (200 Hz) on both processes
until the sync's end: a sample is the thread holding the GIL, i.e. Python running. In that run
the edge starts first and its start-up is not recorded: once it serves, py-spy attaches, then
the cloud starts (the edge retries its connect every 100 to 250 ms) and py-spy attaches to it
as soon as it answers. The collapsed stacks go to DIR; ``profile`` in the JSON line has the
run's figures and, per process, the seconds it held the GIL (``gil_s``, to compare with the
run's ``sync_s``) and the shares of its samples by thread, by leaf function and by edge_sync
module anywhere in the stack (inclusive).

Target: at least 2,000 entities/s (ThingsBoard sends a sync in packs of 50 and waits for each).
The JSON line (last line of stdout) has the medians over ``--runs`` runs (3), each run in
``samples``, ``target`` and ``met``, ``machine`` (load average and pressure at the start and the
end: the machine is shared) and ``errors``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    EdgeProcess,
    SetupError,
    cpu_seconds,
    emit,
    median,
    peak_rss_mb,
    progress,
    rounded,
    tail,
)
from bench.e2e import Cloud, PhaseError, machine_load
from bench.graph_population import (
    PlantSpec,
    View,
    build_plant,
    counts_by_kind,
    diff,
    edge_expected,
    edge_graph,
)
from edge_sync.cloud import full_sync
from edge_sync.common import ids

TARGET_ENTITIES_PER_S = 2000.0
_POLL_S = 0.02
SYNC_POLL_S = 0.1
"""How often the edge's status is read during the sync (each read costs the edge a little CPU;
the sync's time comes from the edge's own record, not from this polling)."""
PROFILE_RATE_HZ = 200


@dataclass(frozen=True, slots=True)
class Options:
    entities: int = 10_000
    runs: int = 3
    seed: int = 0
    big_dashboard: bool = True
    drain_queue: bool = False
    profile: Path | None = None
    quick: bool = False


@dataclass
class RunResult:
    figures: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    queued_after_seed: int = 0
    profile: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    after_queue: list[str] = field(default_factory=list)
    """What differed once the seeding's queue reached the edge (--drain-queue; also in errors)."""


def cloud_edge_row(cloud: Cloud) -> dict[str, Any]:
    """The edge's row of the running cloud's GET /api/status."""
    url = f"http://127.0.0.1:{cloud.admin_port}/api/status"
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        status = json.loads(resp.read())
    for row in status.get("edges", []):
        if row.get("routing_key") == cloud.routing_key:
            return dict(row)
    raise PhaseError(f"no edge {cloud.routing_key!r} in the cloud's status")


# -- py-spy --------------------------------------------------------------------------------------


def py_spy() -> str | None:
    path = Path(sys.executable).parent / "py-spy"
    return str(path) if os.access(path, os.X_OK) else None


class Profiler:
    """py-spy recording one process until stopped (SIGINT makes it write its output)."""

    def __init__(self, spy: str, pid: int, out: Path) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        self.started = time.monotonic()
        self.seconds = math.nan
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ), "--gil",
                 "--threads", "--format", "raw", "--output", str(out)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> str | None:
        """Stop and wait; the error, None when the stacks were written."""
        if self.proc.poll() is None:
            self.seconds = time.monotonic() - self.started
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return None if self.out.exists() else f"py-spy wrote nothing: {tail(self.log, 5)}"


def summarise_profile(path: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """A collapsed-stack file (``thread (tid): name;frame;frame;... count``, py-spy's raw
    format with --threads) recorded for ``seconds``: the seconds with a sample (``gil_s``;
    with --gil: Python running), and the shares of the samples by thread, by leaf function
    and by edge_sync module anywhere in the stack (inclusive)."""
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            threads[frames.pop(0).partition(": ")[2].rstrip("0123456789").rstrip("-_") or "?"] += count
        if not frames:
            continue
        leaves[_frame_name(frames[-1])] += count
        for module in {m for m in map(_edge_sync_module, frames) if m is not None}:
            modules[module] += count

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in counter.most_common(top)} if total else {}

    return {"samples": total, "seconds": round(seconds, 2),
            "gil_s": round(total / PROFILE_RATE_HZ, 2),
            "thread": share(threads), "leaf": share(leaves),
            "edge_sync_module_inclusive": share(modules)}


def _frame_name(frame: str) -> str:
    """``function (path/to/file.py:12)`` -> ``function (file.py)``."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rsplit("/", 1)[-1] if where else ""
    return f"{name} ({file})" if file else name


def _edge_sync_module(frame: str) -> str | None:
    """``f (edge_sync/link/channel.py:12)`` -> ``link/channel``; None outside edge_sync."""
    _, _, where = frame.partition(" (")
    path = "/" + where.split(":")[0]
    if "/edge_sync/" not in path:
        return None
    return path.rsplit("/edge_sync/", 1)[1].removesuffix(".py")


# -- one run ----------------------------------------------------------------------------------------


def check_edge(status: dict[str, Any], expected: View, data_dir: Path) -> list[str]:
    """Why the edge does not hold exactly ``expected`` (empty when it does)."""
    problems = []
    want = counts_by_kind(expected)
    relations = want.pop("RELATION", 0)
    graph = status.get("graph") or {}
    have = dict(graph.get("entities") or {})
    if have != want or graph.get("relations") != relations:
        problems.append(f"edge counts {have} + {graph.get('relations')} relations; the cloud "
                        f"assigns {want} + {relations} relations")
    held = (graph.get("held") or {}).get("count")
    if held != 0:
        problems.append(f"{held} held on the edge: {(graph.get('held') or {}).get('first')}")
    sync = status.get("sync") or {}
    if sync.get("full_in_progress") or sync.get("damaged"):
        problems.append(f"edge sync state {sync}")
    problems += [f"edge graph vs cloud: {line}" for line in diff(expected, edge_graph(data_dir))]
    return problems


def run_once(opts: Options, workdir: Path, run: int, *, profile: bool = False) -> RunResult:
    out = RunResult()
    spec = PlantSpec.for_total(opts.entities, near_limit_dashboard=opts.big_dashboard)
    cloud = Cloud(workdir / "cloud" / "data")
    edge = EdgeProcess(workdir / "edge" / "data", cloud)
    profilers: dict[str, Profiler] = {}
    try:
        from edge_sync.cloud.server import open_cloud_store

        store = open_cloud_store(cloud.cfg)
        try:
            t0 = time.monotonic()
            pop = build_plant(store, cloud.routing_key, spec, seed=opts.seed + run)
            out.figures["seed_s"] = time.monotonic() - t0
            expected = edge_expected(store, cloud.routing_key)
            record = store.edge(cloud.routing_key)
            assert record is not None
            downlinks = len(full_sync.full_sync(store, record, ids.unix_ms(ids.time_based())))
        finally:
            store.close()
        out.queued_after_seed = pop.queued_downlinks
        out.counts = counts_by_kind(expected)
        progress(f"  plant of {spec.total:,} entities seeded in {out.figures['seed_s']:.1f} s "
                 f"(graph {pop.seconds['graph']:.1f} s, devices {pop.seconds['devices']:.1f} s, "
                 f"relations {pop.seconds['relations']:.1f} s); the edge will receive "
                 f"{len(expected):,} entries; near-limit dashboard {pop.near_limit_bytes} bytes")
        spy = py_spy() if profile else None
        if profile and spy is None:
            raise SetupError("--profile: py-spy not found in the venv (.venv/bin/pip install py-spy)")
        t_spawn = time.monotonic()
        if spy is not None and opts.profile is not None:
            # the edge first, its start-up not profiled: it retries the connect (every 100 to
            # 250 ms) until the cloud, started once py-spy records the edge, answers
            opts.profile.mkdir(parents=True, exist_ok=True)
            edge.env.update(EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="250",
                            EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD="1000000000")
            edge.spawn()
            wait_serving(edge)
            profilers["edge"] = Profiler(spy, edge.pid, opts.profile / "edge-sync.txt")
            cloud.start()
            profilers["cloud"] = Profiler(spy, cloud.pid, opts.profile / "cloud-sync.txt")
        else:
            cloud.start()
            t_spawn = time.monotonic()
            edge.spawn()
        status, cpu_start = wait_synced(opts, cloud, edge)
        t_synced = time.monotonic()
        out.figures["edge_peak_rss_mb"] = peak_rss_mb(edge.pid)
        out.figures["cloud_peak_rss_mb"] = peak_rss_mb(cloud.pid)
        out.figures["edge_cpu_s"] = cpu_seconds(edge.pid) - cpu_start[0]
        out.figures["cloud_cpu_s"] = cpu_seconds(cloud.pid) - cpu_start[1]
        if profilers:
            out.profile = {}
            for who, prof in profilers.items():
                error = prof.stop()
                out.profile[who] = ({"error": error} if error else
                                    {**summarise_profile(prof.out, prof.seconds),
                                     "stacks": str(prof.out)})
            profilers = {}
        sync = status["sync"]
        sync_s = (sync["last_full_ms"] - sync["full_started_ms"]) / 1000
        out.figures.update(sync_s=sync_s, spawn_to_synced_s=t_synced - t_spawn,
                           sync_downlinks=downlinks, ms_per_downlink=sync_s * 1000 / downlinks,
                           entities_per_s=spec.total / sync_s if sync_s > 0 else math.nan,
                           entries_per_s=len(expected) / sync_s if sync_s > 0 else math.nan)
        problems = check_edge(status, expected, edge.data_dir)
        out.errors += [f"run {run}: {p}" for p in problems]
        progress(f"  full sync: {spec.total:,} entities ({len(expected):,} entries, {downlinks} "
                 f"downlinks) in {sync_s:.2f} s "
                 f"= {out.figures['entities_per_s']:,.0f} entities/s; spawn to synced "
                 f"{out.figures['spawn_to_synced_s']:.2f} s; peak RSS edge "
                 f"{out.figures['edge_peak_rss_mb']:.0f} MiB, cloud "
                 f"{out.figures['cloud_peak_rss_mb']:.0f} MiB; cpu edge "
                 f"{out.figures['edge_cpu_s']:.2f} s, cloud {out.figures['cloud_cpu_s']:.2f} s; "
                 + ("exact" if not problems else f"NOT EXACT: {problems[:3]}"))
        if opts.drain_queue and not profile:
            drain_queue(opts, cloud, edge, expected, out, run)
    except (PhaseError, SetupError, OSError, ValueError, KeyError, TypeError) as exc:
        out.errors.append(f"run {run}: {type(exc).__name__}: {exc}")
        progress(f"  FAILED: {out.errors[-1]}")
    finally:
        for prof in profilers.values():
            prof.stop()
        codes = {"edge": edge.stop(), "cloud": cloud.stop()}
        for who, code in codes.items():
            if code not in (0, None):
                out.errors.append(f"run {run}: the {who} exited with {code} after SIGTERM"
                                  + (f": {tail(edge.log, 10)}" if who == "edge" else ""))
    return out


def wait_serving(edge: EdgeProcess, timeout: float = 60.0) -> None:
    """Wait until the edge's admin API answers (its start-up is over)."""
    deadline = time.monotonic() + timeout
    while edge.status() is None:
        if time.monotonic() > deadline:
            raise PhaseError(f"the edge did not serve within {timeout:.0f}s: {tail(edge.log, 10)}")
        time.sleep(_POLL_S)


def wait_synced(opts: Options, cloud: Cloud, edge: EdgeProcess) -> tuple[dict[str, Any], tuple[float, float]]:
    """Wait for the link CONNECTED after a completed full sync; its status, and the CPU
    seconds of (edge, cloud) when the link was first seen SYNCING (NaN when the sync was over
    before the link was first seen)."""
    deadline = time.monotonic() + 120 + opts.entities / 100
    cpu_start: tuple[float, float] | None = None
    state = "no answer"
    while time.monotonic() < deadline:
        status = edge.status()
        if status is not None:
            state = str(status["link"]["state"])
            if cpu_start is None and state == "SYNCING":
                cpu_start = (cpu_seconds(edge.pid), cpu_seconds(cloud.pid))
            sync = status.get("sync") or {}
            if state == "CONNECTED" and sync.get("last_full_ms") and sync.get("full_started_ms"):
                return status, cpu_start or (math.nan, math.nan)
        time.sleep(SYNC_POLL_S)
    raise PhaseError(f"the edge's full sync did not complete in time (link {state}): "
                     f"{tail(edge.log, 10)}")


def drain_queue(opts: Options, cloud: Cloud, edge: EdgeProcess, expected: View, out: RunResult,
                run: int) -> None:
    """Wait until the cloud's queue for the edge is empty; check the edge again."""
    t0 = time.monotonic()
    deadline = t0 + 300 + opts.entities / 20
    while True:
        row = cloud_edge_row(cloud)
        if row.get("queued_downlinks") == 0:
            break
        if time.monotonic() > deadline:
            raise PhaseError(f"the seeding's queue did not drain: {row.get('queued_downlinks')} left")
        time.sleep(0.1)
    out.figures["queue_drain_s"] = time.monotonic() - t0
    # read again: a status takes the stream's counters before the queue's length, and the
    # stream counts the dropped downlinks just after committing their removal
    stream = cloud_edge_row(cloud).get("stream")
    if not isinstance(stream, dict):
        raise PhaseError("the edge's stream is gone from the cloud's status after the queue drained")
    superseded = int(stream.get("downlinks_superseded", 0))
    out.figures["superseded_by_sync"] = superseded
    status = edge.status()
    if status is None:
        raise PhaseError("the edge's status did not answer after the queue drained")
    problems = check_edge(status, expected, edge.data_dir)
    out.after_queue = [f"run {run}, after the queue: {p}" for p in problems]
    out.errors += out.after_queue
    progress(f"  the seeding's {out.queued_after_seed:,} queued downlinks: {superseded:,} dropped "
             f"by the full sync, the queue empty {out.figures['queue_drain_s']:.2f} s after the "
             "sync; " + ("exact" if not problems else f"NOT EXACT: {problems[:3]}"))


# -- the report -------------------------------------------------------------------------------------


def result_line(opts: Options, runs: list[RunResult], machine: list[dict[str, float]],
                profiled: RunResult | None = None) -> dict[str, Any]:
    def med(key: str, digits: int) -> float | None:
        return rounded(median([r.figures[key] for r in runs if key in r.figures]), digits)

    rate = med("entities_per_s", 0)
    errors = [e for r in runs for e in r.errors]
    after_queue = [e for r in runs for e in r.after_queue]
    counts = next((r.counts for r in runs if r.counts), {})
    return {
        "bench": "sync", "entities": opts.entities, "runs": opts.runs, "quick": opts.quick,
        "near_limit_dashboard": opts.big_dashboard,
        "entries_synced": sum(counts.values()), "counts": counts,
        "sync_s": med("sync_s", 3), "entities_per_s": rate, "entries_per_s": med("entries_per_s", 0),
        "spawn_to_synced_s": med("spawn_to_synced_s", 2),
        "sync_downlinks": med("sync_downlinks", 0), "ms_per_downlink": med("ms_per_downlink", 2),
        "edge_peak_rss_mb": med("edge_peak_rss_mb", 1), "cloud_peak_rss_mb": med("cloud_peak_rss_mb", 1),
        "cpu_s": {"edge": med("edge_cpu_s", 2), "cloud": med("cloud_cpu_s", 2)},
        "seed_s": med("seed_s", 2),
        "queued_after_seed": max((r.queued_after_seed for r in runs), default=0),
        "queue_drain_s": med("queue_drain_s", 2) if opts.drain_queue else None,
        "superseded_by_sync": med("superseded_by_sync", 0) if opts.drain_queue else None,
        "exact": len(errors) == len(after_queue) and len(runs) == opts.runs,
        "exact_after_queue": not after_queue if opts.drain_queue else None,
        "target": {"entities_per_s": TARGET_ENTITIES_PER_S},
        "met": {"entities_per_s": None if rate is None else rate >= TARGET_ENTITIES_PER_S},
        "samples": [{k: rounded(v, 3) for k, v in r.figures.items()} for r in runs],
        "profile": None if profiled is None else {
            "run": {k: rounded(v, 3) for k, v in profiled.figures.items()},
            **(profiled.profile or {}), "errors": profiled.errors},
        "machine": machine, "cpus": os.cpu_count(), "errors": errors[:20],
    }


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/bench sync",
        description="An edge's first full sync of a large entity graph: real edge-cloud serve and "
        "edge-sync run processes, fresh stores, entities/s, peak RSS of both, exactness of what "
        "the edge holds. Progress goes to stderr; the last stdout line is the JSON result.")
    p.add_argument("--entities", type=int, default=None,
                   help="entities of the plant (default 10,000; --quick 1,000)")
    p.add_argument("--runs", type=int, default=None, help="runs, each on fresh stores and "
                   "processes; medians reported (default 3; --quick 1)")
    p.add_argument("--seed", type=int, default=0, help="the plant of run n has seed SEED+n")
    p.add_argument("--no-big-dashboard", action="store_true",
                   help="leave out the dashboard just under the 4 MiB message limit")
    p.add_argument("--drain-queue", action="store_true",
                   help="after the sync, wait until the cloud's queue for the edge is empty "
                   "(the sync drops the seeding's downlinks it supersedes, the rest is sent), "
                   "count what it dropped, and check the edge again")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="one more run (not in the figures) with py-spy on both processes "
                   "during the sync; stacks to DIR")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run of 1,000 entities")
    a = p.parse_args(list(argv))
    opts = Options(
        entities=a.entities if a.entities is not None else (1000 if a.quick else 10_000),
        runs=a.runs if a.runs is not None else (1 if a.quick else 3),
        seed=a.seed, big_dashboard=not a.no_big_dashboard, drain_queue=a.drain_queue,
        profile=a.profile, quick=a.quick)
    if opts.runs < 1:
        p.error("--runs must be positive")
    try:
        PlantSpec.for_total(opts.entities, near_limit_dashboard=opts.big_dashboard)
    except ValueError as exc:
        p.error(f"--entities: {exc}")
    return opts


def main(argv: Sequence[str]) -> int:
    from edge_sync.config import LogConfig, LogLevel
    from edge_sync.logsetup import configure_logging

    opts = parse_args(argv)
    configure_logging(LogConfig(level=LogLevel.WARNING), component="bench")
    progress(f"sync: {opts.runs} run(s) of a first full sync of {opts.entities:,} entities "
             f"({os.cpu_count()} cpus); target {TARGET_ENTITIES_PER_S:,.0f} entities/s")
    machine = [machine_load()]
    runs = []
    for n in range(1, opts.runs + 1):
        progress(f"run {n}/{opts.runs}")
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
            runs.append(run_once(opts, Path(tmp), n))
    profiled = None
    if opts.profile is not None:
        progress(f"profiled run (not in the figures): py-spy --gil on both processes -> {opts.profile}")
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
            profiled = run_once(opts, Path(tmp), opts.runs + 1, profile=True)
    machine.append(machine_load())
    line = result_line(opts, runs, machine, profiled)
    emit(line)
    met = line["met"]["entities_per_s"]
    progress(f"median {line['entities_per_s']} entities/s (target {TARGET_ENTITIES_PER_S:,.0f}: "
             f"{'met' if met else 'NOT met' if met is not None else 'not measured'}); "
             f"sync {line['sync_s']} s; peak RSS edge {line['edge_peak_rss_mb']} MiB, cloud "
             f"{line['cloud_peak_rss_mb']} MiB; {'exact' if line['exact'] else 'NOT EXACT'}")
    if line["errors"]:
        progress("FAILED: " + "; ".join(line["errors"][:5]))
        return 1
    return 0
