"""``scripts/bench ingest``: how fast the agent makes telemetry durable.

Measurements (each repeated ``--runs`` times; the JSON line reports the median of the runs):

- ``inproc_eps``: events/s through the in-process API. ``EdgeApp(cfg).start()`` on a temporary
  store; ``--threads`` threads each post batches of ``--batch`` entries with
  ``app.service.post_entries`` and keep ``--window`` futures outstanding; an event counts when
  its future resolved (i.e. it is committed) before the deadline.
- ``raw_ceiling_eps``: the same events appended to a fresh LMDB environment by one thread with
  nothing else around: ``codec.encode_event`` of the NewEvents the entity actor builds, a u64 key
  each, ``--batch`` per fsync'd transaction. Each run measures it right before the in-process run
  so both see the same machine load. ``inproc_ratio`` = inproc_eps / raw_ceiling_eps (of the
  medians; ``samples`` has the per-run ratios). ``raw_commit_p99_ms`` is the 99th percentile of
  those raw transactions' duration: the disk's fsync latency, which bounds ``p99_ms`` from below.
- ``http_batched_pps``, ``http_single_rps``: points/s and requests/s through the device HTTP API
  of a real ``edge-sync run`` subprocess (closed loop: ``--batched-clients`` tasks posting
  bodies of ``--batch`` points, ``--single-clients`` tasks posting one point each).
- ``p50_ms``, ``p99_ms``: open-loop latency at ``--rate`` requests/s: request i is scheduled at
  t0 + i/rate and its latency is measured from that time, so queueing (in the agent or in the
  client) counts.
- ``peak_rss_mb``: the agent's VmHWM after the HTTP runs.

The agent (in process or not) is configured from the environment like ``edge-sync run`` (so
EDGE_* variables can tune it), except for the store, ports, host and log level, which the
benchmark sets. ``meets_targets`` compares the medians with ``targets``; a figure that was not
measured (``--only``) is null and so is its verdict.

Every HTTP request must be answered 200; anything else (or a client error) is counted in
``http_errors`` and makes the benchmark exit 1 after printing its JSON line. Exit 1 as well when
the agent does not stop cleanly (exit code 0) on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import lmdb

from bench.common import (
    CpuMeter,
    create_devices,
    edge_env,
    emit,
    free_port,
    inproc_app,
    median,
    peak_rss_mb,
    percentile,
    post_closed_loop,
    progress,
    rounded,
)
from edge_sync.actors.address import Address
from edge_sync.actors.entity import EntityActor
from edge_sync.actors.messages import Append, PostTelemetry
from edge_sync.api.payloads import Entry
from edge_sync.storage import codec
from edge_sync.storage.records import NIL_UUID, NewEvent

TARGETS: dict[str, float] = {
    "inproc_ratio": 0.33,  # at least
    "http_batched_pps": 50_000,  # at least
    "http_single_rps": 2_000,  # at least
    "p99_ms": 20.0,  # below
}

_TS0 = 1_700_000_000_000  # entry timestamps (ms); any fixed value will do
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = 3
    duration: float = 3.0
    latency_duration: float = 5.0
    threads: int = 4
    window: int = 32
    batch: int = 100
    inproc_devices: int = 16
    http_devices: int = 50
    batched_clients: int = 8
    single_clients: int = 32
    rate: float = 1000.0
    only: str = "all"


# -- shared inputs -------------------------------------------------------------------------------


def make_entries(batch: int, first_ts: int) -> tuple[Entry, ...]:
    """One post_entries batch: ``batch`` entries (ts, (("v", i),)) with consecutive timestamps."""
    return tuple((first_ts + i, (("v", i),)) for i in range(batch))


class _Capture:
    """Stands in for the QueueActor's Address: keeps the Append an entity actor sends."""

    def __init__(self) -> None:
        self.appends: list[Append] = []

    def tell(self, message: Any) -> None:
        self.appends.append(message)


