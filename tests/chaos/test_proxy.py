"""The fault proxy itself (tests/chaos/proxy.py), against a tiny threaded echo server on
loopback: each mode, each action, the shapers (latency as a median of round trips, bandwidth as
a ratio of the cap), the flap schedule, stop(), and the loopback-only rule."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import FaultProxy
from tests.helpers.ports import free_ports
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
QUIET_S = 0.5  # how long "nothing arrives" is observed


class Echo:
    """A threaded TCP echo server on 127.0.0.1 that records what each connection received and
    how it ended ("eof", "reset" or another error)."""

    def __init__(self) -> None:
        echo = self
        self.lock = threading.Lock()
        self.received: list[int] = []  # bytes received, per connection (accept order)
        self.endings: list[str] = []

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with echo.lock:
                    index = len(echo.received)
                    echo.received.append(0)
                ending = "eof"
                try:
                    while True:
                        data = self.request.recv(65536)
                        if not data:
                            break
                        with echo.lock:
                            echo.received[index] += len(data)
                        self.request.sendall(data)
                except ConnectionResetError:
                    ending = "reset"
                except OSError as exc:
                    ending = repr(exc)
                with echo.lock:
                    echo.endings.append(ending)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="echo", daemon=True)
        self.thread.start()

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: Echo) -> Iterator[FaultProxy]:
    px = FaultProxy(target=("127.0.0.1", echo.port)).start()
    yield px
    px.stop()
    assert not px.running


@pytest.fixture
def connect(proxy: FaultProxy) -> Iterator[callable]:
    """Open client connections to the proxy; all closed at teardown."""
    socks: list[socket.socket] = []

    def open_one(timeout: float = DEADLINE_S) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
        socks.append(s)
        return s

    yield open_one
    for s in socks:
        s.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise AssertionError(f"connection closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def ending(sock: socket.socket) -> str:
    """Read until the connection ends: "eof" (FIN) or "reset" (RST)."""
    sock.settimeout(DEADLINE_S)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def refused_at_once(port: int) -> bool:
    """Connect: True when the proxy resets the connection at once (at connect or first read)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as c:
            return ending(c) == "reset"
    except ConnectionResetError:
        return True


def assert_quiet(sock: socket.socket) -> None:
    """Nothing arrives on sock for QUIET_S (and the connection stays open)."""
    sock.settimeout(QUIET_S)
    with pytest.raises(TimeoutError):
        data = sock.recv(1)
        raise AssertionError(f"received {data!r} through a blackhole")
    sock.settimeout(DEADLINE_S)


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"host": "0.0.0.0", "target": ("127.0.0.1", 1)},
    {"host": "localhost", "target": ("127.0.0.1", 1)},
    {"target": ("10.1.2.3", 80)},
    {"target": ("example.com", 80)},
    {"target": None},
])
def test_loopback_only(kwargs):
    with pytest.raises(ValueError):
        FaultProxy(**kwargs)


def test_pass_through_forwards_both_ways_and_counts(proxy, echo, connect):
    a, b = connect(), connect()
    pa, pb = os.urandom(100_000), os.urandom(30_000)
    assert roundtrip(a, pa) == pa
    assert roundtrip(b, pb) == pb
    assert roundtrip(a, b"x") == b"x"
    s = proxy.stats()
    assert (s["mode"], s["accepted"], s["refused"], s["resets"], s["active"]) == ("pass", 2, 0, 0, 2)
    assert s["bytes_up"] == s["bytes_down"] == 130_001
    a.close()
    wait_until(lambda: proxy.active == 1, timeout=DEADLINE_S, what="the closed connection forgotten")
    wait_until(lambda: echo.endings == ["eof"], timeout=DEADLINE_S, what="the echo server saw a FIN")


def test_target_down_resets_the_client(echo):
    (closed_port,) = free_ports()
    with FaultProxy(target=("127.0.0.1", closed_port)) as px:
        assert refused_at_once(px.port)
        assert px.accepted == 1


# -- refuse ------------------------------------------------------------------------------------


def test_refuse_resets_new_connections_and_keeps_existing(proxy, echo, connect):
    old = connect()
    assert roundtrip(old, b"before") == b"before"
    proxy.refuse()
    assert refused_at_once(proxy.port)  # the kernel completes the handshake; then a RST
    assert roundtrip(old, b"still flowing") == b"still flowing"
    assert (proxy.accepted, proxy.refused, proxy.resets) == (2, 1, 0)
    assert len(echo.received) == 1  # the refused connection never reached the target

    proxy.pass_through()
    again = connect()
    assert roundtrip(again, b"after") == b"after"


