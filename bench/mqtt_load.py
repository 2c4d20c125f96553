"""The load generator of ``scripts/bench mqtt``: lean MQTT 3.1.1 clients on asyncio, spread over
several OS processes so that the load can use every core.

Every packet is encoded by amqtt's codec (``amqtt.mqtt.*``), once, before the clock starts:
CONNECT, each client's PUBLISHes (QoS 1, one per packet id of a short cycle, payload
``{"v": <packet id>}``) and DISCONNECT. What the server sends back is never parsed: CONNACK
and PUBACK are fixed-size frames (4 bytes), so a connection reads whole 4-byte frames and looks
each up among the frames it expects, which amqtt encoded too (CONNACK "accepted", the PUBACK of
each packet id). Anything else (another packet, a refusal) fails the run. PUBACKs may arrive
in any order; a packet id is not reused while its PUBLISH is unacknowledged.

A connection is an ``asyncio.Protocol`` (no streams, no task per connection). Three jobs:

- ``throughput``: each client keeps ``window`` PUBLISHes in flight (a PUBACK lets the next one
  go) from ``start_at``; the PUBACKs that arrive between ``start_at + warmup_s`` and
  ``+ duration_s`` are counted (also per whole second); then the clients stop publishing, wait
  for the rest of their PUBACKs and disconnect.
- ``latency``: an open loop. Message j of ``rate * (warmup_s + duration_s)`` is due at
  ``start_at + j / rate`` on client ``j % clients``; its latency runs from that due time (so a
  late send counts) to its PUBACK. Messages due in the warm-up are not recorded.
- ``idle``: connect and stay connected, silent (a long keep-alive), until told to close.

The parent (``run_job``) starts the worker processes (``multiprocessing``, spawn), waits until
all their clients are connected (CONNACK received), tells them when to start, and collects what
each measured, its CPU time (user + system) over the measured interval included.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from amqtt.adapters import StreamReaderAdapter
from amqtt.mqtt.connack import CONNECTION_ACCEPTED, ConnackPacket
from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.subscribe import SubscribePacket

FRAME = 4  # CONNACK and PUBACK are both 4 bytes long in MQTT 3.1.1
_CONNECT_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Job:
    """What a worker process does (picklable: it travels to the worker)."""

    kind: str  # "throughput", "latency" or "idle"
    port: int
    clients: int  # over all workers; client i is in worker i % workers
    username: str = "bench-{i:05d}"  # str.format'ed with i; the device's access token for edge-sync
    topic: str = "v1/devices/me/telemetry"  # may hold {i}: a topic per client
    keep_alive: int = 600
    window: int = 100  # throughput: PUBLISHes in flight per client
    warmup_s: float = 1.0
    duration_s: float = 5.0
    rate: float = 1000.0  # latency: messages/s over all clients
    connect_concurrency: int = 200  # connections being opened at once, per worker
    indices: tuple[int, ...] = ()  # this worker's clients (set by run_job)
    worker: int = 0

    @property
    def cycle(self) -> int:
        """Packet ids run 1..cycle and around: more than can be in flight at once."""
        return max(4 * self.window, 256) if self.kind == "throughput" else 1024


@dataclass
class WorkerResult:
    acked: list[int] = field(default_factory=list)  # per client, in the measured interval
    per_second: list[int] = field(default_factory=list)  # all clients, by whole second
    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # s, measured messages only
    lateness: list[float] = field(default_factory=list)  # s, how late sends went out
    overruns: int = 0  # latency: a packet id still in flight when due again (not sent)
    cpu_s: float = 0.0  # user + system CPU of the worker over the measured interval
    wall_s: float = 0.0
    connect_s: float = 0.0  # opening every connection (to CONNACK)


@dataclass
class JobResult:
    """The workers' results put together."""

    clients: int
    workers: int
    acked: list[int] = field(default_factory=list)
    per_second: list[int] = field(default_factory=list)
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    overruns: int = 0
    cpu_s: list[float] = field(default_factory=list)  # per worker
    wall_s: float = 0.0
    connect_s: float = 0.0
    server_cpu_pct: float = float("nan")  # the server's CPU over the measured interval, % of a core

    @property
    def total_acked(self) -> int:
        return sum(self.acked)

    @property
    def client_cpu_pct(self) -> float:
        """CPU of all the worker processes over the measured interval, in % of one core."""
        return sum(self.cpu_s) / self.wall_s * 100 if self.wall_s > 0 else float("nan")


