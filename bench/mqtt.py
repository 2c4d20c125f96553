"""``scripts/bench mqtt``: the device MQTT server of ``edge-sync run`` against Mosquitto, with
the same load client (bench/mqtt_load.py) for both, on loopback.

Servers, each a real subprocess started for the measurements:

- ``edge_sync``: ``edge-sync run`` on a fresh store (``EDGE_MQTT_ENABLED=true``, free MQTT,
  device HTTP and admin ports, no cloud link: the events are kept for a cloud that is not
  configured), one process per run. Devices are provisioned through its admin API with the
  access tokens ``bench-mqtt-00000``, ``bench-mqtt-00001``...; client i connects with token i.
  A PUBACK means the event is committed (fsync'd) to LMDB.
- ``mosquitto_default`` and ``mosquitto_save_every_change``: Debian's ``mosquitto``
  (installed with apt-get when missing), a fresh broker for each measurement, with
  ``persistence true``, ``max_queued_messages 0`` (no limit: nothing dropped) and
  ``set_tcp_nodelay true``; the first keeps the default autosave (every 1800 s, and at exit),
  the second adds ``autosave_on_changes true`` + ``autosave_interval 1`` (the whole database
  written after every change). Before the load, a persistent session (clean session false)
  subscribes to ``bench/+/telemetry`` at QoS 1 and disconnects: the broker keeps every message
  for it, as edge-sync keeps every event for its cloud. Without such a subscriber Mosquitto
  drops a publish nobody subscribed to, stores nothing, and neither config would save. Client
  i publishes on ``bench/{i:05d}/telemetry``.

Measurements, for each server (the order of the servers alternates between runs):

- ``throughput``: with 1, 10 and 100 clients (``--clients``), each keeping ``--window`` (100)
  QoS 1 PUBLISHes in flight (a PUBACK releases the next), payload ``{"v": n}``: PUBACKs
  received per second over ``--duration`` s (5) after ``--warmup`` s (1), and per second of
  that interval (``per_second``).
- ``latency``: an open loop at ``--rate`` (1,000) messages/s over ``--latency-clients`` (10)
  clients for ``--latency-duration`` s (5) after 0.5 s of warm-up: p50/p99/max from each
  message's due time to its PUBACK (a late send counts; ``send_late_p99_ms`` says how late
  the client was).
- ``idle``: ``--idle-clients`` (10,000) connections, each CONNECTed (edge-sync: with a valid
  token) with a 600 s keep-alive and then silent; once all are connected (and counted
  ESTABLISHED on the server's port) and held for a second: the server's VmRSS, and its peak
  VmHWM since it started (edge-sync: start-up, provisioning and the connections; Mosquitto:
  default config only). Taken on edge-sync before its throughput runs.

The load client: ``--client-procs`` (2) worker processes, each one asyncio loop (clients split
round-robin); packets pre-encoded with amqtt's codec; ``client_cpu_pct`` is the CPU of all
of them over the measured interval (% of one core; the machine has ``cpus`` cores, shared with
the server) and ``server_cpu_pct`` the server's.

The JSON line (last line of stdout): medians over ``--runs`` runs (3) for every figure, the
ratios edge_sync / mosquitto_save_every_change and edge_sync / mosquitto_default per client
count (from the medians; ``samples`` has each run's figures and ratios), ``targets`` and
``met`` (null when not measured), ``machine`` (load average and pressure at the start and
the end: the machine is shared), ``revision`` (git describe of the tree measured) and
``errors``. For edge-sync, ``msgs_per_commit`` is the messages per group commit (fsync) in
each throughput measurement (its commit counter, warm-up and drain included).

``--only idle,throughput,latency``: some of the three measurements (e.g. ``--only throughput
--clients 10 --no-mosquitto`` for one focused figure); edge-sync is then provisioned with only
the devices they use.

``--profile DIR``: after the measurements of the first run, one more 10-client throughput run
(not in the figures) with ``py-spy record --gil --threads --format raw`` on edge-sync; the
collapsed stacks go to DIR and their summary (bench/mqtt_profile.py: µs of GIL-held time per
message in each step of a PUBLISH, beside the server's whole CPU per message) to ``profile``.

Exit 1 (after the JSON line) when a measurement failed (a server did not start or stop
cleanly, a connection was refused or closed, a PUBACK missing); a missed target is a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench import mqtt_profile
from bench.common import (
    SetupError,
    emit,
    ensure_mosquitto,
    established,
    free_port,
    median,
    peak_rss_mb,
    percentile,
    progress,
    raise_open_files,
    rounded,
    rss_parts_mb,
    tail,
    terminate,
    wait_port,
)
from bench.common import mosquitto_config as write_mosquitto_config
from bench.e2e import machine_load
from bench.mqtt_load import Job, JobResult, LoadError, run_job, subscribe_offline

EDGE = "edge_sync"
MOSQ_DEFAULT = "mosquitto_default"
MOSQ_SAVE = "mosquitto_save_every_change"
SYSTEMS = (EDGE, MOSQ_DEFAULT, MOSQ_SAVE)
TOKEN = "bench-mqtt-{i:05d}"
EDGE_TOPIC = "v1/devices/me/telemetry"
MOSQ_TOPIC = "bench/{i:05d}/telemetry"
MOSQ_FILTER = "bench/+/telemetry"
HEADLINE_CLIENTS = 10
MEASUREMENTS = ("idle", "throughput", "latency")

TARGETS: dict[str, dict[str, Any]] = {
    "edge_sync_msgs_per_s_10_clients": {"at_least": 20_000},
    "ratio_to_mosquitto_save_every_change_10_clients": {"at_least": 20.0},
    "ratio_to_mosquitto_default_10_clients": {"at_least": 0.5},
    "edge_sync_p99_ms_at_1000_per_s": {"below": 20.0},
    "edge_sync_idle_10000_peak_rss_mb": {"below": 300.0},
}


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = 3
    clients: tuple[int, ...] = (1, 10, 100)
    window: int = 100
    duration: float = 5.0
    warmup: float = 1.0
    rate: float = 1000.0
    latency_clients: int = 10
    latency_duration: float = 5.0
    idle_clients: int = 10_000
    idle_hold: float = 1.0
    client_procs: int = 2
    mosquitto: bool = True
    install: bool = True
    profile: Path | None = None
    quick: bool = False
    only: tuple[str, ...] = ("idle", "throughput", "latency")
    """The measurements made (``--only``): a subset of MEASUREMENTS."""


@dataclass
class ServerRun:
    """One server's figures in one run."""

    throughput: dict[int, dict[str, Any]] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


