"""``scripts/bench e2e``: edge to cloud, end to end, on loopback.

Processes. The machine this runs on has 2 cores, so every measurement runs exactly two busy
processes: the edge and the reference cloud. Each measurement is a fresh *worker* subprocess of
the benchmark (``python -m bench e2e --phase ...``) that hosts the edge in process
(``EdgeApp(cfg).start()``, load offered through the in-process API ``app.service.post_entries``)
and starts the cloud as an ``edge-cloud serve`` subprocess on a fresh store with one edge
registered. The benchmark's own process only waits for its workers. Why the edge in the worker
rather than ``edge-sync run`` fed over HTTP: an HTTP client would be a third busy process on 2
cores and would measure HTTP parsing (``scripts/bench ingest`` does that); the in-process
producer only calls ``post_entries`` with prebuilt batches (the edge's own ingest path: entity
actors, the queue's group commit) and is idle otherwise. Why fresh processes: each figure sees
a new store on both sides, no threads or heap left over from an earlier measurement, and the
edge's peak RSS is the edge's alone. Every edge is configured from the environment like
``edge-sync run`` (so EDGE_* / CLOUD_* variables can tune it), except for the store, ports, log
level, the cloud's address and credentials, and a short reconnect backoff (100 ms, at most
250 ms, no jitter, circuit breaker effectively off) so that the drain starts as soon as the cloud
is up.

Measurements (``--runs`` times each, the JSON line has the medians; the drain ``--drain-runs``
times, default once, as ``drain_runs`` says):

- ``raw_ceiling_eps``: no actors: events already in an EventLog (``--raw-events`` of them, the
  same TIMESERIES_UPDATED events the entity actors build for the same batches, appended
  untimed) are read with ``EventLog.read_batch`` (100 at a time, one read transaction each),
  packed with ``edge_sync.link.packer.pack`` and sent on one ``handleMsgs`` bidi stream
  (``edge_sync.link.channel``, the edge's own channel and stream code) with a window of 8
  UplinkMsgs in flight (the edge's ``cloud.window``), by one thread, to the *real* reference
  cloud (so the cloud's validation and durable apply cost is in the ceiling exactly as in the
  edge figures). Counted: events acknowledged (success) per second after a 0.5 s warm-up, for
  ``--duration`` s or until the log is exhausted. Not included: marking events DEPLOYED (the
  edge's extra group commits, one fsync each).
- ``sustained_eps``: cloud up, then a closed-loop producer in the edge posts batches of 100
  (round-robin over ``--devices`` devices, at most ``--post-window`` posts outstanding) but only
  while the edge holds fewer than ``--max-pending`` events that are not yet DEPLOYED. So the
  pending count stays bounded by construction and the offered rate settles at the sustainable
  one. Counted: events DEPLOYED (the event log's own count) per second over ``--duration`` s
  after a warm-up; ``pending_max`` shows the bound held.
- ``drain_eps``: the cloud is down (its port reserved, nothing listening); ``--backlog`` events
  (default 1,000,000; ``--quick``: 100,000) are posted through the in-process API in batches of
  100; then the cloud is started and the clock runs from the moment it answers (its admin API
  reports it running; gRPC is bound before that) until the edge's pending count is 0:
  drain_eps = events pending at the start / seconds. ``drain_connect_s`` is the part until the
  first events were DEPLOYED (reconnect, sync).
- ``peak_rss_mb``: the edge process's VmHWM over the drain (VmHWM is reset with
  ``/proc/self/clear_refs`` right before the cloud starts; if the kernel refuses, it covers the
  worker's whole life and ``peak_rss_scope`` says so). VmHWM counts resident pages of the LMDB
  map too: ``peak_rss_anon_mb`` / ``peak_rss_file_mb`` are the highest RssAnon / RssFile seen
  while sampling every 0.25 s.
- ``p50_ms``, ``p99_ms``: accept-to-ack latency, open loop at ``--rate`` (1,000) single-event
  posts/s for ``--latency-duration`` s after 0.5 s unmeasured. Accept: the moment the post's
  future resolves (the event is committed, when the device API would answer), taken with
  time.time_ns() in the future's done-callback, which runs on the queue actor's thread right
  after the commit. Ack: the time the edge itself recorded when it marked the event DEPLOYED,
  read afterwards from the event log's ``deployed_by_time`` index (ms since the epoch, taken by
  the queue actor when the group that marks it starts, i.e. after the cloud's answer arrived;
  truncated to whole ms, so a figure may read up to 1 ms low). Same process, same clock, ms
  resolution, and nothing added to the hot path beyond the callback. ``apply_p50_ms`` /
  ``apply_p99_ms`` are the same from accept to the cloud's ``applied_at`` (the cloud's clock,
  same machine), read from the cloud's store after it stopped: they split the latency into
  edge-to-cloud and cloud-answer-to-DEPLOYED.
- ratios ``sustained_ratio`` = sustained_eps / raw_ceiling_eps and ``drain_ratio`` = drain_eps /
  raw_ceiling_eps (medians; ``samples`` has the per-run figures, the drain ratios against the
  median ceiling). ``meets_targets`` compares with ``targets`` (ratios at least, p99 and RSS
  below); a figure not measured (``--only``) is null and so is its verdict.

Other keys: ``drain_s``, ``drain_connect_s``, ``fill_eps`` (how fast the backlog was posted),
``rss_before_drain_mb``, ``edge_store_mb`` (the edge's LMDB file in use after the drain),
``pending_max`` (highest pending count seen in the sustained windows), ``post_lateness_p99_ms``
(how late the open-loop producer posted: it shares the edge's GIL), ``cpu_pct`` (per phase and
run, % of one core used by the edge or raw client and by the cloud during the measurement) and
``machine`` (load average and PSI at the start and the end): the machine is shared, and a
ceiling measured while the client got well under 100% of a core was measured on a busy machine.

Where the time goes: ``--phase NAME`` runs one measurement in the foreground (the same worker
code, the cloud still a subprocess), e.g. ``py-spy record --threads --gil -o edge.svg -- python
-m bench e2e --phase drain --backlog 300000``; attach a second py-spy to the
``edge_sync.cli.cloud serve`` child with ``--pid`` to see the cloud's side.

Exit 1 (after the JSON line) when a worker failed, an acknowledgement was an error, an event
was not DEPLOYED in the end, or a cloud or edge did not stop cleanly; ``errors`` lists why.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    edge_env,
    emit,
    free_port,
    median,
    peak_rss_mb,
    percentile,
    progress,
    progress_origin,
    reset_peak_rss,
    rounded,
    rss_parts_mb,
    set_progress_origin,
    terminate,
)
from bench.ingest import make_entries, new_events

TARGETS: dict[str, float] = {
    "sustained_ratio": 0.4,  # at least
    "drain_ratio": 0.4,  # at least
    "p99_ms": 50.0,  # below
    "peak_rss_mb": 200.0,  # below
}
_BELOW = frozenset({"p99_ms", "peak_rss_mb"})

PHASES = ("raw", "sustained", "latency", "drain")
_TS0 = 1_700_000_000_000  # entry timestamps (ms); any fixed value will do
_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = 3
    duration: float = 5.0
    warmup: float = 2.0
    latency_duration: float = 5.0
    rate: float = 1000.0
    backlog: int = 1_000_000
    drain_runs: int = 1
    raw_events: int = 400_000
    max_pending: int = 10_000
    post_window: int = 32
    devices: int = 16
    batch: int = 100
    only: tuple[str, ...] = PHASES


class PhaseError(RuntimeError):
    """A measurement could not be completed (reported in ``errors``)."""


# -- the reference cloud, as a subprocess ------------------------------------------------------


class Cloud:
    """``edge-cloud serve`` on a fresh store in ``data_dir`` with one edge registered (written to
    the store directly before the server starts), on free loopback ports."""

    def __init__(self, data_dir: Path) -> None:
        from edge_sync.config import load_cloud_config

        self.rpc_port = free_port()
        self.admin_port = free_port()
        self.routing_key = f"bench-{uuid.uuid4().hex[:12]}"
        self.secret = secrets.token_urlsafe(16)
        self.env = dict(os.environ)
        self.env.update(
            CLOUD_DATA_DIR=str(data_dir),
            EDGES_RPC_HOST="127.0.0.1",
            EDGES_RPC_PORT=str(self.rpc_port),
            CLOUD_ADMIN_HOST="127.0.0.1",
            CLOUD_ADMIN_PORT=str(self.admin_port),
            CLOUD_LOG_LEVEL="WARNING",
        )
        self.cfg = load_cloud_config(None, self.env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._register()

    def _register(self) -> None:
        from edge_sync.cloud.server import open_cloud_store
        from edge_sync.cloud.service import CloudService

        store = open_cloud_store(self.cfg)
        try:
            CloudService(store).create_edge("bench-edge", routing_key=self.routing_key,
                                            secret=self.secret)
        finally:
            store.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, timeout: float = 60.0) -> float:
        """Spawn the server; return the time.monotonic() at which it answered as running."""
        from edge_sync.cli.common import AdminUnreachable, admin_call
        from edge_sync.config import AdminConfig

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_sync.cli.cloud", "serve"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
        )
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PhaseError(f"cloud exited with code {self.proc.returncode} during start-up")
            try:
                code, status = admin_call(AdminConfig(port=self.admin_port), "GET", "/api/status",
                                          timeout=2.0)
                if code == 200 and isinstance(status, dict) and status.get("server") == "running":
                    return time.monotonic()
                last = f"HTTP {code}"
            except AdminUnreachable as exc:
                last = str(exc)
            time.sleep(_POLL_S)
        raise PhaseError(f"cloud not ready after {timeout:.0f}s: {last}")

    def stop(self, *, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait: the exit code (None when it never started)."""
        if self.proc is None:
            return None
        return terminate(self.proc, timeout=timeout)

    def applied_at(self) -> dict[int, int]:
        """seq -> applied_at (ms) of everything the edge sent, read from the store (after stop)."""
        from edge_sync.cloud.server import open_cloud_store

        store = open_cloud_store(self.cfg, readonly=True)
        try:
            edge = store.edge(self.routing_key)
            if edge is None:
                return {}
            return {r.seq: r.applied_at for r in store.iter_events(edge.edge_id) if r.seq is not None}
        finally:
            store.close()


