"""A fault-injecting TCP proxy for the chaos tests: it sits between the edge and the cloud on
loopback and, on command, passes traffic, refuses new connections, swallows everything while
keeping connections open (a half-open link), resets connections (now, or mid-message after a
number of bytes), adds latency with jitter, caps the bandwidth, or flaps on a schedule.

    proxy = FaultProxy(target=("127.0.0.1", cloud.rpc_port)).start()
    ... point the edge's CLOUD_RPC_PORT at proxy.port ...
    proxy.blackhole(); ...; proxy.pass_through()
    proxy.stop()

It runs an asyncio loop on its own daemon thread; every command is executed on that loop and
has taken effect when the call returns. It listens on 127.0.0.1 only and forwards to a loopback
address only (anything else is a ValueError). stop() ends the schedule, resets every open
connection, closes the listener and joins the thread: nothing outlives it.

Modes (what happens to traffic; one at a time, a command replaces the previous one):

- pass_through(): bytes flow both ways (subject to latency() and bandwidth()).
- refuse(existing="keep"|"close"|"reset"): every new connection is reset (RST) as soon as it
  is accepted; existing connections keep flowing ("keep"), are closed with a FIN ("close", like
  a peer that shuts down) or reset ("reset", like a peer that crashed).
- blackhole(): connections, old and new, stay open but nothing is forwarded in either
  direction. Bytes are not read (they stay in the kernel's buffers, as TCP would keep
  retransmitting them across a partition), so when traffic passes again the streams resume
  intact: a healed partition, not a corrupted stream. A peer that gave up meanwhile has closed
  its socket, and the proxy passes that close on when it reads it.
- flap(up_s, down_s, mode): pass for up_s, then `mode` ("refuse": refuse(existing="close"),
  "reset": refuse(existing="reset"), "blackhole") for down_s, again and again until another
  mode command or stop(). `phases` records (time.time(), "up"|"down") of each change.

Actions and shapers (independent of the mode):

- reset_all(): reset (SO_LINGER 0, then close: RST) both sides of every open connection now.
- reset_after(n_bytes, direction="up"|"down"|"any"): forward n more bytes in that direction
  ("up": client to target, i.e. edge to cloud), then reset the connection that carried the
  n-th byte. One-shot. The n bytes are handed to the kernel (and, on loopback, normally
  delivered) before the reset.
- latency(ms, jitter_ms=0): delay every chunk, in each direction, by ms +/- jitter_ms (uniform),
  keeping the byte order (a chunk never overtakes an earlier one). A round trip through the
  proxy therefore gains about 2 * ms. latency(0) removes it.
- bandwidth(bytes_per_s): cap each direction at bytes_per_s over all connections together
  (a shared token bucket, sent in slices of at most 1/50 s worth). None or 0 removes the cap.

Counters (read them from any thread): accepted (TCP connections accepted, refused ones
included), refused, resets (connections reset by the proxy), bytes_up, bytes_down (forwarded),
active (open connections), flaps (down phases entered), accept_times (time.time() of each
accept: wall clock, comparable with the processes' log timestamps). stats() returns them as a
dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

__all__ = ["FaultProxy"]

Direction = Literal["up", "down", "any"]
FlapMode = Literal["refuse", "blackhole", "reset"]
Existing = Literal["keep", "close", "reset"]

_CHUNK = 65536
_COMMAND_TIMEOUT_S = 10.0
_QUEUE_CHUNKS = 64  # chunks buffered per direction (back-pressure beyond that)
_RESET = None  # queued instead of a chunk when the source side was reset


class _Finished(Exception):
    """A pipe ends the connection on purpose (reset_after)."""


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with a RST: SO_LINGER on with a zero timeout, then abort."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One proxied connection: the client side, the target side (once connected), its tasks."""

    def __init__(self, number: int, client: asyncio.StreamWriter) -> None:
        self.number = number
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.done = False

    def _cancel(self) -> None:
        self.done = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    def reset(self) -> None:
        self._cancel()
        _rst(self.client)
        _rst(self.target)

    def close(self) -> None:
        """A graceful close (FIN) of both sides, after what is already buffered."""
        self._cancel()
        for w in (self.client, self.target):
            if w is not None:
                w.close()