class LoadError(RuntimeError):
    """A worker failed (a refused connection, an unexpected frame, a closed connection...)."""


# -- the packets -----------------------------------------------------------------------------------


class Packets:
    """A client's pre-encoded packets (amqtt's codec) and the frames it expects back."""

    connack_ok = bytes(ConnackPacket.build(0, CONNECTION_ACCEPTED).to_bytes())
    disconnect = bytes(DisconnectPacket().to_bytes())

    def __init__(self, job: Job, i: int, publishes: list[bytes] | None) -> None:
        header = ConnectVariableHeader(0, job.keep_alive, "MQTT", 4)
        header.username_flag = True
        header.clean_session_flag = True
        payload = ConnectPayload(client_id=f"bench-{os.getpid()}-{i}",
                                 username=job.username.format(i=i))
        self.connect = bytes(ConnectPacket(variable_header=header, payload=payload).to_bytes())
        self.publishes = publishes  # index: packet id (0 unused)


def publish_cycle(topic: str, cycle: int) -> list[bytes]:
    """QoS 1 PUBLISH packets for packet ids 1..cycle (index = packet id; 0 is unused)."""
    out = [b""]
    for pid in range(1, cycle + 1):
        out.append(bytes(PublishPacket.build(topic, b'{"v": %d}' % pid, pid, False, 1, False).to_bytes()))
    return out


def ack_frames(cycle: int) -> dict[bytes, int]:
    """The PUBACK frame of each packet id 1..cycle -> that id."""
    return {bytes(PubackPacket.build(pid).to_bytes()): pid for pid in range(1, cycle + 1)}


def _retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


# -- one connection --------------------------------------------------------------------------------