# -- the servers ------------------------------------------------------------------------------------


class EdgeSync:
    """``edge-sync run`` with its MQTT server on, on a fresh store and free loopback ports."""

    def __init__(self, workdir: Path) -> None:
        self.mqtt_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.log = workdir / "edge-sync.log"
        self.env = dict(os.environ)
        self.env.update(
            EDGE_DATA_DIR=str(workdir / "store"),
            EDGE_HTTP_HOST="127.0.0.1", EDGE_HTTP_PORT=str(self.http_port),
            EDGE_ADMIN_HOST="127.0.0.1", EDGE_ADMIN_PORT=str(self.admin_port),
            EDGE_MQTT_ENABLED="true", EDGE_MQTT_HOST="127.0.0.1", EDGE_MQTT_PORT=str(self.mqtt_port),
            EDGE_LOG_LEVEL="WARNING", CLOUD_ROUTING_KEY="",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_sync.cli.edge", "run"],
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_port(self.mqtt_port, self.proc, "edge-sync run (MQTT)", self.log, timeout)
        wait_port(self.admin_port, self.proc, "edge-sync run (admin API)", self.log, timeout)

    def provision(self, count: int) -> float:
        """Devices bench-mqtt-00000.. with their names as access tokens; the seconds it took."""
        t0 = time.monotonic()
        asyncio.run(self._provision(count))
        return time.monotonic() - t0

    async def _provision(self, count: int) -> None:
        url = f"http://127.0.0.1:{self.admin_port}/api/devices"
        gate = asyncio.Semaphore(64)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=64)) as session:
            async def one(i: int) -> None:
                name = TOKEN.format(i=i)
                async with gate, session.post(url, json={"name": name, "token": name}) as resp:
                    body = await resp.text()
                    if resp.status != 201:
                        raise SetupError(f"creating device {name}: HTTP {resp.status} {body[:200]}")

            await asyncio.gather(*(one(i) for i in range(count)))

    def commits(self) -> float:
        """Group commits (fsyncs) so far: edge_sync_queue_commits_total of the admin API's status."""
        url = f"http://127.0.0.1:{self.admin_port}/api/status"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return float(json.loads(resp.read())["metrics"].get("edge_sync_queue_commits_total", 0))

    def stop(self) -> int | None:
        return None if self.proc is None else terminate(self.proc)