class FaultProxy:
    """A TCP proxy 127.0.0.1:port -> target that injects faults on command (module doc)."""

    def __init__(self, listen_port: int = 0, target: tuple[str, int] | None = None, *,
                 host: str = "127.0.0.1", seed: int | None = None) -> None:
        if target is None:
            raise ValueError("FaultProxy needs a target (host, port)")
        if host != "127.0.0.1":
            raise ValueError(f"FaultProxy listens on 127.0.0.1 only, not {host!r}")
        target_host, target_port = target
        try:
            loopback = ipaddress.ip_address(target_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"FaultProxy forwards to a loopback address only, not {target_host!r}")
        self.host = host
        self.listen_port = listen_port
        self.target = (target_host, int(target_port))
        self.port = 0
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._gate: asyncio.Event | None = None  # set while bytes may flow (not blackholed)
        self._flap_task: asyncio.Task[None] | None = None
        self._stopped = False
        # settings (touched on the loop thread only)
        self.mode = "pass"  # "pass" | "refuse" | "blackhole"
        self._delay_s = 0.0
        self._jitter_s = 0.0
        self._rate: float | None = None
        self._next_free = {"up": 0.0, "down": 0.0}
        self._reset_budget: tuple[Direction, int] | None = None
        # counters (written on the loop thread, read anywhere)
        self.accepted = 0
        self.refused = 0
        self.resets = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.flaps = 0
        self.accept_times: list[float] = []
        self.phases: list[tuple[float, str]] = []

    # -- lifecycle (any thread) ------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._thread.start()
        try:
            self._run(self._listen)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self) -> None:
        """Stop the schedule, reset every connection, close the listener, join the thread."""
        if self._loop is None or self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(RuntimeError, TimeoutError):
            self._run(self._close_everything)
        self._shutdown_loop()

    def __enter__(self) -> FaultProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def active(self) -> int:
        return len(self._conns)

    @property
    def flapping(self) -> bool:
        task = self._flap_task
        return task is not None and not task.done()

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "flapping": self.flapping, "accepted": self.accepted,
                "refused": self.refused, "resets": self.resets, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "active": self.active, "flaps": self.flaps}

    # -- commands (any thread; each has taken effect on return) ----------------------------------

    def pass_through(self) -> None:
        self._run(self._cmd_mode, "pass", "keep")

    def refuse(self, existing: Existing = "keep") -> None:
        if existing not in ("keep", "close", "reset"):
            raise ValueError(f"existing must be keep, close or reset, not {existing!r}")
        self._run(self._cmd_mode, "refuse", existing)

    def blackhole(self) -> None:
        self._run(self._cmd_mode, "blackhole", "keep")

    def reset_all(self) -> int:
        """Reset every open connection now; how many were reset."""
        return int(self._run(self._cmd_reset_all))

    def reset_after(self, n_bytes: int, direction: Direction = "up") -> None:
        if n_bytes < 0 or direction not in ("up", "down", "any"):
            raise ValueError(f"reset_after({n_bytes}, {direction!r})")
        self._run(self._cmd_set, "_reset_budget", (direction, int(n_bytes)))

    @property
    def reset_pending(self) -> bool:
        """A reset_after() not yet done."""
        return self._reset_budget is not None

    def latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        if ms < 0 or jitter_ms < 0 or jitter_ms > ms:
            raise ValueError(f"latency({ms}, {jitter_ms}): need 0 <= jitter_ms <= ms")
        self._run(self._cmd_latency, ms / 1000, jitter_ms / 1000)

    def bandwidth(self, bytes_per_s: float | None) -> None:
        if bytes_per_s is not None and bytes_per_s < 0:
            raise ValueError(f"bandwidth({bytes_per_s})")
        self._run(self._cmd_set, "_rate", float(bytes_per_s) if bytes_per_s else None)

    def flap(self, up_s: float, down_s: float, mode: FlapMode = "refuse") -> None:
        if up_s <= 0 or down_s <= 0 or mode not in ("refuse", "blackhole", "reset"):
            raise ValueError(f"flap({up_s}, {down_s}, {mode!r})")
        self._run(self._cmd_flap, up_s, down_s, mode)

    # -- the loop thread -------------------------------------------------------------------------

    def _run(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        if self._loop is None or (self._stopped and fn != self._close_everything):
            raise RuntimeError("FaultProxy is not running")
        fut = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        return fut.result(timeout=_COMMAND_TIMEOUT_S)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        if thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_COMMAND_TIMEOUT_S)
        if thread is None or not thread.is_alive():
            loop.close()

    async def _listen(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        self._server = await asyncio.start_server(
            self._on_accept, self.host, self.listen_port, reuse_address=True, backlog=128)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close_everything(self) -> None:
        self._cancel_flap()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.reset()
        self._conns.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_COMMAND_TIMEOUT_S)
        if self._server is not None:
            await self._server.wait_closed()

    async def _cmd_set(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    async def _cmd_latency(self, delay_s: float, jitter_s: float) -> None:
        self._delay_s, self._jitter_s = delay_s, jitter_s

    async def _cmd_mode(self, mode: str, existing: Existing) -> None:
        self._cancel_flap()
        self._set_mode(mode, existing)

    async def _cmd_reset_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            self._reset(conn)
        return len(conns)

    async def _cmd_flap(self, up_s: float, down_s: float, mode: FlapMode) -> None:
        self._cancel_flap()
        self._set_mode("pass", "keep")
        self.phases.append((time.time(), "up"))
        self._flap_task = asyncio.get_running_loop().create_task(self._flap(up_s, down_s, mode))

    def _cancel_flap(self) -> None:
        if self._flap_task is not None:
            self._flap_task.cancel()
            self._flap_task = None

    async def _flap(self, up_s: float, down_s: float, mode: FlapMode) -> None:
        while True:
            await asyncio.sleep(up_s)
            if mode == "blackhole":
                self._set_mode("blackhole", "keep")
            else:
                self._set_mode("refuse", "close" if mode == "refuse" else "reset")
            self.flaps += 1
            self.phases.append((time.time(), "down"))
            await asyncio.sleep(down_s)
            self._set_mode("pass", "keep")
            self.phases.append((time.time(), "up"))

    def _set_mode(self, mode: str, existing: Existing) -> None:
        assert self._gate is not None
        self.mode = mode
        if mode == "blackhole":
            self._gate.clear()
        else:
            self._gate.set()
        if existing == "close":
            for conn in list(self._conns):
                self._forget(conn)
                conn.close()
        elif existing == "reset":
            for conn in list(self._conns):
                self._reset(conn)

    def _reset(self, conn: _Conn) -> None:
        if conn in self._conns:
            self.resets += 1
        self._forget(conn)
        conn.reset()

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)

    # -- one connection --------------------------------------------------------------------------

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.accept_times.append(time.time())
        if self.mode == "refuse" or self._stopped:
            self.refused += 1
            _rst(writer)
            return
        conn = _Conn(self.accepted, writer)
        task = asyncio.current_task()
        assert task is not None and self._gate is not None
        conn.tasks.add(task)
        self._conns.add(conn)
        loop = asyncio.get_running_loop()
        try:
            await self._gate.wait()  # blackholed: a new connection stays open and silent too
            try:
                t_reader, t_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the target is down: the client sees a reset (finally)
            conn.target = t_writer
            if conn.done:  # reset or closed while connecting
                _rst(t_writer)
                return
            pipes = {loop.create_task(self._pipe(conn, reader, t_writer, "up")),
                     loop.create_task(self._pipe(conn, t_reader, writer, "down"))}
            conn.tasks |= pipes
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            failed = any(not t.cancelled() and t.exception() is not None for t in done)
            if not failed and not conn.done:  # both directions ended with a FIN
                self._forget(conn)
                conn.close()
        except asyncio.CancelledError:
            pass
        finally:
            # A failure on either side (a reset, a write error) resets both sides, as a
            # connection through a middlebox would end; not counted as one of our resets.
            self._forget(conn)
            if not conn.done:
                conn.reset()

    async def _pipe(self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    direction: Literal["up", "down"]) -> None:
        """One direction: a reader task feeding a writer (this task) through a queue that
        holds each chunk until its delivery time (latency)."""
        assert self._gate is not None
        gate = self._gate
        chunks: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            last = 0.0
            while True:
                await gate.wait()  # blackholed: leave the bytes in the kernel's buffers
                try:
                    data: bytes | None = await src.read(_CHUNK)
                except OSError:
                    data = _RESET
                at = loop.time()
                if self._delay_s > 0:
                    at += self._delay_s + self._rng.uniform(-self._jitter_s, self._jitter_s)
                last = max(last, at)  # a chunk never overtakes an earlier one
                await chunks.put((last, data))
                if not data:
                    return

        reader_task = loop.create_task(read())
        conn.tasks.add(reader_task)
        try:
            while True:
                at, data = await chunks.get()
                if data is _RESET:
                    raise ConnectionResetError(f"{direction}: the sender reset the connection")
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                await self._forward(conn, dst, data, direction)
        except _Finished:
            return
        finally:
            reader_task.cancel()

    async def _forward(self, conn: _Conn, dst: asyncio.StreamWriter, data: bytes,
                       direction: Literal["up", "down"]) -> None:
        assert self._gate is not None
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            rate = self._rate
            size = len(view) if rate is None else max(1, min(len(view), int(rate / 50)))
            if rate is not None:
                now = loop.time()
                start = max(now, self._next_free[direction])
                self._next_free[direction] = start + size / rate
                if start > now:
                    await asyncio.sleep(start - now)
                    await self._gate.wait()
            budget = self._reset_budget
            counted = budget is not None and budget[0] in (direction, "any")
            cut = counted and budget is not None and budget[1] <= size
            if cut and budget is not None:
                size = budget[1]
            piece, view = view[:size], view[size:]
            if piece:
                if direction == "up":  # counted first: the peer may read it before write returns
                    self.bytes_up += len(piece)
                else:
                    self.bytes_down += len(piece)
                dst.write(piece)
            if cut:
                self._reset_budget = None
                await dst.drain()
                await self._flushed(dst)
                self._reset(conn)
                raise _Finished
            if counted and budget is not None:
                self._reset_budget = (budget[0], budget[1] - len(piece))
            await dst.drain()

    @staticmethod
    async def _flushed(dst: asyncio.StreamWriter, timeout: float = 0.5) -> None:
        """Wait (briefly) until what was written has left the kernel's send queue, so that the
        reset that follows does not discard it."""
        sock = dst.get_extra_info("socket")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = dst.transport.get_write_buffer_size()
            if pending == 0 and sock is not None:
                try:
                    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                    pending = struct.unpack("i", raw)[0]
                except OSError:
                    pending = 0
            if pending == 0:
                return
            await asyncio.sleep(0.005)