class LoadConnection(asyncio.Protocol):
    """One client: CONNECT on connection, then PUBLISHes as the job asks; counts PUBACKs."""

    def __init__(self, packets: Packets, acks: dict[bytes, int], cycle: int) -> None:
        loop = asyncio.get_running_loop()
        self.packets = packets
        self.acks = acks
        self.cycle = cycle
        self.transport: asyncio.Transport | None = None
        self.connacked: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        for fut in (self.connacked, self.drained):  # a failure is reported once, via .failure
            fut.add_done_callback(_retrieved)
        self.failure: str | None = None
        self._buf = b""
        self._connected = False
        self._closing = False
        self.inflight: dict[int, float] = {}  # packet id -> sent (throughput) / due (latency)
        self._next = 1
        self.window = 0
        self.running = False  # throughput: keep the window full
        self.sent = 0
        self.acked = 0  # in [measure_from, measure_to)
        self.measure_from = float("inf")
        self.measure_to = float("inf")
        self.per_second: list[int] = []
        self.latencies: list[float] | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.packets.connect)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._connected:
            if len(buf) < FRAME:
                self._buf = buf
                return
            if buf[:FRAME] != Packets.connack_ok:
                self.fail(f"CONNACK not accepted: {buf[:FRAME]!r}")
                return
            self._connected = True
            buf = buf[FRAME:]
            self.connacked.set_result(None)
        end = len(buf) - len(buf) % FRAME
        self._buf = buf[end:]
        if not end:
            return
        now = time.monotonic()
        acks, inflight, latencies = self.acks, self.inflight, self.latencies
        count = 0
        for k in range(0, end, FRAME):
            pid = acks.get(buf[k:k + FRAME])
            sent = None if pid is None else inflight.pop(pid, None)
            if sent is None:
                self.fail(f"unexpected frame {buf[k:k + FRAME]!r} (not a PUBACK of a PUBLISH in flight)")
                return
            if latencies is not None and sent >= self.measure_from:
                latencies.append(now - sent)
            count += 1
        if self.measure_from <= now < self.measure_to:
            self.acked += count
            second = int(now - self.measure_from)
            if second < len(self.per_second):
                self.per_second[second] += count
        if self.running:
            self.top_up()
        elif not inflight and not self.drained.done():
            self.drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self.fail(f"the server closed the connection ({exc!r})")

    # driving it
    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        for fut in (self.connacked, self.drained):
            if not fut.done():
                fut.set_exception(LoadError(reason))
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.abort()

    def _take_pid(self) -> int | None:
        pid = self._next
        if pid in self.inflight:
            return None
        self._next = pid % self.cycle + 1
        return pid

    def top_up(self) -> None:
        """Throughput: PUBLISH until ``window`` are in flight."""
        free = self.window - len(self.inflight)
        if free <= 0 or self.transport is None or self._closing:
            return
        now = time.monotonic()
        publishes = self.packets.publishes
        assert publishes is not None
        out = []
        for _ in range(free):
            pid = self._take_pid()
            if pid is None:
                break
            self.inflight[pid] = now
            out.append(publishes[pid])
        self.sent += len(out)
        self.transport.write(b"".join(out))

    def stop(self) -> None:
        """Throughput: publish no more; ``drained`` resolves once every PUBACK is in."""
        self.running = False
        if not self.inflight and not self.drained.done():
            self.drained.set_result(None)

    def send_one(self, due: float) -> bool:
        """Latency: one PUBLISH, its latency counted from ``due``. False: its packet id is
        still in flight (an overrun, not sent)."""
        pid = self._take_pid()
        if pid is None or self.transport is None or self._closing:
            return False
        publishes = self.packets.publishes
        assert publishes is not None
        self.inflight[pid] = due
        self.sent += 1
        self.transport.write(publishes[pid])
        return True

    def close(self) -> None:
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.write(Packets.disconnect)
            self.transport.close()


# -- the worker process ----------------------------------------------------------------------------


def worker_main(job: Job, conn: Connection) -> None:
    """A worker process: run ``job`` for ``job.indices``, talking to the parent over ``conn``."""
    from bench.common import raise_open_files

    try:
        raise_open_files(len(job.indices) + 256)
        asyncio.run(_worker(job, conn))
    except BaseException as exc:  # reported to the parent, which fails the run
        with contextlib.suppress(Exception):
            conn.send(("error", f"worker {job.worker}: {exc!r}\n{traceback.format_exc(limit=5)}"))
    finally:
        conn.close()