class Mosquitto:
    """One broker with a generated config (``save_every_change`` or the default autosave)."""

    def __init__(self, binary: str, workdir: Path, name: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / f"{name}-{self.port}"
        self.dir.mkdir(parents=True)
        settings = ["persistence true", f"persistence_location {self.dir}/",
                    "max_queued_messages 0", "set_tcp_nodelay true"]
        if name == MOSQ_SAVE:
            settings += ["autosave_on_changes true", "autosave_interval 1"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(write_mosquitto_config(f"scripts/bench mqtt: {name}", self.port,
                                                    self.dir, settings))
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, subscriber: bool) -> None:
        with (self.dir / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "mosquitto", self.log)
        if subscriber:
            subscribe_offline(self.port, "bench-store", MOSQ_FILTER)

    def stop(self) -> int | None:
        return None if self.proc is None else terminate(self.proc)


# -- the measurements --------------------------------------------------------------------------------


def throughput_figures(result: JobResult, duration: float) -> dict[str, Any]:
    acked = result.acked
    return {
        "msgs_per_s": result.total_acked / duration,
        "per_second": result.per_second,
        "slowest_client_share": (min(acked) * len(acked) / sum(acked)) if sum(acked) else 0.0,
        "server_cpu_pct": result.server_cpu_pct,
        "client_cpu_pct": result.client_cpu_pct,
    }


def latency_figures(result: JobResult, opts: Options) -> dict[str, Any]:
    lat = result.latencies
    return {
        "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "acked": len(lat), "offered": int(opts.rate * opts.latency_duration),
        "send_late_p99_ms": percentile(result.lateness, 99) * 1000,
        "overruns": result.overruns,
        "server_cpu_pct": result.server_cpu_pct, "client_cpu_pct": result.client_cpu_pct,
    }


class IdleProbe:
    """on_connected of the idle job: after ``hold`` s, the server's connections and RSS."""

    def __init__(self, pid: int, port: int, clients: int, hold: float) -> None:
        self.pid, self.port, self.clients, self.hold = pid, port, clients, hold
        self.out: dict[str, Any] = {}

    def __call__(self) -> None:
        time.sleep(self.hold)
        self.out["established"] = established(self.port, self.pid)
        self.out["rss_mb"] = rss_parts_mb(self.pid).get("rss", float("nan"))
        self.out["peak_rss_mb"] = peak_rss_mb(self.pid)
        if self.out["established"] < self.clients:
            progress(f"    only {self.out['established']} of {self.clients} connections "
                     "ESTABLISHED on the server")


IDLE_QUIET_S = 30.0
"""How long the idle measurement waits for the earlier measurements' connections to be gone
from the server (a client's close reaches the server a moment after the client returns)."""


def run_idle(opts: Options, pid: int, port: int, base: Job) -> dict[str, Any]:
    quiet_by = time.monotonic() + IDLE_QUIET_S
    while (left := established(port, pid)) and time.monotonic() < quiet_by:
        time.sleep(0.05)  # polling the kernel's table: there is nothing to wait on
    if left:
        progress(f"    {left} earlier connections still ESTABLISHED on the server after "
                 f"{IDLE_QUIET_S:.0f}s: they count in the idle figures")
    before = rss_parts_mb(pid).get("rss", float("nan"))
    probe = IdleProbe(pid, port, opts.idle_clients, opts.idle_hold)
    job = replace(base, kind="idle", clients=opts.idle_clients)
    result = run_job(job, opts.client_procs, on_connected=probe)
    out = dict(probe.out)
    out.update(clients=opts.idle_clients, rss_before_mb=before, connect_s=result.connect_s)
    out["kb_per_connection"] = (out["rss_mb"] - before) * 1024 / opts.idle_clients
    progress(f"    idle: {out['established']:,} connections ESTABLISHED after {result.connect_s:.1f}s; "
             f"RSS {before:.1f} -> {out['rss_mb']:.1f} MiB ({out['kb_per_connection']:.1f} KiB each), "
             f"peak {out['peak_rss_mb']:.1f} MiB")
    return out


def run_throughput(opts: Options, base: Job, clients: int, pid: int,
                   on_connected: Callable[[], None] | None = None,
                   commits: Callable[[], float] | None = None) -> dict[str, Any]:
    """One throughput measurement; with ``commits`` (edge-sync's commit counter) also the
    messages per group commit over the whole job (warm-up and drain included)."""
    job = replace(base, kind="throughput", clients=clients, window=opts.window,
                  warmup_s=opts.warmup, duration_s=opts.duration)
    before = commits() if commits is not None else 0.0
    result = run_job(job, opts.client_procs, server_pid=pid, on_connected=on_connected)
    figures = throughput_figures(result, opts.duration)
    note = ""
    if commits is not None:
        done = commits() - before
        figures["msgs_per_commit"] = result.sent / done if done else float("nan")
        note = f"; {figures['msgs_per_commit']:.0f} msgs per commit"
    progress(f"    {clients:>3} clients: {figures['msgs_per_s']:>9,.0f} msgs/s "
             f"(per second {result.per_second}; server cpu {figures['server_cpu_pct']:.0f}%, "
             f"clients cpu {figures['client_cpu_pct']:.0f}% over {result.workers} procs{note})")
    return figures


def run_latency(opts: Options, base: Job, pid: int) -> dict[str, Any]:
    job = replace(base, kind="latency", clients=opts.latency_clients, rate=opts.rate,
                  warmup_s=0.5, duration_s=opts.latency_duration)
    result = run_job(job, opts.client_procs, server_pid=pid)
    figures = latency_figures(result, opts)
    progress(f"    latency at {opts.rate:,.0f}/s: p50 {figures['p50_ms']:.2f} ms, p99 "
             f"{figures['p99_ms']:.2f} ms, max {figures['max_ms']:.1f} ms ({figures['acked']} acked; "
             f"sends late p99 {figures['send_late_p99_ms']:.2f} ms; server cpu "
             f"{figures['server_cpu_pct']:.0f}%)")
    return figures


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.access(found, os.X_OK) else None


def profile_edge(opts: Options, base: Job, edge: EdgeSync) -> dict[str, Any]:
    """An extra, unmeasured 10-client throughput run with py-spy recording the thread that
    holds the GIL (``--gil``, 250 Hz, every thread); its summary (bench/mqtt_profile.py)."""
    assert opts.profile is not None
    spy = py_spy()
    if spy is None:
        progress("    --profile: py-spy not found (.venv/bin/pip install py-spy); not profiling")
        return {"error": "py-spy not found"}
    opts.profile.mkdir(parents=True, exist_ok=True)
    out = opts.profile / f"edge-sync-{HEADLINE_CLIENTS}-clients.txt"
    seconds, rate = max(1, int(opts.warmup + opts.duration)), 250
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        progress(f"    py-spy on pid {edge.pid} for {seconds}s -> {out}")
        with (opts.profile or Path(".")).joinpath("py-spy.log").open("ab") as log:
            procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(edge.pid), "--duration", str(seconds), "--rate", str(rate),
                 "--gil", "--threads", "--format", "raw", "--output", str(out)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))

    progress(f"  profiling: one more {HEADLINE_CLIENTS}-client run (not in the figures)")
    figures = run_throughput(opts, base, HEADLINE_CLIENTS, edge.pid, start)
    if not procs or procs[0].wait(60) != 0 or not out.exists():
        return {"error": f"py-spy failed: {tail(opts.profile / 'py-spy.log', 5)}"}
    summary = mqtt_profile.summarise(out, msgs_per_s=figures["msgs_per_s"], seconds=seconds, rate_hz=rate)
    summary["server_cpu_us_per_msg"] = round(
        figures["server_cpu_pct"] / 100 / figures["msgs_per_s"] * 1e6, 1) if figures["msgs_per_s"] else None
    summary["stacks"] = str(out)
    progress(f"    profile: {summary['gil_us_per_msg']} us of GIL-held time per message "
             f"(server cpu {summary['server_cpu_us_per_msg']} us), GIL held "
             f"{summary['gil_held_share'] * 100:.0f}% of the time; top: " + ", ".join(
                 f"{k} {v}" for k, v in list(summary["us_per_msg"].items())[:5]))
    return summary


