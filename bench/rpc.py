"""``scripts/bench rpc``: cloud -> device -> cloud, on loopback.

Processes: the reference cloud (``edge-cloud serve``) and the edge (``edge-sync run``), each a
real subprocess on a fresh store, the edge linked to the cloud with its default settings (only
the store, ports, log level and a short reconnect delay are set). The devices and the operator
are aiohttp clients in the benchmark's own process, on one asyncio loop: no thread per device.
Every run starts both processes anew; the JSON line has the medians over ``--runs`` runs.

Measurements:

- ``rtt`` at each ``--rates`` rate (default 100 and 1,000 requests/s): ``--devices`` (100)
  devices long-poll ``GET /api/v1/$TOKEN/rpc?timeout=60000`` on the edge and answer each request
  at once (``POST /api/v1/$TOKEN/rpc/{id}`` with ``{"k": k}``) before polling again. An open-loop
  operator sends ``POST /api/rpc/twoway/{device}`` to the cloud's admin API at the rate
  (``{"method": "echo", "params": {"k": k}, "timeout": 10000}``, devices round-robin) for
  ``--duration`` s after 0.5 s unmeasured. Round trip: from the moment the call is sent to its
  answer, which is the device's body (checked: 200 and ``{"k": k}``; anything else is an error).
  The path: cloud store -> gRPC downlink -> edge durable store -> the device's poll -> the
  device's answer, durable on the edge -> uplink (high lane) -> cloud apply -> the waiting REST
  call. ``p50_ms`` / ``p99_ms`` / ``max_ms`` (nearest rank; a call answered 504, no answer by
  the request's expirationTime, counts with the time it waited), ``timeouts`` (those 504s: an
  overload, not a wrong answer), ``late_answers`` (device answers refused 409 because their
  request had timed out meanwhile), ``achieved_rps`` (right answers per second, from the first
  measured send to the last answer), ``errors`` (wrong answers) and ``send_lateness_p99_ms`` (how
  late the open loop sent: it shares its loop with the devices).
- ``fanout``: ``--fanout-devices`` (1,000) devices each long-poll
  ``GET /api/v1/$TOKEN/attributes/updates?timeout=60000``; once the edge has accepted every poll
  (its ESTABLISHED connections on the device port, from /proc/net/tcp) and each device's entity
  actor has seen its poll (one telemetry post per device, which that actor handles after the
  poll), the operator sets a shared attribute on every device through the cloud's admin API
  (``POST /api/attributes``, one call per device: the API sets one device's attributes; all
  calls sent at once). ``fanout_s``: from the first call sent to the last device's poll
  returning (each poll checked: 200 and exactly ``{"setpoint": i}``); ``fanout_calls_s``: until
  the last admin call was answered.

Targets: round trip p99 under 50 ms at 100 requests/s; fan-out to 1,000 devices under 1 s.
The machine has 2 cores and three busy processes here (cloud, edge, clients): ``cpu_pct`` says
how much of a core each used per measurement; ``machine`` the load average and CPU/IO pressure
at the start and the end (the machine is shared).

Exit 1 (after the JSON line) when a run failed or any answer was wrong (not for timeouts, which
are figures); ``errors`` says why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    EdgeProcess,
    cpu_seconds,
    emit,
    median,
    percentile,
    progress,
    raise_open_files,
    rounded,
)
from bench.e2e import Cloud, PhaseError, machine_load

TARGETS = {"rtt_p99_ms_at_100": 50.0, "fanout_s": 1.0}  # both: below
POLL_MS = 60_000
WARMUP_S = 0.5
_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = 3
    rates: tuple[int, ...] = (100, 1000)
    duration: float = 5.0
    devices: int = 100
    fanout_devices: int = 1000


@dataclass
class RunResult:
    rtt: dict[int, dict[str, float]] = field(default_factory=dict)
    fanout_s: float = float("nan")
    fanout_calls_s: float = float("nan")
    cpu_pct: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


# -- the edge, as a subprocess --------------------------------------------------------------------


def start(edge: EdgeProcess, *, timeout: float = 60.0) -> None:
    """Spawn the edge and wait until its link is CONNECTED."""
    edge.spawn()
    assert edge.proc is not None
    deadline = time.monotonic() + timeout
    state = "no answer"
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise PhaseError(f"edge exited with {edge.proc.returncode}: {edge.tail()}")
        status = edge.answer(timeout=2.0)
        if status is not None:
            state = status["link"]["state"]
            if state == "CONNECTED":
                return
        time.sleep(_POLL_S)
    raise PhaseError(f"edge not CONNECTED after {timeout:.0f}s (last: {state}): {edge.tail()}")


# -- the clients ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    id: str
    token: str


class Clients:
    """The devices and the operator, on one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, cloud: Cloud, edge: EdgeProcess) -> None:
        self.s = session
        self.cloud_base = f"http://127.0.0.1:{cloud.admin_port}"
        self.edge_base = f"http://127.0.0.1:{edge.http_port}/api/v1"
        self.edge = edge
        self.cloud = cloud

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        async with self.s.request(method, url, data=data,
                                  headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.read()

    async def create_devices(self, count: int) -> list[Device]:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> Device:
            async with sem:
                status, raw = await self.call("POST", f"{self.cloud_base}/api/devices",
                                              {"edge": self.cloud.routing_key,
                                               "name": f"bench-{i}", "token": f"bench-tok-{i}"})
            if status != 201:
                raise PhaseError(f"device {i} not created: {status} {raw[:200]!r}")
            out = json.loads(raw)
            return Device(out["id"], out["token"])

        devices = list(await asyncio.gather(*(one(i) for i in range(count))))
        await self.until(self._nothing_queued, f"{count} devices on the edge", timeout=120)
        return devices

    def _nothing_queued(self) -> bool:
        url = f"{self.cloud_base}/api/status"
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            rows = json.loads(resp.read())["edges"]
        return all(r["queued_downlinks"] == 0 for r in rows)

    @staticmethod
    async def until(predicate: Any, what: str, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(predicate):
            if time.monotonic() > deadline:
                raise PhaseError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(_POLL_S)

    # -- round trips -------------------------------------------------------------------------

    async def device_loop(self, dev: Device, errors: list[str], late: list[int]) -> None:
        """Poll; answer each request with its params; poll again (until cancelled). An answer
        refused with 409 because the request timed out meanwhile is counted in ``late``."""
        while True:
            status, raw = await self.call("GET", f"{self.edge_base}/{dev.token}/rpc?timeout={POLL_MS}")
            if status == 408:
                continue
            if status != 200:
                errors.append(f"poll {status} {raw[:200]!r}")
                await asyncio.sleep(0.1)
                continue
            req = json.loads(raw)
            status, raw = await self.call("POST", f"{self.edge_base}/{dev.token}/rpc/{req['id']}",
                                          req["params"])
            if status == 409 and b"TIMEOUT" in raw:
                late.append(req["id"])
            elif status != 200:
                errors.append(f"answer {status} {raw[:200]!r}")

    async def open_loop(self, devices: list[Device], rate: int, duration: float,
                        errors: list[str]) -> dict[str, float]:
        total = int(rate * (duration + WARMUP_S))
        warm = int(rate * WARMUP_S)
        rtts: list[float] = []
        late: list[float] = []
        tasks = []
        timeouts = 0
        last_answer = 0.0

        async def one(k: int) -> None:
            nonlocal timeouts, last_answer
            dev = devices[k % len(devices)]
            t0 = time.perf_counter()
            status, raw = await self.call("POST", f"{self.cloud_base}/api/rpc/twoway/{dev.id}",
                                          {"method": "echo", "params": {"k": k}, "timeout": 10_000})
            t1 = time.perf_counter()
            if status == 504:  # no answer by its expirationTime: counted, with the time waited
                if k >= warm:
                    timeouts += 1
                    rtts.append(t1 - t0)
            elif status != 200 or json.loads(raw or b"null") != {"k": k}:
                errors.append(f"rpc {k}: {status} {raw[:200]!r}")
            elif k >= warm:
                rtts.append(t1 - t0)
                last_answer = max(last_answer, t1)

        start = time.perf_counter()
        measured_from = start + WARMUP_S
        for k in range(total):
            target = start + k / rate
            now = time.perf_counter()
            if target > now:
                await asyncio.sleep(target - now)
            elif k >= warm:
                late.append(now - target)
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
        rtts.sort()
        late.sort()
        return {"p50_ms": percentile(rtts, 50) * 1000, "p99_ms": percentile(rtts, 99) * 1000,
                "max_ms": (rtts[-1] * 1000) if rtts else float("nan"),
                "answered": float(len(rtts) - timeouts), "timeouts": float(timeouts),
                "achieved_rps": (len(rtts) - timeouts) / max(last_answer - measured_from, duration),
                "send_lateness_p99_ms": percentile(late, 99) * 1000 if late else 0.0}

    # -- fan-out -----------------------------------------------------------------------------

    async def fanout(self, devices: list[Device]) -> tuple[float, float, list[str]]:
        errors: list[str] = []
        await self.until(lambda: self.edge.accepted() == 0, "device connections closed")
        polls = [asyncio.create_task(self.call(
            "GET", f"{self.edge_base}/{d.token}/attributes/updates?timeout={POLL_MS}"))
            for d in devices]
        await self.until(lambda: self.edge.accepted() >= len(devices),
                         f"{len(devices)} polls accepted", timeout=120)
        barrier = await asyncio.gather(*(self.call("POST", f"{self.edge_base}/{d.token}/telemetry",
                                                   {"barrier": 1}) for d in devices))
        if {status for status, _ in barrier} != {200}:
            raise PhaseError("telemetry barrier refused")
        done_at: list[float] = [0.0] * len(devices)

        async def watch(i: int) -> None:
            status, raw = await polls[i]
            done_at[i] = time.perf_counter()
            if status != 200 or json.loads(raw) != {"setpoint": i}:
                errors.append(f"fan-out poll {i}: {status} {raw[:200]!r}")

        watchers = [asyncio.create_task(watch(i)) for i in range(len(devices))]
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(self.call("POST", f"{self.cloud_base}/api/attributes",
                                                   {"device": d.id, "values": {"setpoint": i}})
                                         for i, d in enumerate(devices)))
        calls_s = time.perf_counter() - t0
        bad = [a for a in answers if a[0] != 200]
        if bad:
            errors.append(f"{len(bad)} attribute calls refused, e.g. {bad[0]!r}")
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
        returned = sorted(t - t0 for t in done_at)
        progress(f"    polls returned: first after {returned[0] * 1000:.0f} ms, half after "
                 f"{percentile(returned, 50) * 1000:.0f} ms")
        return returned[-1], calls_s, errors


# -- one run --------------------------------------------------------------------------------------


def cpu_pct(pids: dict[str, int | None], before: dict[str, float], wall: float) -> dict[str, float]:
    return {name: round((cpu_seconds(pid) - before[name]) / wall * 100, 0)
            for name, pid in pids.items()}


async def measure(opts: Options, cloud: Cloud, edge: EdgeProcess, out: RunResult) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=POLL_MS / 1000 + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        c = Clients(session, cloud, edge)
        count = max(opts.devices, opts.fanout_devices)
        progress(f"  {count} devices")
        devices = await c.create_devices(count)
        pids: dict[str, int | None] = {"cloud": cloud.pid, "edge": edge.pid, "clients": None}
        poll_errors: list[str] = []
        late_answers: list[int] = []
        loops = [asyncio.create_task(c.device_loop(d, poll_errors, late_answers))
                 for d in devices[:opts.devices]]
        for rate in opts.rates:
            progress(f"  round trips at {rate}/s for {opts.duration:g}s, {opts.devices} devices")
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            t0 = time.monotonic()
            errors: list[str] = []
            figures = await c.open_loop(devices[:opts.devices], rate, opts.duration, errors)
            out.cpu_pct[f"rtt_{rate}"] = cpu_pct(pids, before, time.monotonic() - t0)
            figures["errors"] = float(len(errors))
            figures["late_answers"] = float(len(late_answers))
            late_answers.clear()
            out.rtt[rate] = figures
            out.errors += errors[:5]
            progress(f"    p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
                     f"{figures['achieved_rps']:.0f}/s answered, {figures['timeouts']:.0f} timed out, "
                     f"{len(errors)} errors; "
                     f"cpu {out.cpu_pct[f'rtt_{rate}']}")
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        out.errors += poll_errors[:5]
        fan = devices[:opts.fanout_devices]
        progress(f"  fan-out to {len(fan)} waiting devices")
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        out.fanout_s, out.fanout_calls_s, errors = await c.fanout(fan)
        out.cpu_pct["fanout"] = cpu_pct(pids, before, time.monotonic() - t0)
        out.errors += errors[:5]
        progress(f"    last poll after {out.fanout_s * 1000:.0f} ms (admin calls answered after "
                 f"{out.fanout_calls_s * 1000:.0f} ms); cpu {out.cpu_pct['fanout']}")


def run_once(opts: Options, workdir: Path) -> RunResult:
    out = RunResult()
    cloud = Cloud(workdir / "cloud" / "data")
    edge = EdgeProcess(workdir / "edge" / "data", cloud)
    (workdir / "edge").mkdir(parents=True, exist_ok=True)
    try:
        cloud.start()
        start(edge)
        asyncio.run(measure(opts, cloud, edge, out))
    except (PhaseError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        out.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        codes = (edge.stop(), cloud.stop())
        if codes != (0, 0) and codes != (None, None):
            out.errors.append(f"exit codes (edge, cloud): {codes}; edge: {edge.tail()[-500:]}")
    return out


# -- the report -----------------------------------------------------------------------------------


def result_line(opts: Options, runs: list[RunResult]) -> dict[str, Any]:
    rtt: dict[str, dict[str, float | None]] = {}
    for rate in opts.rates:
        keys = ("p50_ms", "p99_ms", "max_ms", "achieved_rps", "timeouts", "late_answers",
                "send_lateness_p99_ms", "errors")
        rtt[str(rate)] = {k: rounded(median([r.rtt[rate][k] for r in runs if rate in r.rtt]),
                                     2 if k.endswith("_ms") else 1) for k in keys}
    fanout = rounded(median([r.fanout_s for r in runs]), 3)
    figures = {"rtt_p99_ms_at_100": rtt.get("100", {}).get("p99_ms"), "fanout_s": fanout}
    meets: dict[str, bool | None] = {}
    for k, target in TARGETS.items():
        got = figures[k]
        meets[k] = None if got is None else got < target
    return {
        "bench": "rpc", "runs": len(runs), "devices": opts.devices,
        "duration_s": opts.duration, "rtt": rtt,
        "fanout": {"devices": opts.fanout_devices, "s": fanout,
                   "calls_s": rounded(median([r.fanout_calls_s for r in runs]), 3)},
        "targets": TARGETS, "meets_targets": meets,
        "samples": [{"rtt": {str(k): {n: rounded(v, 2) for n, v in f.items()}
                             for k, f in r.rtt.items()},
                     "fanout_s": rounded(r.fanout_s, 3), "cpu_pct": r.cpu_pct} for r in runs],
        "cpus": os.cpu_count(),
        "errors": [e for r in runs for e in r.errors][:20],
    }


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/bench rpc",
        description="Server-side RPC round trip (cloud admin API -> edge -> device long poll -> "
        "cloud) at fixed rates, and the shared-attribute fan-out to waiting devices, with real "
        "edge-cloud serve and edge-sync run processes. Progress goes to stderr; the last stdout "
        "line is the JSON result.")
    p.add_argument("--runs", type=int, default=None, help="runs, each on fresh processes; "
                   "medians reported (default 3)")
    p.add_argument("--rates", default="100,1000", help="requests/s, comma-separated "
                   "(default 100,1000)")
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds per rate (default 5)")
    p.add_argument("--devices", type=int, default=100, help="devices long-polling for RPC")
    p.add_argument("--fanout-devices", type=int, default=None,
                   help="devices waiting for the shared attribute (default 1,000)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 run, 1 s per rate, fan-out to 200 devices")
    a = p.parse_args(list(argv))
    rates = tuple(int(x) for x in a.rates.split(",") if x.strip())
    if not rates or min(rates) <= 0:
        p.error("--rates: positive integers")
    quick = a.quick
    opts = Options(
        runs=a.runs if a.runs is not None else (1 if quick else 3),
        rates=rates,
        duration=a.duration if a.duration is not None else (1.0 if quick else 5.0),
        devices=a.devices,
        fanout_devices=a.fanout_devices if a.fanout_devices is not None else (200 if quick else 1000),
    )
    if opts.runs < 1 or opts.devices < 1 or opts.fanout_devices < 1 or opts.duration <= 0:
        p.error("--runs, --devices, --fanout-devices and --duration must be positive")
    return opts


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    raise_open_files(4 * (opts.fanout_devices + opts.devices) + 1000)
    progress(f"rpc: {opts.runs} run(s); rates {', '.join(map(str, opts.rates))}/s with "
             f"{opts.devices} devices; fan-out to {opts.fanout_devices} ({os.cpu_count()} cpus)")
    runs = []
    machine = [machine_load()]
    for n in range(1, opts.runs + 1):
        progress(f"run {n}/{opts.runs}")
        with tempfile.TemporaryDirectory(prefix="bench-rpc-") as tmp:
            runs.append(run_once(opts, Path(tmp)))
    machine.append(machine_load())
    line = result_line(opts, runs)
    line["machine"] = machine
    emit(line)
    if line["errors"]:
        progress("FAILED: " + "; ".join(line["errors"][:5]))
        return 1
    return 0