@pytest.mark.parametrize("existing", ["close", "reset"])
def test_refuse_ends_existing_connections(proxy, echo, connect, existing):
    conns = [connect() for _ in range(3)]
    for c in conns:
        assert roundtrip(c, b"hi") == b"hi"
    proxy.refuse(existing=existing)
    assert [ending(c) for c in conns] == ["eof" if existing == "close" else "reset"] * 3
    wait_until(lambda: len(echo.endings) == 3, timeout=DEADLINE_S, what="the target side ended")
    assert echo.endings == ["eof" if existing == "close" else "reset"] * 3
    assert proxy.resets == (3 if existing == "reset" else 0)
    assert proxy.active == 0
    assert refused_at_once(proxy.port)


# -- blackhole ---------------------------------------------------------------------------------


def test_blackhole_holds_both_directions_then_resumes_intact(proxy, echo, connect):
    old = connect()
    assert roundtrip(old, b"warm") == b"warm"
    proxy.blackhole()
    before = echo.total
    held = os.urandom(20_000)
    old.sendall(held)
    new = connect()  # accepted, kept open, silent
    new.sendall(b"new one")
    assert_quiet(old)
    assert_quiet(new)
    assert echo.total == before  # nothing reached the target
    assert len(echo.received) == 1  # the new connection was not even opened to the target
    assert (proxy.accepted, proxy.active, proxy.refused, proxy.resets) == (2, 2, 0, 0)

    proxy.pass_through()  # the partition heals: the held bytes flow, in order
    assert recv_exactly(old, len(held)) == held
    assert recv_exactly(new, 7) == b"new one"
    assert roundtrip(old, b"more") == b"more"


# -- resets ------------------------------------------------------------------------------------


def test_reset_all(proxy, echo, connect):
    conns = [connect() for _ in range(3)]
    for c in conns:
        assert roundtrip(c, b"x") == b"x"
    assert proxy.reset_all() == 3
    assert [ending(c) for c in conns] == ["reset"] * 3
    wait_until(lambda: len(echo.endings) == 3, timeout=DEADLINE_S, what="the target side reset")
    assert echo.endings == ["reset"] * 3
    assert (proxy.resets, proxy.active) == (3, 0)
    assert proxy.reset_all() == 0
    c = connect()
    assert roundtrip(c, b"fresh") == b"fresh"


def test_reset_after_bytes_upstream_cuts_mid_message(proxy, echo, connect):
    c = connect()
    assert roundtrip(c, b"12345") == b"12345"
    proxy.reset_after(4000, "up")
    assert proxy.reset_pending
    c.sendall(os.urandom(10_000))  # one message; 4000 of its bytes get through
    assert ending(c) == "reset"
    wait_until(lambda: echo.endings == ["reset"], timeout=DEADLINE_S, what="the target side reset")
    assert echo.received == [5 + 4000]
    assert proxy.bytes_up == 5 + 4000
    assert (proxy.resets, proxy.reset_pending) == (1, False)
    # one-shot: the next connection passes everything
    d = connect()
    big = os.urandom(10_000)
    assert roundtrip(d, big) == big


def test_reset_after_bytes_downstream_cuts_the_answer(proxy, echo, connect):
    c = connect()
    proxy.reset_after(3000, "down")
    c.sendall(os.urandom(10_000))
    got = bytearray()
    c.settimeout(DEADLINE_S)
    with pytest.raises(ConnectionResetError):
        while True:
            data = c.recv(65536)
            assert data, "a FIN instead of a reset"
            got += data
    assert len(got) == 3000 == proxy.bytes_down
    assert proxy.resets == 1


# -- shapers -----------------------------------------------------------------------------------


def median_rtt(sock: socket.socket, n: int) -> tuple[float, list[float]]:
    rtts = []
    for i in range(n):
        payload = f"ping {i}".encode()
        t0 = time.monotonic()
        assert roundtrip(sock, payload) == payload
        rtts.append(time.monotonic() - t0)
    return statistics.median(rtts), rtts


def test_latency_adds_delay_each_way(proxy, connect):
    c = connect()
    base, _ = median_rtt(c, 7)
    proxy.latency(40, 10)  # each direction 30..50 ms: a round trip 60..100 ms
    med, rtts = median_rtt(c, 9)
    assert min(rtts) >= 0.060, rtts  # never less than the minimum delay of both directions
    assert med - base >= 0.060, (base, rtts)
    assert med < 0.100 + 1.0, rtts  # generous: the machine may be busy
    proxy.latency(0)
    after, _ = median_rtt(c, 7)
    assert after < med


def test_latency_with_jitter_keeps_the_byte_order(proxy, connect):
    proxy.latency(5, 5)
    c = connect()
    chunks = [os.urandom(100 + i) for i in range(300)]
    sender = threading.Thread(target=lambda: [c.sendall(x) for x in chunks])
    sender.start()
    want = b"".join(chunks)
    assert recv_exactly(c, len(want)) == want
    sender.join(DEADLINE_S)