def measure_edge(opts: Options, workdir: Path, run: int) -> ServerRun:
    out = ServerRun()
    edge = EdgeSync(workdir)
    base = Job(kind="throughput", port=edge.mqtt_port, clients=1, username=TOKEN, topic=EDGE_TOPIC)
    try:
        edge.start()
        devices = max(opts.idle_clients if "idle" in opts.only else 1,
                      *(opts.clients if "throughput" in opts.only or opts.profile else (1,)),
                      opts.latency_clients if "latency" in opts.only else 1,
                      HEADLINE_CLIENTS if opts.profile else 1)
        took = edge.provision(devices)
        progress(f"  edge-sync pid {edge.pid} (MQTT :{edge.mqtt_port}): {devices:,} devices "
                 f"provisioned in {took:.1f}s")
        if "idle" in opts.only:
            out.idle = run_idle(opts, edge.pid, edge.mqtt_port, base)
        if "throughput" in opts.only:
            for clients in opts.clients:
                out.throughput[clients] = run_throughput(opts, base, clients, edge.pid,
                                                         commits=edge.commits)
        if "latency" in opts.only:
            out.latency = run_latency(opts, base, edge.pid)
        if opts.profile is not None and run == 1:
            out.profile = profile_edge(opts, base, edge)
    except (SetupError, LoadError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        out.errors.append(f"edge-sync run {run}: {type(exc).__name__}: {exc}")
        progress(f"  FAILED: {out.errors[-1]}")
    finally:
        code = edge.stop()
        if code not in (0, None):
            out.errors.append(f"edge-sync run {run}: exit code {code} after SIGTERM: {tail(edge.log, 10)}")
    return out


def measure_mosquitto(opts: Options, workdir: Path, run: int, binary: str, name: str) -> ServerRun:
    out = ServerRun()
    base = Job(kind="throughput", port=0, clients=1, username=TOKEN, topic=MOSQ_TOPIC)

    # (what, client count or 0 for idle / -1 for latency): each on a fresh broker
    steps = ([("idle", 0)] if name == MOSQ_DEFAULT and "idle" in opts.only else []) + [
        (f"throughput {c}", c) for c in opts.clients if "throughput" in opts.only] + (
        [("latency", -1)] if "latency" in opts.only else [])
    for what, clients in steps:
        broker: Mosquitto | None = None
        try:
            broker = Mosquitto(binary, workdir, name)
            broker.start(subscriber=clients != 0)  # the idle connections publish nothing
            job = replace(base, port=broker.port)
            if clients == 0:
                out.idle = run_idle(opts, broker.pid, broker.port, job)
            elif clients > 0:
                out.throughput[clients] = run_throughput(opts, job, clients, broker.pid)
            else:
                out.latency = run_latency(opts, job, broker.pid)
        except (SetupError, LoadError, OSError, TimeoutError) as exc:
            out.errors.append(f"{name} run {run} {what}: {type(exc).__name__}: {exc}")
            progress(f"  FAILED: {out.errors[-1]}")
        finally:
            code = broker.stop() if broker is not None else None
            if code not in (0, None):
                assert broker is not None
                out.errors.append(f"{name} run {run} {what}: exit code {code} after SIGTERM: "
                                  f"{tail(broker.log, 10)}")
    return out


# -- the report -------------------------------------------------------------------------------------


def _digits(key: str) -> int:
    return 2 if key.endswith("_ms") else 3 if key in ("slowest_client_share",) else 1


def _med(values: Sequence[Any], key: str) -> Any:
    nums = [v for v in values if isinstance(v, int | float)]
    if nums and all(isinstance(v, int) for v in nums):
        return round(median(nums))  # a count stays a count
    return rounded(median(nums), _digits(key)) if nums else None


def summarise(opts: Options, runs: list[dict[str, ServerRun]]) -> dict[str, Any]:
    systems = [s for s in SYSTEMS if any(s in r for r in runs)]
    throughput: dict[str, dict[str, Any]] = {}
    cpu: dict[str, dict[str, Any]] = {}
    commits: dict[str, dict[str, Any]] = {}
    latency: dict[str, dict[str, Any]] = {}
    idle: dict[str, dict[str, Any]] = {}
    for s in systems:
        mine = [r[s] for r in runs if s in r]
        throughput[s] = {str(c): _med([m.throughput[c]["msgs_per_s"] for m in mine if c in m.throughput],
                                      "msgs_per_s") for c in opts.clients}
        cpu[s] = {str(c): {k: _med([m.throughput[c].get(k) for m in mine if c in m.throughput], k)
                           for k in ("server_cpu_pct", "client_cpu_pct")} for c in opts.clients}
        if s == EDGE:
            commits[s] = {str(c): _med([m.throughput[c].get("msgs_per_commit") for m in mine
                                        if c in m.throughput], "msgs_per_commit") for c in opts.clients}
        latency[s] = {k: _med([m.latency.get(k) for m in mine], k)
                      for k in ("p50_ms", "p99_ms", "max_ms", "acked", "send_late_p99_ms",
                                "server_cpu_pct", "client_cpu_pct")}
        if any(m.idle for m in mine):
            idle[s] = {k: _med([m.idle.get(k) for m in mine], k)
                       for k in ("clients", "established", "rss_before_mb", "rss_mb", "peak_rss_mb",
                                 "kb_per_connection", "connect_s")}

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 2) if isinstance(a, float | int) and isinstance(b, float | int) and b else None

    ratios = {f"{EDGE}/{other}": {str(c): ratio(throughput.get(EDGE, {}).get(str(c)),
                                                throughput.get(other, {}).get(str(c)))
                                  for c in opts.clients}
              for other in (MOSQ_SAVE, MOSQ_DEFAULT)}
    head = str(HEADLINE_CLIENTS)
    figures = {
        "edge_sync_msgs_per_s_10_clients": throughput.get(EDGE, {}).get(head),
        "ratio_to_mosquitto_save_every_change_10_clients": ratios[f"{EDGE}/{MOSQ_SAVE}"].get(head),
        "ratio_to_mosquitto_default_10_clients": ratios[f"{EDGE}/{MOSQ_DEFAULT}"].get(head),
        "edge_sync_p99_ms_at_1000_per_s": latency.get(EDGE, {}).get("p99_ms") if opts.rate == 1000 else None,
        "edge_sync_idle_10000_peak_rss_mb": (idle.get(EDGE, {}).get("peak_rss_mb")
                                             if opts.idle_clients == 10_000 else None),
    }
    met: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        got = figures[key]
        if got is None:
            met[key] = None
        else:
            met[key] = got >= target["at_least"] if "at_least" in target else got < target["below"]
    samples = []
    for r in runs:
        sample: dict[str, Any] = {}
        for s, m in r.items():
            sample[s] = {
                "throughput": {str(c): {k: (rounded(v, _digits(k)) if isinstance(v, float) else v)
                                        for k, v in f.items()} for c, f in m.throughput.items()},
                "latency": {k: rounded(v, _digits(k)) if isinstance(v, float) else v
                            for k, v in m.latency.items()},
                "idle": {k: rounded(v, _digits(k)) if isinstance(v, float) else v for k, v in m.idle.items()},
            }
        if EDGE in r:
            sample["ratios"] = {f"{EDGE}/{other}": {
                str(c): ratio(r[EDGE].throughput.get(c, {}).get("msgs_per_s"),
                              r[other].throughput.get(c, {}).get("msgs_per_s"))
                for c in opts.clients} for other in (MOSQ_SAVE, MOSQ_DEFAULT) if other in r}
        samples.append(sample)
    profile = next((r[EDGE].profile for r in runs if EDGE in r and r[EDGE].profile), None)
    return {"throughput_msgs_per_s": throughput, "ratios": ratios, "latency": latency, "idle": idle,
            "cpu_pct": cpu, "msgs_per_commit": commits, "figures": figures, "targets": TARGETS,
            "met": met, "samples": samples, "profile": profile}