def new_events(entity_id: uuid.UUID, entries: tuple[Entry, ...]) -> tuple[NewEvent, ...]:
    """The NewEvents the entity actor produces for a PostTelemetry (its own code builds them)."""
    capture = _Capture()
    actor = EntityActor(entity_id, cast(Address, capture), time.monotonic())
    actor.handle(PostTelemetry(entity_id, entries, None), time.monotonic())
    (append,) = capture.appends
    return append.events


# -- raw LMDB ceiling ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawResult:
    eps: float
    commit_p50_ms: float  # latency of one fsync'd transaction (begin to commit)
    commit_p99_ms: float


def measure_raw(opts: Options, workdir: Path) -> RawResult:
    """Events/s of plain encoded appends, ``opts.batch`` per fsync'd transaction, one thread."""
    entity = uuid.uuid4()
    batches = [new_events(entity, make_entries(opts.batch, _TS0 + k * opts.batch)) for k in range(64)]
    with tempfile.TemporaryDirectory(prefix="raw-", dir=workdir) as tmp:
        env = lmdb.open(tmp, map_size=8 << 30, max_dbs=4, lock=True, sync=True, metasync=True,
                        readahead=False)
        try:
            db = env.open_db(b"events")
            nil = NIL_UUID.bytes
            u64, encode, uuid4 = codec.u64, codec.encode_event, uuid.uuid4
            seq = 1
            events_done = 0
            k = 0
            commits: list[float] = []
            clock = time.perf_counter
            start = clock()
            deadline = start + opts.duration
            while (began := clock()) < deadline:
                now_ms = time.time_ns() // 1_000_000
                with env.begin(write=True) as txn:
                    for event in batches[k % len(batches)]:
                        value = encode(event, event_id=uuid4().bytes, created_time=now_ms,
                                       tenant_id=nil, edge_id=nil)
                        txn.put(u64(seq), value, db=db, append=True)
                        seq += 1
                commits.append((clock() - began) * 1000.0)
                events_done += opts.batch
                k += 1
            elapsed = clock() - start
        finally:
            env.close()
    commits.sort()
    return RawResult(events_done / elapsed, percentile(commits, 50), percentile(commits, 99))


# -- in-process API --------------------------------------------------------------------------------


def measure_inproc(opts: Options, workdir: Path) -> float:
    """Events/s committed through app.service.post_entries by ``opts.threads`` threads."""
    with inproc_app(workdir, "inproc-") as app:
        return _drive_inproc(app, opts)


def _drive_inproc(app: Any, opts: Options) -> float:
    device_ids = create_devices(app, "bench", opts.inproc_devices)
    batches = [make_entries(opts.batch, _TS0 + k * opts.batch) for k in range(64)]
    tally = post_closed_loop(app.service.post_entries, device_ids, batches,
                             threads=opts.threads, window=opts.window, duration=opts.duration,
                             what="in-process post_entries")
    if tally.uncommitted:
        raise RuntimeError(f"in-process post_entries failed: {tally.uncommitted:,} entries in "
                           "flight at the end were not committed 60 s later")
    return tally.committed / opts.duration


# -- HTTP against a real agent ---------------------------------------------------------------------


@dataclass
class HttpTally:
    """Answers seen by the client: everything but 200 is an error."""

    errors: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, what: str) -> None:
        self.errors += 1
        if len(self.examples) < 5 and what not in self.examples:
            self.examples.append(what)


@dataclass
class HttpResults:
    batched_pps: list[float] = field(default_factory=list)
    single_rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = math.nan
    exit_code: int | None = None
    tally: HttpTally = field(default_factory=HttpTally)