def test_bandwidth_cap_observed_as_a_ratio(proxy, connect):
    cap = 40_000
    c = connect()
    assert roundtrip(c, b"warm") == b"warm"
    proxy.bandwidth(cap)
    payload = os.urandom(cap)  # about a second at the cap
    t0 = time.monotonic()
    assert roundtrip(c, payload) == payload
    ratio = len(payload) / (time.monotonic() - t0) / cap
    assert 0.3 <= ratio <= 1.1, ratio  # never above the cap (one slice of burst at most)
    proxy.bandwidth(None)
    t0 = time.monotonic()
    big = os.urandom(400_000)
    assert roundtrip(c, big) == big
    uncapped = len(big) / (time.monotonic() - t0) / cap
    assert uncapped > 3, uncapped


# -- flapping ----------------------------------------------------------------------------------


def phase_durations(proxy: FaultProxy) -> list[tuple[str, float]]:
    p = proxy.phases
    return [(what, p[i + 1][0] - t) for i, (t, what) in enumerate(p[:-1])]


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_flap_refusing(proxy, echo, connect, mode):
    up_s, down_s = 0.4, 0.4
    held = connect()
    assert roundtrip(held, b"x") == b"x"
    proxy.flap(up_s, down_s, mode=mode)
    assert proxy.flapping and proxy.mode == "pass"
    # The first down phase ends the held connection (FIN for refuse, RST for reset).
    assert ending(held) == ("eof" if mode == "refuse" else "reset")
    outcomes: list[str] = []

    def client_round() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=DEADLINE_S) as c:
                roundtrip(c, b"probe")
                outcomes.append("ok")
        except (OSError, AssertionError):  # reset at connect, send or receive; or a FIN
            outcomes.append("refused")
        time.sleep(0.05)  # the client's own pace, not a wait for a condition
        return proxy.flaps >= 3 and {"ok", "refused"} <= set(outcomes)

    wait_until(client_round, timeout=DEADLINE_S, what="3 down phases with both outcomes seen", poll=0)
    assert proxy.refused >= 1
    proxy.pass_through()
    assert not proxy.flapping and proxy.mode == "pass"
    phases = phase_durations(proxy)
    assert [w for w, _ in phases] == ["up", "down"] * (len(phases) // 2) + ["up"] * (len(phases) % 2)
    assert all(d >= (up_s if w == "up" else down_s) - 0.01 for w, d in phases), phases
    flaps = proxy.flaps
    # The behaviour under test: no flap for a whole up+down period after pass_through(), which
    # only a fixed observation window can show.
    time.sleep(up_s + down_s + 0.2)
    assert proxy.flaps == flaps
    c = connect()
    assert roundtrip(c, b"steady") == b"steady"


def test_flap_blackhole_keeps_the_connection(proxy, echo, connect):
    proxy.flap(0.3, 0.3, mode="blackhole")
    c = connect()
    sent = bytearray()
    received = bytearray()
    i = 0

    def send_a_line_until_three_flaps() -> bool:
        nonlocal i, received
        if proxy.flaps >= 3:
            return True
        line = f"line {i}\n".encode()
        i += 1
        c.sendall(line)
        sent.extend(line)
        c.settimeout(0.05)  # the client's own pace: read what came back within 50 ms
        with contextlib.suppress(TimeoutError):
            received += c.recv(65536)
        return False

    wait_until(send_a_line_until_three_flaps, timeout=DEADLINE_S, poll=0,
               what="three flaps of the schedule", show=lambda: f"{proxy.flaps} flaps")
    proxy.pass_through()
    c.settimeout(DEADLINE_S)
    received += recv_exactly(c, len(sent) - len(received))
    assert received == sent  # nothing lost, duplicated or reordered across the down phases
    assert (proxy.accepted, proxy.active, proxy.resets) == (1, 1, 0)


# -- stop --------------------------------------------------------------------------------------


def test_stop_resets_everything_and_frees_the_port(echo):
    px = FaultProxy(target=("127.0.0.1", echo.port)).start()
    port = px.port
    c = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    try:
        assert roundtrip(c, b"x") == b"x"
        px.flap(0.2, 0.2, mode="blackhole")
        px.latency(10)
        px.stop()
        assert not px.running and not px.flapping
        assert not any(t.name == "fault-proxy" for t in threading.enumerate())
        assert ending(c) == "reset"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S).close()
        with pytest.raises(RuntimeError):
            px.pass_through()
        px.stop()  # idempotent
    finally:
        c.close()