def revision() -> str:
    """``git describe --always --dirty`` of the tree measured (BENCH_REVISION outside git)."""
    root = Path(__file__).resolve().parents[1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return done.stdout.strip()
    return os.environ.get("BENCH_REVISION", "unknown")


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/bench mqtt",
        description="QoS 1 throughput, PUBACK latency and idle-connection memory of edge-sync's "
        "device MQTT server against Mosquitto (default persistence and save on every change), "
        "with the same load client. Progress goes to stderr; the last stdout line is the JSON "
        "result.")
    p.add_argument("--runs", type=int, default=None, help="runs; medians reported (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke sizes: 1 run, 1 and 10 clients, "
                   "0.5 s measurements, 200 idle connections")
    p.add_argument("--clients", default=None, help="client counts, comma-separated (default 1,10,100)")
    p.add_argument("--window", type=int, default=100, help="PUBLISHes in flight per client (100)")
    p.add_argument("--duration", type=float, default=None, help="measured s per throughput run (5)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured s before it (1)")
    p.add_argument("--rate", type=float, default=1000.0, help="messages/s of the latency run (1000)")
    p.add_argument("--latency-clients", type=int, default=10, help="clients of the latency run (10)")
    p.add_argument("--latency-duration", type=float, default=None, help="measured s of it (5)")
    p.add_argument("--idle-clients", type=int, default=None, help="idle connections (10,000)")
    p.add_argument("--client-procs", type=int, default=2, help="load client processes (2)")
    p.add_argument("--no-mosquitto", action="store_true", help="edge-sync only")
    p.add_argument("--only", default=None, metavar="WHAT",
                   help="only these measurements, comma-separated, of " + ",".join(MEASUREMENTS)
                   + " (default all); e.g. --only throughput --clients 10 --no-mosquitto for a "
                   "focused throughput figure")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install mosquitto when it is missing (fail instead)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="one more 10-client run on edge-sync under py-spy (--gil); the stacks "
                   "go to DIR, their summary to the JSON line")
    a = p.parse_args(list(argv))
    quick = a.quick
    only = tuple(x.strip() for x in a.only.split(",") if x.strip()) if a.only else MEASUREMENTS
    if not only or any(x not in MEASUREMENTS for x in only):
        p.error(f"--only takes some of {','.join(MEASUREMENTS)}")
    clients = (tuple(int(x) for x in a.clients.split(",") if x.strip()) if a.clients
               else (1, 10) if quick else (1, 10, 100))
    opts = Options(
        runs=a.runs if a.runs is not None else (1 if quick else 3),
        clients=clients, window=a.window,
        duration=a.duration if a.duration is not None else (0.5 if quick else 5.0),
        warmup=a.warmup if a.warmup is not None else (0.2 if quick else 1.0),
        rate=a.rate, latency_clients=a.latency_clients,
        latency_duration=a.latency_duration if a.latency_duration is not None else (0.5 if quick else 5.0),
        idle_clients=a.idle_clients if a.idle_clients is not None else (200 if quick else 10_000),
        idle_hold=0.2 if quick else 1.0,
        client_procs=a.client_procs, mosquitto=not a.no_mosquitto, install=not a.no_install,
        profile=a.profile, quick=quick, only=only,
    )
    if (opts.runs < 1 or not clients or min(clients) < 1 or opts.window < 1 or opts.duration <= 0
            or opts.warmup < 0 or opts.rate <= 0 or opts.latency_clients < 1
            or opts.latency_duration <= 0 or opts.idle_clients < 1 or opts.client_procs < 1):
        p.error("counts, durations and the rate must be positive")
    return opts


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    limit = raise_open_files((opts.idle_clients if "idle" in opts.only else max(opts.clients)) + 1024)
    progress(f"mqtt: {opts.runs} run(s); clients {', '.join(map(str, opts.clients))} x window "
             f"{opts.window}, {opts.duration:g}s each; latency at {opts.rate:,.0f}/s over "
             f"{opts.latency_clients} clients; {opts.idle_clients:,} idle connections; "
             f"{opts.client_procs} client procs; {os.cpu_count()} cpus; open files {limit}")
    errors: list[str] = []
    binary, version = "", None
    if opts.mosquitto:
        try:
            binary, version = ensure_mosquitto(install=opts.install)
        except SetupError as exc:
            errors.append(f"mosquitto: {exc}")
            progress(f"FAILED: {exc}")
    systems = [EDGE] + ([MOSQ_DEFAULT, MOSQ_SAVE] if version is not None else [])
    machine = [machine_load()]
    runs: list[dict[str, ServerRun]] = []
    for run in range(1, opts.runs + 1):
        order = systems if run % 2 else list(reversed(systems))
        results: dict[str, ServerRun] = {}
        for name in order:
            progress(f"run {run}/{opts.runs}: {name}")
            with tempfile.TemporaryDirectory(prefix=f"bench-mqtt-{name}-") as tmp:
                if name == EDGE:
                    results[name] = measure_edge(opts, Path(tmp), run)
                else:
                    results[name] = measure_mosquitto(opts, Path(tmp), run, binary, name)
            errors += results[name].errors
        runs.append(results)
    machine.append(machine_load())
    line: dict[str, Any] = {"bench": "mqtt", "runs": opts.runs, "quick": opts.quick}
    line.update(summarise(opts, runs))
    line["setup"] = {
        "clients": list(opts.clients), "window": opts.window, "duration_s": opts.duration,
        "warmup_s": opts.warmup, "latency": {"rate": opts.rate, "clients": opts.latency_clients,
                                             "duration_s": opts.latency_duration},
        "idle_clients": opts.idle_clients, "client_procs": opts.client_procs,
        "only": list(opts.only),
        "payload": '{"v": n}', "edge_sync_topic": EDGE_TOPIC, "mosquitto_topic": MOSQ_TOPIC,
        "mosquitto": version,
    }
    line.update(cpus=os.cpu_count(), machine=machine, revision=revision(), errors=errors[:20])
    emit(line)
    if errors:
        progress("FAILED: " + "; ".join(errors[:5]))
        return 1
    return 0