class Agent:
    """``edge-sync run`` as a subprocess on free loopback ports and a temporary store."""

    def __init__(self, data_dir: Path) -> None:
        self.http_port = free_port()
        self.admin_port = free_port()
        env = edge_env(data_dir, http_port=self.http_port, admin_port=self.admin_port)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_sync.cli.edge", "run"],
            env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
        )

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def device_api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def wait_ready(self, session: aiohttp.ClientSession, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with code {self.proc.returncode} during start-up")
            try:
                async with session.get(f"{self.admin}/api/status") as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.05)
        raise RuntimeError(f"agent not ready after {timeout:.0f}s: {last}")

    async def create_device(self, session: aiohttp.ClientSession, name: str) -> str:
        async with session.post(f"{self.admin}/api/devices", json={"name": name}) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"creating device {name}: HTTP {resp.status} {text[:200]}")
            return str(json.loads(text)["token"])

    def stop(self, *, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"agent did not stop within {timeout:.0f}s of SIGTERM; killed") from None


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, tally: HttpTally
) -> bool:
    try:
        async with session.post(url, data=body, headers=_JSON) as resp:
            payload = await resp.read()
            if resp.status == 200:
                return True
            tally.bad(f"HTTP {resp.status}: {payload[:200]!r}")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        tally.bad(f"client error: {exc!r}")
    return False


async def closed_loop(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    bodies: Sequence[bytes],
    *,
    clients: int,
    duration: float,
    tally: HttpTally,
) -> float:
    """Requests/s answered 200 within ``duration`` by ``clients`` tasks, each one at a time."""
    loop = asyncio.get_running_loop()
    ok = 0
    deadline = loop.time() + duration

    async def client(index: int) -> None:
        nonlocal ok
        i = index
        while loop.time() < deadline:
            good = await _post(session, urls[i % len(urls)], bodies[i % len(bodies)], tally)
            if good and loop.time() <= deadline:
                ok += 1
            i += clients

    await asyncio.gather(*(client(c) for c in range(clients)))
    return ok / duration


async def open_loop(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    body: bytes,
    *,
    rate: float,
    duration: float,
    tally: HttpTally,
) -> list[float]:
    """Latencies (ms, sorted) of requests sent on a fixed schedule, counted from their slot."""
    n = max(1, int(rate * duration))
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    clock = time.perf_counter

    async def one(url: str, scheduled: float) -> None:
        if await _post(session, url, body, tally):
            latencies.append((clock() - scheduled) * 1000.0)

    t0 = clock() + 0.01
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(urls[i % len(urls)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    latencies.sort()
    return latencies


async def measure_http(opts: Options, workdir: Path) -> HttpResults:
    out = HttpResults()
    tally = out.tally
    agent = Agent(workdir / "agent")
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as admin:
            await agent.wait_ready(admin)
            progress(f"agent pid {agent.proc.pid} ready (device API :{agent.http_port}, "
                     f"admin :{agent.admin_port}); creating {opts.http_devices} devices")
            tokens = [await agent.create_device(admin, f"bench-{i}") for i in range(opts.http_devices)]
        urls = [f"{agent.device_api}/api/v1/{t}/telemetry" for t in tokens]
        batched_bodies = [
            json.dumps([{"ts": _TS0 + k * opts.batch + i, "values": {"v": i}} for i in range(opts.batch)],
                       separators=(",", ":")).encode()
            for k in range(8)
        ]
        single_body = json.dumps({"v": 1}).encode()

        def session(limit: int) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0), timeout=timeout
            )

        async with (
            session(opts.batched_clients) as batched,
            session(opts.single_clients) as single,
            session(1024) as paced,
        ):
            progress("warm-up (not measured)")
            await closed_loop(batched, urls, batched_bodies, clients=opts.batched_clients,
                              duration=min(0.5, opts.duration), tally=tally)
            await closed_loop(single, urls, [single_body], clients=opts.single_clients,
                              duration=min(0.5, opts.duration), tally=tally)
            await open_loop(paced, urls, single_body, rate=opts.rate,
                            duration=min(0.5, opts.latency_duration), tally=tally)
            for run in range(1, opts.runs + 1):
                cpu = CpuMeter(agent.proc.pid)
                rps = await closed_loop(batched, urls, batched_bodies, clients=opts.batched_clients,
                                        duration=opts.duration, tally=tally)
                out.batched_pps.append(rps * opts.batch)
                progress(f"run {run}/{opts.runs}: http batched {rps * opts.batch:,.0f} points/s "
                         f"({rps:,.0f} requests/s; {cpu.report()})")
                cpu = CpuMeter(agent.proc.pid)
                rps = await closed_loop(single, urls, [single_body], clients=opts.single_clients,
                                        duration=opts.duration, tally=tally)
                out.single_rps.append(rps)
                progress(f"run {run}/{opts.runs}: http single {rps:,.0f} requests/s ({cpu.report()})")
                cpu = CpuMeter(agent.proc.pid)
                latencies = await open_loop(paced, urls, single_body, rate=opts.rate,
                                            duration=opts.latency_duration, tally=tally)
                out.p50_ms.append(percentile(latencies, 50))
                out.p99_ms.append(percentile(latencies, 99))
                progress(f"run {run}/{opts.runs}: latency at {opts.rate:,.0f}/s: "
                         f"p50 {out.p50_ms[-1]:.2f} ms, p99 {out.p99_ms[-1]:.2f} ms "
                         f"(max {latencies[-1] if latencies else math.nan:.2f} ms; {cpu.report()})")
        if agent.proc.poll() is None:
            out.peak_rss_mb = peak_rss_mb(agent.proc.pid)
        else:
            progress(f"the agent died during the runs (exit code {agent.proc.returncode})")
    finally:
        out.exit_code = agent.stop()
        progress(f"agent stopped with exit code {out.exit_code}")
    return out