def link_env(data_dir: Path, cloud: Cloud, *, log_level: str = "WARNING") -> dict[str, str]:
    """The edge's environment: ingest's (store, ports, host), plus the cloud and fast reconnects."""
    env = edge_env(data_dir)
    env.update(
        EDGE_LOG_LEVEL=log_level,
        CLOUD_ROUTING_KEY=cloud.routing_key,
        CLOUD_ROUTING_SECRET=cloud.secret,
        CLOUD_RPC_HOST="127.0.0.1",
        CLOUD_RPC_PORT=str(cloud.rpc_port),
        EDGE_CLOUD_RECONNECT_INTERVAL_MS="100",
        EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="250",
        EDGE_CLOUD_RECONNECT_JITTER="0",
        EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD="1000000000",
    )
    return env


# -- the edge, in this process -------------------------------------------------------------------


class Edge:
    """EdgeApp in this process on a fresh store, linked to ``cloud``, with ``devices`` devices."""

    def __init__(self, data_dir: Path, cloud: Cloud, opts: Options, *, log_level: str = "WARNING") -> None:
        from edge_sync.app import EdgeApp
        from edge_sync.config import load_edge_config
        from edge_sync.logsetup import configure_logging
        from edge_sync.storage.event_log import EventLog

        self.cfg = load_edge_config(None, link_env(data_dir, cloud, log_level=log_level))
        configure_logging(self.cfg.log, component="bench")
        self.app = EdgeApp(self.cfg).start()
        self.log = EventLog(self.app.store)
        self.stopped = False
        created = [self.app.service.create_device(f"bench-{i}") for i in range(opts.devices)]
        for _device, future in created:
            future.result(timeout=30)
        self.device_ids = [device.id for device, _ in created]

    def counts(self) -> Any:
        with self.app.store.read() as txn:
            return self.log.counts(txn)

    def pending(self) -> int:
        """Events not yet DEPLOYED (nor dead): two O(1) entry counts in one read transaction."""
        store = self.app.store
        with store.read() as txn:
            return store.entries(txn, "pending_high") + store.entries(txn, "pending_normal")

    def deployed(self) -> int:
        return int(self.counts().deployed)

    def link_state(self) -> str:
        return str(self.app.link_board.value.get("state"))
    def wait_drained(self, *, timeout: float, what: str) -> float:
        """Wait until nothing is pending; the time.monotonic() at which that was seen."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            pending = self.pending()
            if pending == 0:
                return now
            if now > deadline:
                raise PhaseError(f"{what}: {pending} events still pending after {timeout:.0f}s "
                                 f"(link {self.link_state()})")
            time.sleep(_POLL_S)

    def link_counters(self) -> dict[str, float]:
        snap = self.app.metrics.snapshot()
        names = {"uplink_go_back_n_total": 'edge_sync_uplink_resends_total{kind="go_back_n"}',
                 "link_connect_attempts_total": "edge_sync_link_connect_attempts_total"}
        out = {short: float(snap.get(name, 0.0)) for short, name in names.items()}
        out["uplink_dead_letters_total"] = float(sum(
            v for k, v in snap.items() if k.startswith("edge_sync_dead_letters_total")))
        return out

    def stop(self) -> int | None:
        """Stop the app (idempotent): its exit code, 0 after a clean stop (3: it had given up)."""
        if not self.stopped:
            self.stopped = True
            self.app.stop(timeout=60.0)
        return self.app.wait(5.0)


def _link_problems(edge: Edge, what: str) -> list[str]:
    c = edge.link_counters()
    out = []
    if c["uplink_go_back_n_total"]:
        out.append(f"{what}: {c['uplink_go_back_n_total']:.0f} go-back-N resend(s)")
    if c["uplink_dead_letters_total"] or edge.counts().dead:
        out.append(f"{what}: {edge.counts().dead} event(s) dead-lettered")
    return out


def cpu_times(pid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds consumed so far by a process (default: this one)."""
    if pid is None:
        t = os.times()
        return t.user, t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class CpuClock:
    """CPU use of this process (the edge, or the raw client) and of the cloud over an interval,
    as % of one core (user + system) and the system part."""

    def __init__(self, cloud_pid: int | None, own: str = "edge") -> None:
        self._cloud = cloud_pid
        self._name = own
        self._t = time.monotonic()
        self._own = cpu_times()
        self._cloud_cpu = cpu_times(cloud_pid) if cloud_pid else (0.0, 0.0)
        self.figures: dict[str, float] = {}

    def stop(self) -> CpuClock:
        """Freeze the figures (idempotent): {own, own_sys, cloud, cloud_sys} in %."""
        if self.figures:
            return self
        wall = max(1e-9, time.monotonic() - self._t)
        user, system = cpu_times()
        self.figures["own"] = (user + system - sum(self._own)) / wall * 100
        self.figures["own_sys"] = (system - self._own[1]) / wall * 100
        if self._cloud:
            with contextlib.suppress(OSError):
                user, system = cpu_times(self._cloud)
                self.figures["cloud"] = (user + system - sum(self._cloud_cpu)) / wall * 100
                self.figures["cloud_sys"] = (system - self._cloud_cpu[1]) / wall * 100
        return self

    def report(self) -> str:
        f = self.stop().figures
        text = f"{self._name} cpu {f['own']:.0f}% (sys {f['own_sys']:.0f}%)"
        if "cloud" in f:
            text += f", cloud cpu {f['cloud']:.0f}% (sys {f['cloud_sys']:.0f}%)"
        return text