async def _worker(job: Job, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    cycle = job.cycle
    acks = ack_frames(cycle)
    shared: dict[str, list[bytes]] = {}  # topic -> publishes (edge-sync: one topic for all)

    def packets(i: int) -> Packets:
        if job.kind == "idle":
            return Packets(job, i, None)
        topic = job.topic.format(i=i)
        if topic not in shared:
            shared[topic] = publish_cycle(topic, cycle)
        return Packets(job, i, shared[topic])

    gate = asyncio.Semaphore(job.connect_concurrency)

    async def open_one(i: int) -> LoadConnection:
        async with gate:
            client = LoadConnection(packets(i), acks, cycle)
            await loop.create_connection(lambda: client, "127.0.0.1", job.port)
            await asyncio.wait_for(client.connacked, _CONNECT_TIMEOUT_S)
            return client

    t0 = time.monotonic()
    clients = list(await asyncio.gather(*(open_one(i) for i in job.indices)))
    result = WorkerResult(connect_s=time.monotonic() - t0)
    conn.send(("connected", len(clients)))
    command = await asyncio.to_thread(conn.recv)
    try:
        if command[0] == "go":
            start_at = float(command[1])
            if job.kind == "throughput":
                await _throughput(job, clients, start_at, result)
            elif job.kind == "latency":
                await _latency(job, clients, start_at, result)
        failed = [c.failure for c in clients if c.failure]
        if failed:
            raise LoadError(f"{len(failed)} connection(s) failed, e.g. {failed[0]}")
    finally:
        for client in clients:
            client.close()
        await asyncio.sleep(0.05)  # let the DISCONNECTs go out
    result.acked = [c.acked for c in clients]
    result.sent = sum(c.sent for c in clients)
    conn.send(("result", result))


async def _measure_cpu(start: float, end: float, result: WorkerResult) -> None:
    """CPU time of this process between the monotonic times start and end, read with
    ``time.process_time`` (nanoseconds; ``os.times`` counts clock ticks of 10 ms, and a worker
    that used less than one in a --quick interval on a loaded machine measured 0). A loop too
    busy to wake this task before ``end`` (a loaded machine, a short --quick interval) would
    measure nothing: it then measures from the task's own start, warm-up included."""
    early = (time.process_time(), time.monotonic())
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    before, wall = time.process_time(), time.monotonic()
    if wall >= end:
        before, wall = early
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    result.cpu_s = time.process_time() - before
    result.wall_s = time.monotonic() - wall


async def _throughput(job: Job, clients: Sequence[LoadConnection], start_at: float,
                      result: WorkerResult) -> None:
    measure_from = start_at + job.warmup_s
    measure_to = measure_from + job.duration_s
    seconds = max(1, int(job.duration_s))
    for c in clients:
        c.window = job.window
        c.measure_from, c.measure_to = measure_from, measure_to
        c.per_second = [0] * seconds
    cpu = asyncio.create_task(_measure_cpu(measure_from, measure_to, result))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    for c in clients:
        c.running = True
        c.top_up()
    await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
    await cpu
    for c in clients:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*(c.drained for c in clients)), _DRAIN_TIMEOUT_S)
    result.per_second = [sum(c.per_second[s] for c in clients) for s in range(seconds)]


async def _latency(job: Job, clients: Sequence[LoadConnection], start_at: float,
                   result: WorkerResult) -> None:
    measure_from = start_at + job.warmup_s
    total = int(job.rate * (job.warmup_s + job.duration_s))
    latencies: list[float] = []
    mine = dict(zip(job.indices, clients, strict=True))
    for c in clients:
        c.measure_from = measure_from
        c.latencies = latencies
    cpu = asyncio.create_task(_measure_cpu(measure_from, start_at + total / job.rate, result))
    for j in range(total):
        client = mine.get(j % job.clients)
        if client is None:
            continue
        due = start_at + j / job.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if due >= measure_from:
            result.lateness.append(max(0.0, time.monotonic() - due))
        if not client.send_one(due):
            result.overruns += 1
    await cpu
    for c in clients:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*(c.drained for c in clients)), _DRAIN_TIMEOUT_S)
    result.latencies = latencies


# -- the parent ------------------------------------------------------------------------------------