# -- the benchmark ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/bench ingest",
        description="Ingest throughput and latency: in-process API vs raw LMDB, device HTTP API. "
        "Progress goes to stderr; the last stdout line is the JSON result.",
    )
    p.add_argument("--runs", type=int, default=None, help="repeat each measurement N times, report "
                   "the median (default 3)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per throughput measurement (default 3)")
    p.add_argument("--latency-duration", type=float, default=None,
                   help="seconds per open-loop latency measurement (default 5)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 run, 1 s per measurement")
    p.add_argument("--only", choices=["all", "inproc", "http"], default="all",
                   help="run only the in-process or only the HTTP measurements")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s of the latency test")
    p.add_argument("--threads", type=int, default=4, help="in-process posting threads")
    p.add_argument("--window", type=int, default=32, help="outstanding futures per thread")
    p.add_argument("--batched-clients", type=int, default=8,
                   help="concurrent HTTP clients posting batches")
    p.add_argument("--single-clients", type=int, default=32,
                   help="concurrent HTTP clients posting single points")
    args = p.parse_args(list(argv))
    runs, duration, latency = (1, 1.0, 1.0) if args.quick else (3, 3.0, 5.0)
    opts = Options(
        runs=args.runs if args.runs is not None else runs,
        duration=args.duration if args.duration is not None else duration,
        latency_duration=args.latency_duration if args.latency_duration is not None else latency,
        rate=args.rate,
        threads=args.threads,
        window=args.window,
        batched_clients=args.batched_clients,
        single_clients=args.single_clients,
        only=args.only,
    )
    if opts.runs < 1 or opts.duration <= 0 or opts.latency_duration <= 0 or opts.rate <= 0:
        p.error("--runs, --duration, --latency-duration and --rate must be positive")
    if min(opts.threads, opts.window, opts.batched_clients, opts.single_clients) < 1:
        p.error("--threads, --window, --batched-clients and --single-clients must be at least 1")
    return opts