# -- producers -----------------------------------------------------------------------------------


def _batches(opts: Options) -> list[tuple[Any, ...]]:
    return [make_entries(opts.batch, _TS0 + k * opts.batch) for k in range(64)]


class ClosedLoop:
    """Posts batches while fewer than ``limit`` posted events are not yet DEPLOYED (uncommitted
    posts plus the edge's pending count; looked at every 2 ms while at the limit) and at most
    ``post_window`` posts are uncommitted. ``limit`` None: as fast as commits allow (the fill)."""

    def __init__(self, edge: Edge, opts: Options, *, limit: int | None, total: int | None = None) -> None:
        self._edge = edge
        self._opts = opts
        self._limit = limit
        self._total = total
        self._stop = threading.Event()
        self.posted = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-producer", daemon=True)

    def start(self) -> ClosedLoop:
        self._thread.start()
        return self

    def stop(self, *, timeout: float = 120.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise PhaseError("the producer did not finish")
        if self.error is not None:
            raise PhaseError(f"post_entries failed: {self.error!r}") from self.error

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise PhaseError(f"the producer did not finish within {timeout:.0f}s")
        if self.error is not None:
            raise PhaseError(f"post_entries failed: {self.error!r}") from self.error

    def _run(self) -> None:
        edge, opts = self._edge, self._opts
        post = edge.app.service.post_entries
        devices = edge.device_ids
        batches = _batches(opts)
        outstanding: collections.deque[Future[range]] = collections.deque()
        n = 0
        try:
            while not self._stop.is_set():
                if self._total is not None and self.posted >= self._total:
                    break
                while outstanding and outstanding[0].done():
                    outstanding.popleft().result()
                if len(outstanding) >= opts.post_window:
                    outstanding.popleft().result(timeout=60)
                    continue
                if (self._limit is not None
                        and len(outstanding) * opts.batch + edge.pending() >= self._limit):
                    time.sleep(0.002)
                    continue
                outstanding.append(post(devices[n % len(devices)], batches[n % len(batches)]))
                n += 1
                self.posted += opts.batch
            for future in outstanding:
                future.result(timeout=60)
        except BaseException as exc:
            self.error = exc


# -- phases (each runs in a worker subprocess) ---------------------------------------------------


def phase_raw(opts: Options, workdir: Path) -> dict[str, Any]:
    """raw_ceiling_eps: EventLog.read_batch + pack + one bidi stream (window 8), no actors."""
    from edge_sync.config import load_edge_config
    from edge_sync.storage.env import LmdbStore
    from edge_sync.storage.event_log import EventLog
    from edge_sync.storage.records import NIL_UUID

    cloud = Cloud(workdir / "cloud")
    store = LmdbStore(workdir / "raw-edge")
    try:
        log = EventLog(store)
        entities = [uuid.uuid4() for _ in range(opts.devices)]
        templates = [new_events(entities[k % len(entities)], entries)
                     for k, entries in enumerate(_batches(opts))]
        progress(f"raw: filling an event log with {opts.raw_events:,} events (not timed)")
        seq = 1
        written = 0
        t_fill = time.monotonic()
        while written < opts.raw_events:
            group: list[Any] = []
            while written < opts.raw_events and len(group) < 50:
                group.append(templates[(written // opts.batch) % len(templates)])
                written += opts.batch

            def fill(txn: Any, group: list[Any] = group, first: int = seq) -> int:
                s = first
                for events in group:
                    s = log.append(txn, events, first_seq=s, created_time=time.time_ns() // 1_000_000,
                                   tenant_id=NIL_UUID.bytes, edge_id=NIL_UUID.bytes)
                return s

            seq = store.write(fill)
        progress(f"raw: filled in {time.monotonic() - t_fill:.1f} s; starting the cloud")
        link = load_edge_config(None, link_env(workdir / "unused", cloud)).cloud
        cloud.start()
        cpu = CpuClock(cloud.pid, own="client")
        out = _drive_raw(opts, link, store, log)
        progress(f"raw: ceiling {out['eps']:,.0f} events/s ({out['acked']:,} acknowledged, "
                 f"{out['window_s']:.1f} s window; {cpu.report()})")
        out["cpu"] = cpu.figures
    finally:
        store.close()
        code = cloud.stop()
    out["cloud_exit_code"] = code
    return out


def _drive_raw(opts: Options, link: Any, store: Any, log: Any) -> dict[str, Any]:
    from edge_sync.common.wire import Owner, uuid_of
    from edge_sync.link.channel import Stream, make_channel
    from edge_sync.link.connection import EDGE_VERSION
    from edge_sync.link.packer import pack
    from edge_sync.proto import edge_pb2
    from edge_sync.storage.records import Lane

    window = link.window
    slots = threading.Semaphore(window)
    accepted = threading.Event()
    synced = threading.Event()
    finished = threading.Event()
    errors: list[str] = []
    connect: list[Any] = []
    sizes: dict[int, int] = {}
    marks: list[tuple[float, int]] = []
    acked = 0
    clock = time.perf_counter
    stream: Stream | None = None

    def on_response(_sid: int, resp: Any) -> None:
        nonlocal acked
        if resp.HasField("uplinkResponseMsg"):
            r = resp.uplinkResponseMsg
            if not r.success:
                errors.append(f"uplink {r.uplinkMsgId} failed: {r.errorMsg}")
                finished.set()
            acked += sizes.pop(r.uplinkMsgId, 0) if r.success else 0
            marks.append((clock(), acked))
            slots.release()
        elif resp.HasField("connectResponseMsg"):
            connect.append(resp.connectResponseMsg)
            accepted.set()
        elif resp.HasField("downlinkMsg"):
            d = resp.downlinkMsg
            assert stream is not None
            stream.send(edge_pb2.RequestMsg(
                msgType=edge_pb2.UPLINK_RPC_MESSAGE,
                downlinkResponseMsg=edge_pb2.DownlinkResponseMsg(success=True,
                                                                 downlinkMsgId=d.downlinkMsgId)))
            if d.HasField("syncCompletedMsg"):
                synced.set()

    def on_end(_sid: int, code: str, detail: str) -> None:
        if not finished.is_set():
            errors.append(f"stream ended: {code}: {detail}")
        for event in (accepted, synced, finished):
            event.set()
        slots.release()

    channel = make_channel(link)
    try:
        stream = Stream(1, channel, on_response=on_response, on_end=on_end)
        stream.send(edge_pb2.RequestMsg(
            msgType=edge_pb2.CONNECT_RPC_MESSAGE,
            connectRequestMsg=edge_pb2.ConnectRequestMsg(
                edgeRoutingKey=link.routing_key, edgeSecret=link.routing_secret,
                edgeVersion=EDGE_VERSION, maxInboundMessageSize=link.rpc.max_inbound_message_size,
                edgeTimeMillis=time.time_ns() // 1_000_000, edgeStoreId=str(store.store_id))))
        if not accepted.wait(30) or not connect or connect[0].responseCode != edge_pb2.ACCEPTED:
            raise PhaseError(f"raw client not accepted by the cloud: {errors or connect}")
        max_bytes = connect[0].maxInboundMessageSize or 4 * 1024 * 1024
        conf = connect[0].configuration  # entity JSON owned as the edge would own it
        owner = Owner.of(uuid_of(conf.tenantIdMSB, conf.tenantIdLSB),
                         uuid_of(conf.customerIdMSB, conf.customerIdLSB))
        stream.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                        syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=True)))
        if not synced.wait(30) or errors:
            raise PhaseError(f"raw client: no sync completion: {errors}")
        cursor = {Lane.HIGH: 0, Lane.NORMAL: 0}
        msg_id = 0
        start = clock()
        deadline = start + 0.5 + opts.duration
        exhausted = False
        while clock() < deadline and not finished.is_set():
            if not slots.acquire(timeout=30):
                raise PhaseError("raw client: no acknowledgement within 30 s")
            if finished.is_set():
                break
            with store.read() as txn:
                events = log.read_batch(txn, max_events=opts.batch, max_bytes=max_bytes, after=cursor)
            if not events:
                exhausted = True
                slots.release()
                break
            packed = pack(events, max_bytes=max_bytes, max_events=opts.batch, ordered_peer=True,
                          owner=owner)
            cursor.update(packed.last_seq)
            msg_id += 1
            packed.msg.uplinkMsgId = msg_id
            packed.msg.uplinkEpoch = 1
            sizes[msg_id] = len(packed.seqs)
            stream.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE,
                                            uplinkMsg=packed.msg))
        for _ in range(window):  # wait for the last acknowledgements
            if not slots.acquire(timeout=30):
                raise PhaseError("raw client: the last acknowledgements did not arrive")
        finished.set()
        if errors:
            raise PhaseError("; ".join(errors[:3]))
    finally:
        finished.set()
        if stream is not None:
            stream.close()
        channel.close()
    begin = start + 0.5
    first = next(((t, a) for t, a in marks if t >= begin), None)
    if first is None or marks[-1][0] <= first[0]:
        raise PhaseError("raw client: too few acknowledgements to measure (raise --raw-events)")
    last = marks[-1]
    eps = (last[1] - first[1]) / (last[0] - first[0])
    if exhausted:
        progress(f"raw: the {opts.raw_events:,} events ran out after {last[0] - start:.1f} s "
                 "(raise --raw-events for a full window)")
    return {"eps": eps, "acked": acked, "window_s": last[0] - first[0], "exhausted": exhausted}


def phase_sustained(opts: Options, workdir: Path) -> dict[str, Any]:
    """sustained_eps: DEPLOYED events/s while a closed-loop producer keeps pending bounded."""
    cloud = Cloud(workdir / "cloud")
    edge: Edge | None = None
    errors: list[str] = []
    try:
        cloud.start()
        edge = Edge(workdir / "edge", cloud, opts)
        edge.wait_drained(timeout=60, what="device events before the load")
        producer = ClosedLoop(edge, opts, limit=opts.max_pending).start()
        try:
            time.sleep(opts.warmup)
            cpu = CpuClock(cloud.pid)
            t0, d0 = time.monotonic(), edge.deployed()
            pendings: list[int] = []
            end = t0 + opts.duration
            while (now := time.monotonic()) < end:
                pendings.append(edge.pending())
                time.sleep(min(0.25, max(0.0, end - now)))
            t1, d1 = time.monotonic(), edge.deployed()
            pendings.append(edge.pending())
            report = cpu.report()
            cpu_figures = cpu.figures
        finally:
            producer.stop()
        eps = (d1 - d0) / (t1 - t0)
        progress(f"sustained: {eps:,.0f} events/s DEPLOYED (pending {min(pendings):,}..{max(pendings):,}, "
                 f"limit {opts.max_pending:,}; {report})")
        edge.wait_drained(timeout=120, what="sustained tail")
        errors += _link_problems(edge, "sustained")
        out: dict[str, Any] = {"eps": eps, "pending_max": max(pendings), "pending_last": pendings[-1],
                               "cpu": cpu_figures}
    finally:
        edge_code = edge.stop() if edge is not None else None
        code = cloud.stop()
    out.update(cloud_exit_code=code, edge_exit_code=edge_code, errors=errors)
    return out


def phase_latency(opts: Options, workdir: Path) -> dict[str, Any]:
    """p50/p99: accept (the post's future resolved) to DEPLOYED, open loop at opts.rate."""
    from edge_sync.storage import codec

    cloud = Cloud(workdir / "cloud")
    edge: Edge | None = None
    errors: list[str] = []
    try:
        cloud.start()
        edge = Edge(workdir / "edge", cloud, opts)
        edge.wait_drained(timeout=60, what="device events before the load")
        warm = max(1, int(opts.rate * 0.5))
        n = max(1, int(opts.rate * opts.latency_duration))
        cpu: CpuClock | None = None

        def at_start_of_measurement() -> None:
            nonlocal cpu
            cpu = CpuClock(cloud.pid)

        accepts, lateness = _open_loop(edge, opts, warm + n, warm, at_start_of_measurement)
        measured = accepts[warm:]
        edge.wait_drained(timeout=60, what="latency tail")
        report = cpu.report() if cpu else ""
        deployed: dict[int, int] = {}
        with edge.app.store.read() as txn, txn.cursor(db=edge.app.store.dbs["deployed_by_time"]) as cur:
            for key in cur.iternext(keys=True, values=False):
                ms, seq = codec.from_time_seq_key(key)
                deployed[seq] = ms
        errors += _link_problems(edge, "latency")
    finally:
        edge_code = edge.stop() if edge is not None else None
        code = cloud.stop()
    applied = cloud.applied_at()
    latencies = sorted(deployed[seq] - accept for seq, accept in measured if seq in deployed)
    to_apply = sorted(applied[seq] - accept for seq, accept in measured if seq in applied)
    missing = len(measured) - len(latencies)
    if missing:
        errors.append(f"latency: {missing} event(s) never DEPLOYED")
    out = {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else math.nan,
        "apply_p50_ms": percentile(to_apply, 50),
        "apply_p99_ms": percentile(to_apply, 99),
        "post_lateness_p99_ms": percentile(sorted(lateness), 99),
        "events": len(latencies),
        "cpu": cpu.figures if cpu else {},
        "cloud_exit_code": code,
        "edge_exit_code": edge_code,
        "errors": errors,
    }
    progress(f"latency at {opts.rate:,.0f}/s: accept to DEPLOYED p50 {out['p50_ms']:.1f} ms, "
             f"p99 {out['p99_ms']:.1f} ms, max {out['max_ms']:.1f} ms; accept to cloud apply p50 "
             f"{out['apply_p50_ms']:.1f} ms, p99 {out['apply_p99_ms']:.1f} ms ({report})")
    return out


def _open_loop(edge: Edge, opts: Options, n: int, warm: int,
               on_measure: Callable[[], None]) -> tuple[list[tuple[int, float]], list[float]]:
    """Post n single events at opts.rate (post i at t0 + i/rate); (seq, accept ms) per post
    and how late each post left its slot (ms)."""
    post = edge.app.service.post_entries
    devices = edge.device_ids
    accept_ns = [0] * n
    futures: list[Future[range]] = []
    lateness: list[float] = []
    clock = time.perf_counter

    def accepted(i: int) -> Callable[[Future[range]], None]:
        def done(_f: Future[range]) -> None:
            accept_ns[i] = time.time_ns()
        return done

    t0 = clock() + 0.01
    for i in range(n):
        if i == warm:
            on_measure()
        scheduled = t0 + i / opts.rate
        delay = scheduled - clock()
        if delay > 0:
            time.sleep(delay)
        if i >= warm:
            lateness.append(max(0.0, clock() - scheduled) * 1000.0)
        future = post(devices[i % len(devices)], ((_TS0 + i, (("v", i),)),))
        future.add_done_callback(accepted(i))
        futures.append(future)
    out = []
    for i, future in enumerate(futures):
        seq = future.result(timeout=60).start
        out.append((seq, accept_ns[i] / 1e6))
    return out, lateness


def phase_drain(opts: Options, workdir: Path) -> dict[str, Any]:
    """drain_eps and peak_rss_mb: a backlog made with the cloud down, then the cloud started."""
    cloud = Cloud(workdir / "cloud")  # registered; its port is reserved, nothing listens yet
    edge: Edge | None = None
    errors: list[str] = []
    try:
        edge = Edge(workdir / "edge", cloud, opts, log_level="ERROR")  # no BACKOFF warnings
        progress(f"drain: posting {opts.backlog:,} events with the cloud down")
        t = time.monotonic()
        ClosedLoop(edge, opts, limit=None, total=opts.backlog).start().join(timeout=3600)
        fill_s = time.monotonic() - t
        backlog = edge.pending()
        progress(f"drain: {backlog:,} events pending ({opts.backlog / fill_s:,.0f} events/s "
                 f"posted in {fill_s:.1f} s; link {edge.link_state()}); starting the cloud")
        me = os.getpid()
        scope = "drain" if reset_peak_rss() else "process lifetime"
        rss_start = rss_parts_mb(me)
        peak_anon = rss_start.get("anon", math.nan)
        peak_file = rss_start.get("file", math.nan)
        base_deployed = edge.deployed()
        t_spawn = time.monotonic()
        t0 = cloud.start()
        cpu = CpuClock(cloud.pid)
        first_ack: float | None = None
        next_rss = 0.0
        last_report = t0
        deadline = t0 + max(600.0, backlog / 500)
        while True:
            now = time.monotonic()
            pending = edge.pending()
            if first_ack is None and edge.deployed() > base_deployed:
                first_ack = now
            if now >= next_rss or pending == 0:
                parts = rss_parts_mb(me)
                peak_anon = max(peak_anon, parts.get("anon", 0.0))
                peak_file = max(peak_file, parts.get("file", 0.0))
                next_rss = now + 0.25
            if pending == 0:
                break
            if now > deadline:
                raise PhaseError(f"drain: {pending:,} events still pending after {now - t0:.0f}s")
            if now - last_report >= 10:
                last_report = now
                progress(f"drain: {pending:,} pending after {now - t0:.0f} s "
                         f"({(backlog - pending) / (now - t0):,.0f} events/s so far)")
            time.sleep(_POLL_S)
        t1 = time.monotonic()
        report = cpu.report()
        peak = peak_rss_mb(me)
        store_mb = edge.app.store.used_bytes() / (1024 * 1024)
        seconds = t1 - t0
        eps = backlog / seconds
        errors += _link_problems(edge, "drain")
        progress(f"drain: {backlog:,} events in {seconds:.1f} s = {eps:,.0f} events/s (first "
                 f"DEPLOYED {(first_ack or t1) - t0:.2f} s after the cloud answered, which took "
                 f"{t0 - t_spawn:.1f} s to start; {report}); edge VmHWM {peak:.0f} MiB "
                 f"(RssAnon peak {peak_anon:.0f}, RssFile peak {peak_file:.0f}; {scope}; "
                 f"store {store_mb:.0f} MiB)")
        out: dict[str, Any] = {
            "eps": eps, "backlog": backlog, "seconds": seconds,
            "connect_s": (first_ack or t1) - t0, "cloud_start_s": t0 - t_spawn,
            "fill_eps": opts.backlog / fill_s, "peak_rss_mb": peak, "peak_rss_scope": scope,
            "peak_rss_anon_mb": peak_anon, "peak_rss_file_mb": peak_file,
            "rss_before_mb": rss_start.get("rss", math.nan), "store_mb": store_mb,
            "cpu": cpu.figures,
        }
    finally:
        edge_code = edge.stop() if edge is not None else None
        code = cloud.stop()
    out.update(cloud_exit_code=code, edge_exit_code=edge_code, errors=errors)
    return out


_PHASE_FN: dict[str, Callable[[Options, Path], dict[str, Any]]] = {
    "raw": phase_raw,
    "sustained": phase_sustained,
    "latency": phase_latency,
    "drain": phase_drain,
}


def run_phase_here(phase: str, opts: Options) -> int:
    """Worker side: run one phase in this process, print its result as the last stdout line."""
    from edge_sync.config import LogConfig, LogLevel
    from edge_sync.logsetup import configure_logging

    configure_logging(LogConfig(level=LogLevel.WARNING), component="bench")
    with tempfile.TemporaryDirectory(prefix=f"e2e-{phase}-") as tmp:
        try:
            out = _PHASE_FN[phase](opts, Path(tmp))
        except Exception as exc:  # reported to the parent, which reports it in the JSON line
            progress(f"{phase}: FAILED: {exc!r}")
            emit({"error": f"{phase}: {exc}"})
            return 1
    emit(out)
    return 0


# -- the parent: runs workers, aggregates -------------------------------------------------------


@dataclass
class Collected:
    raw: list[float] = dataclasses.field(default_factory=list)
    sustained: list[float] = dataclasses.field(default_factory=list)
    pending_max: list[float] = dataclasses.field(default_factory=list)
    p50: list[float] = dataclasses.field(default_factory=list)
    p99: list[float] = dataclasses.field(default_factory=list)
    apply_p50: list[float] = dataclasses.field(default_factory=list)
    apply_p99: list[float] = dataclasses.field(default_factory=list)
    lateness_p99: list[float] = dataclasses.field(default_factory=list)
    drain: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    machine: list[dict[str, float]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def machine_load() -> dict[str, float]:
    """How busy the (shared) machine is: 1-minute load average and, where the kernel has PSI,
    the share of the last 60 s in which some task waited for a CPU / for I/O (%)."""
    out = {"loadavg_1m": round(os.getloadavg()[0], 2)}
    for res in ("cpu", "io"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            some = Path(f"/proc/pressure/{res}").read_text().splitlines()[0].split()
            out[f"psi_{res}_some_avg60"] = float(some[2].split("=")[1])
    return out


def run_worker(phase: str, opts: Options, *, timeout: float) -> dict[str, Any]:
    """One phase in a fresh worker subprocess (its own session, so that it and the cloud it
    started can be ended together): its result dict, with an 'error' when it failed."""
    payload = json.dumps(dataclasses.asdict(opts))
    cmd = [sys.executable, "-m", "bench", "e2e", "--phase", phase,
           "--phase-options", payload, "--progress-origin", repr(progress_origin())]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=sys.stderr, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:  # timeout or Ctrl-C: end the worker and the cloud it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            return {"error": f"{phase}: no result within {timeout:.0f}s; worker killed"}
        raise
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        return {"error": f"{phase}: worker exited with code {proc.returncode} without a result"}
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"{phase}: worker exited with code {proc.returncode}"
    return result


def _absorb(phase: str, result: dict[str, Any], got: Collected) -> None:
    if "error" in result:
        got.errors.append(str(result["error"]))
        return
    got.errors.extend(result.get("errors", []))
    own = "client" if phase == "raw" else "edge"
    for key, name in (("own", own), ("cloud", "cloud")):
        if key in result.get("cpu", {}):
            got.cpu.setdefault(f"{phase}_{name}", []).append(result["cpu"][key])
    for who in ("cloud", "edge"):
        if result.get(f"{who}_exit_code") not in (0, None):
            got.errors.append(f"{phase}: the {who} exited with code {result[f'{who}_exit_code']}")
    if phase == "raw":
        got.raw.append(result["eps"])
    elif phase == "sustained":
        got.sustained.append(result["eps"])
        got.pending_max.append(result["pending_max"])
    elif phase == "latency":
        got.p50.append(result["p50_ms"])
        got.p99.append(result["p99_ms"])
        got.apply_p50.append(result["apply_p50_ms"])
        got.apply_p99.append(result["apply_p99_ms"])
        got.lateness_p99.append(result["post_lateness_p99_ms"])
    elif phase == "drain":
        got.drain.append(result)


def result_line(opts: Options, got: Collected) -> dict[str, Any]:
    raw_eps = median(got.raw)
    sustained_eps = median(got.sustained)
    drain_values = [d["eps"] for d in got.drain]
    drain_eps = median(drain_values)
    rss_values = [d["peak_rss_mb"] for d in got.drain]

    def ratio(value: float) -> float:
        return value / raw_eps if raw_eps > 0 and math.isfinite(value) else math.nan

    figures: dict[str, float] = {
        "sustained_eps": sustained_eps,
        "drain_eps": drain_eps,
        "raw_ceiling_eps": raw_eps,
        "sustained_ratio": ratio(sustained_eps),
        "drain_ratio": ratio(drain_eps),
        "p50_ms": median(got.p50),
        "p99_ms": median(got.p99),
        "peak_rss_mb": median(rss_values),
    }
    digits = {"sustained_ratio": 3, "drain_ratio": 3, "p50_ms": 1, "p99_ms": 1, "peak_rss_mb": 1}
    meets: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        value = figures[key]
        meets[key] = None if math.isnan(value) else (value < target if key in _BELOW else value >= target)
    sustained_ratios = [s / r for s, r in zip(got.sustained, got.raw, strict=False) if r > 0]
    samples: Mapping[str, Sequence[float]] = {
        "raw_ceiling_eps": got.raw,
        "sustained_eps": got.sustained,
        "sustained_ratio": sustained_ratios,
        "drain_eps": drain_values,
        "drain_ratio": [ratio(v) for v in drain_values],
        "p50_ms": got.p50,
        "p99_ms": got.p99,
        "apply_p50_ms": got.apply_p50,
        "apply_p99_ms": got.apply_p99,
        "peak_rss_mb": rss_values,
        "pending_max": got.pending_max,
    }
    line: dict[str, Any] = {"bench": "e2e"}
    line.update({k: rounded(v, digits.get(k, 0)) for k, v in figures.items()})
    line["backlog"] = opts.backlog
    line["drain_runs"] = len(got.drain)
    drain_extra = {
        "drain_s": ("seconds", 2), "drain_connect_s": ("connect_s", 2),
        "fill_eps": ("fill_eps", 0), "peak_rss_anon_mb": ("peak_rss_anon_mb", 1),
        "peak_rss_file_mb": ("peak_rss_file_mb", 1), "rss_before_drain_mb": ("rss_before_mb", 1),
        "edge_store_mb": ("store_mb", 1),
    }
    for key, (field, d) in drain_extra.items():
        line[key] = rounded(median([x[field] for x in got.drain]), d)
    line["peak_rss_scope"] = got.drain[0]["peak_rss_scope"] if got.drain else None
    line["apply_p50_ms"] = rounded(median(got.apply_p50), 1)
    line["apply_p99_ms"] = rounded(median(got.apply_p99), 1)
    line["post_lateness_p99_ms"] = rounded(median(got.lateness_p99), 1)
    line["pending_max"] = rounded(max(got.pending_max) if got.pending_max else math.nan, 0)
    line["cpu_pct"] = {k: [rounded(v, 0) for v in vs] for k, vs in got.cpu.items()}
    keys = got.machine[0] if got.machine else {}
    line["machine"] = {"cpus": os.cpu_count(), **{k: [m.get(k) for m in got.machine] for k in keys}}
    line["runs"] = opts.runs
    line["duration_s"] = opts.duration
    line["latency_duration_s"] = opts.latency_duration
    line["rate"] = opts.rate
    line["max_pending"] = opts.max_pending
    line["errors"] = got.errors
    line["samples"] = {k: [rounded(v, digits.get(k, 1 if k.endswith("_ms") else 0)) for v in vs]
                       for k, vs in samples.items()}
    line["targets"] = TARGETS
    line["meets_targets"] = meets
    return line


def parse_args(argv: Sequence[str]) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="scripts/bench e2e",
        description="Edge to cloud end to end on loopback: sustained and drain throughput against "
        "a raw LMDB+protobuf+gRPC ceiling, accept-to-ack latency, the edge's peak RSS. Progress "
        "goes to stderr; the last stdout line is the JSON result.",
    )
    p.add_argument("--runs", type=int, default=None,
                   help="repeat raw, sustained and latency N times, report medians (default 3)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of the sustained and raw measurement windows (default 5)")
    p.add_argument("--latency-duration", type=float, default=None,
                   help="seconds of the open-loop latency measurement (default 5)")
    p.add_argument("--rate", type=float, default=1000.0, help="events/s of the latency test")
    p.add_argument("--backlog", type=int, default=None,
                   help="events queued with the cloud down (default 1,000,000; --quick 100,000)")
    p.add_argument("--drain-runs", type=int, default=1, help="drain measurements (default 1)")
    p.add_argument("--raw-events", type=int, default=None,
                   help="events in the raw ceiling's log (default 400,000; --quick 150,000)")
    p.add_argument("--max-pending", type=int, default=10_000,
                   help="closed loop: most posted events not yet DEPLOYED (default 10,000)")
    p.add_argument("--devices", type=int, default=16, help="devices the load is spread over")
    p.add_argument("--post-window", type=int, default=32,
                   help="closed loop and fill: most uncommitted posts (default 32)")
    p.add_argument("--only", default="all",
                   help="comma-separated phases to run: raw, sustained, latency, drain (default all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 run, 2 s windows, backlog 100,000")
    p.add_argument("--phase", choices=PHASES,
                   help="run one measurement in the foreground, in this process (the cloud "
                   "still a subprocess), and print its raw result; for profilers")
    p.add_argument("--phase-options", help=argparse.SUPPRESS)
    p.add_argument("--progress-origin", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(list(argv))
    if args.phase_options:
        raw = json.loads(args.phase_options)
        raw["only"] = tuple(raw["only"])
        return Options(**raw), args
    only = PHASES if args.only == "all" else tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = [x for x in only if x not in PHASES]
    if unknown or not only:
        p.error(f"--only: unknown phase(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PHASES)}")
    q = args.quick
    opts = Options(
        runs=args.runs if args.runs is not None else (1 if q else 3),
        duration=args.duration if args.duration is not None else (2.0 if q else 5.0),
        warmup=1.0 if q else 2.0,
        latency_duration=args.latency_duration if args.latency_duration is not None else (2.0 if q else 5.0),
        rate=args.rate,
        backlog=args.backlog if args.backlog is not None else (100_000 if q else 1_000_000),
        drain_runs=args.drain_runs,
        raw_events=args.raw_events if args.raw_events is not None else (150_000 if q else 400_000),
        max_pending=args.max_pending,
        post_window=args.post_window,
        devices=args.devices,
        only=only,
    )
    if min(opts.runs, opts.backlog, opts.raw_events, opts.max_pending, opts.devices,
           opts.post_window) < 1 or min(
            opts.duration, opts.latency_duration, opts.rate) <= 0 or opts.drain_runs < 0:
        p.error("--runs, --backlog, --raw-events, --max-pending, --devices, --post-window, "
                "--duration, --latency-duration and --rate must be positive (--drain-runs >= 0)")
    return opts, args


def main(argv: Sequence[str]) -> int:
    opts, args = parse_args(argv)
    if args.phase:
        if args.progress_origin is not None:
            set_progress_origin(args.progress_origin)
        return run_phase_here(args.phase, opts)
    got = Collected(machine=[machine_load()])
    plan = [p for p in ("raw", "sustained", "latency") if p in opts.only]
    drain = "drain" in opts.only and opts.drain_runs > 0
    progress(f"e2e: {opts.runs} run(s) of {', '.join(plan) or 'nothing'}"
             + (f"; {opts.drain_runs} drain(s) of {opts.backlog:,} events" if drain else "")
             + f" ({os.cpu_count()} cpus)")
    for run in range(1, opts.runs + 1):
        for phase in plan:
            progress(f"run {run}/{opts.runs}: {phase}")
            timeout = 300 + opts.duration + opts.latency_duration + opts.raw_events / 1000
            _absorb(phase, run_worker(phase, opts, timeout=timeout), got)
    if drain:
        for run in range(1, opts.drain_runs + 1):
            progress(f"drain {run}/{opts.drain_runs}: {opts.backlog:,} events")
            _absorb("drain", run_worker("drain", opts, timeout=900 + opts.backlog / 250), got)
    got.machine.append(machine_load())
    line = result_line(opts, got)
    emit(line)
    if got.errors:
        progress("FAILED: " + "; ".join(got.errors[:5]))
        return 1
    return 0