def run_job(job: Job, workers: int, *, on_connected: Callable[[], Any] | None = None,
            server_pid: int | None = None, timeout: float = 300.0) -> JobResult:
    """Run ``job`` over ``workers`` processes (fewer when there are fewer clients). Once every
    client is connected, ``on_connected`` is called (idle: measure the server), then the job
    starts; the workers' results, put together, with the CPU use of ``server_pid`` over the
    measured interval. LoadError when a worker failed."""
    workers = max(1, min(workers, job.clients))
    server_cpu: list[float] = []
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    pipes: list[Connection] = []
    try:
        for w in range(workers):
            mine, theirs = ctx.Pipe()
            indices = tuple(range(w, job.clients, workers))
            proc = ctx.Process(target=worker_main, args=(replace(job, indices=indices, worker=w), theirs),
                               name=f"mqtt-load-{w}", daemon=True)
            proc.start()
            theirs.close()
            procs.append(proc)
            pipes.append(mine)
        deadline = time.monotonic() + timeout
        for pipe in pipes:
            _expect(pipe, "connected", deadline)
        if on_connected is not None:
            on_connected()
        start_at = time.monotonic() + 0.2
        for pipe in pipes:
            pipe.send(("go", start_at))
        watch = None
        if server_pid is not None and job.kind != "idle":
            measured = (job.duration_s if job.kind == "throughput"
                        else int(job.rate * (job.warmup_s + job.duration_s)) / job.rate - job.warmup_s)
            watch = threading.Thread(target=_watch_cpu, daemon=True, args=(
                server_pid, start_at + job.warmup_s, measured, server_cpu))
            watch.start()
        parts: list[WorkerResult] = [_expect(pipe, "result", deadline) for pipe in pipes]
        if watch is not None:
            watch.join(5)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.close()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    out = JobResult(clients=job.clients, workers=workers)
    acked: dict[int, int] = {}
    for w, part in enumerate(parts):
        acked.update(zip(range(w, job.clients, workers), part.acked, strict=True))
        out.sent += part.sent
        out.latencies += part.latencies
        out.lateness += part.lateness
        out.overruns += part.overruns
        out.cpu_s.append(part.cpu_s)
        out.wall_s = max(out.wall_s, part.wall_s)
        out.connect_s = max(out.connect_s, part.connect_s)
        if part.per_second:
            out.per_second = [a + b for a, b in zip(out.per_second or [0] * len(part.per_second),
                                                    part.per_second, strict=True)]
    out.acked = [acked[i] for i in range(job.clients)]
    out.server_cpu_pct = server_cpu[0] if server_cpu else float("nan")
    out.latencies.sort()
    out.lateness.sort()
    return out


def _watch_cpu(pid: int, start: float, seconds: float, out: list[float]) -> None:
    """Append the CPU use of ``pid`` from monotonic time ``start`` for ``seconds``, in % of a core."""
    from bench.common import cpu_seconds

    with contextlib.suppress(OSError, ValueError):
        time.sleep(max(0.0, start - time.monotonic()))
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(max(0.0, start + seconds - time.monotonic()))
        out.append((cpu_seconds(pid) - before) / (time.monotonic() - t0) * 100)


async def _subscribe_offline(port: int, client_id: str, topic_filter: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        header = ConnectVariableHeader(0, 60, "MQTT", 4)
        header.clean_session_flag = False
        connect = ConnectPacket(variable_header=header, payload=ConnectPayload(client_id=client_id))
        writer.write(connect.to_bytes())
        adapter = StreamReaderAdapter(reader)
        connack = await ConnackPacket.from_stream(adapter)
        if connack.return_code != CONNECTION_ACCEPTED:
            raise LoadError(f"the subscriber's CONNECT was refused: {connack!r}")
        writer.write(SubscribePacket.build([(topic_filter, 1)], 1).to_bytes())
        suback = await SubackPacket.from_stream(adapter)
        if list(suback.payload.return_codes) != [1]:
            raise LoadError(f"the QoS 1 subscription to {topic_filter} was not granted: {suback!r}")
        writer.write(DisconnectPacket().to_bytes())
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def subscribe_offline(port: int, client_id: str, topic_filter: str, *, timeout: float = 10.0) -> None:
    """A persistent session (clean session false) with a QoS 1 subscription to ``topic_filter``,
    left disconnected: the broker keeps every matching message for it (its offline queue)."""
    asyncio.run(asyncio.wait_for(_subscribe_offline(port, client_id, topic_filter), timeout))


def _expect(pipe: Connection, what: str, deadline: float) -> Any:
    if not pipe.poll(max(0.0, deadline - time.monotonic())):
        raise LoadError(f"a load worker sent no {what!r} in time")
    try:
        kind, value = pipe.recv()
    except EOFError:
        raise LoadError(f"a load worker ended before {what!r}") from None
    if kind == "error":
        raise LoadError(str(value))
    if kind != what:
        raise LoadError(f"a load worker sent {kind!r}, expected {what!r}")
    return value