def result_line(
    opts: Options,
    raw: Sequence[float],
    inproc: Sequence[float],
    raw_commit_p99: Sequence[float],
    http: HttpResults | None,
) -> dict[str, Any]:
    ratios = [i / r for i, r in zip(inproc, raw, strict=True) if r > 0]
    inproc_eps, raw_eps = median(inproc), median(raw)
    ratio = inproc_eps / raw_eps if raw_eps > 0 else math.nan
    h = http or HttpResults()
    figures: dict[str, float] = {
        "inproc_eps": inproc_eps,
        "raw_ceiling_eps": raw_eps,
        "inproc_ratio": ratio,
        "http_batched_pps": median(h.batched_pps),
        "http_single_rps": median(h.single_rps),
        "p50_ms": median(h.p50_ms),
        "p99_ms": median(h.p99_ms),
        "raw_commit_p99_ms": median(raw_commit_p99),
    }
    meets: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        value = figures[key]
        if math.isnan(value):
            meets[key] = None
        else:
            meets[key] = value < target if key == "p99_ms" else value >= target
    digits = {"inproc_ratio": 3, "p50_ms": 2, "p99_ms": 2, "raw_commit_p99_ms": 2}
    samples: Mapping[str, Sequence[float]] = {
        "inproc_eps": inproc,
        "raw_ceiling_eps": raw,
        "inproc_ratio": ratios,
        "http_batched_pps": h.batched_pps,
        "http_single_rps": h.single_rps,
        "p50_ms": h.p50_ms,
        "p99_ms": h.p99_ms,
        "raw_commit_p99_ms": raw_commit_p99,
    }
    line: dict[str, Any] = {"bench": "ingest"}
    line.update({k: rounded(v, digits.get(k, 0)) for k, v in figures.items()})
    line["peak_rss_mb"] = rounded(h.peak_rss_mb, 1)
    line["http_errors"] = h.tally.errors
    line["agent_exit_code"] = h.exit_code
    line["runs"] = opts.runs
    line["duration_s"] = opts.duration
    line["latency_duration_s"] = opts.latency_duration
    line["samples"] = {k: [rounded(v, digits.get(k, 0)) for v in vs] for k, vs in samples.items()}
    line["targets"] = TARGETS
    line["meets_targets"] = meets
    return line


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    raw: list[float] = []
    inproc: list[float] = []
    commit_p99: list[float] = []
    http: HttpResults | None = None
    progress(f"ingest: {opts.runs} run(s), {opts.duration:g} s per throughput measurement, "
             f"{opts.latency_duration:g} s per latency measurement")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        if opts.only in ("all", "inproc"):
            for run in range(1, opts.runs + 1):
                cpu = CpuMeter(os.getpid())
                raw_run = measure_raw(opts, workdir)
                raw.append(raw_run.eps)
                commit_p99.append(raw_run.commit_p99_ms)
                progress(f"run {run}/{opts.runs}: raw LMDB ceiling {raw[-1]:,.0f} events/s "
                         f"(cpu {cpu.percent():.0f}%; transaction of {opts.batch}: "
                         f"p50 {raw_run.commit_p50_ms:.2f} ms, p99 {raw_run.commit_p99_ms:.2f} ms)")
                cpu = CpuMeter(os.getpid())
                inproc.append(measure_inproc(opts, workdir))
                progress(f"run {run}/{opts.runs}: in-process {inproc[-1]:,.0f} events/s "
                         f"(ratio {inproc[-1] / raw[-1]:.3f}; cpu {cpu.percent():.0f}%, "
                         "including set-up)")
        if opts.only in ("all", "http"):
            http = asyncio.run(measure_http(opts, workdir))
    line = result_line(opts, raw, inproc, commit_p99, http)
    emit(line)
    failed = False
    if http is not None and http.tally.errors:
        progress(f"FAILED: {http.tally.errors} HTTP request(s) not answered 200, e.g. "
                 + "; ".join(http.tally.examples))
        failed = True
    if http is not None and http.exit_code != 0:
        progress(f"FAILED: the agent exited with code {http.exit_code} after SIGTERM (expected 0)")
        failed = True
    return 1 if failed else 0
