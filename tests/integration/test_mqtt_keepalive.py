"""The MQTT keep-alive without a timer per packet, and clients that stall, in one process: a
whole EdgeApp (real LMDB, the real MQTT server on loopback) and raw clients
(tests/helpers/mqtt_raw.py).

- A client silent for 1.5 times its keep-alive is disconnected; one that keeps sending (here
  PINGREQs only) is not. What counts is a whole packet: a client that sends the start of a
  PUBLISH and stalls, or trickles its bytes one at a time, is disconnected all the same.
- Reading a packet schedules nothing on the server's loop: a client publishing one QoS 1
  message at a time (each its own read) makes no task and no timer per publish (the
  connection's one keep-alive timer is pushed on only when it comes due).
- A client that stops reading cannot hold its connection forever, even with keep-alive 0: a
  write that waits for it (TCP flow control) waits at most the commit timeout (1.5 times the
  keep-alive when it has one), and more than max(1 MiB, 2 x mqtt.max_message_bytes) written
  to it and unread closes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from tests.helpers.mqtt_app import AppFactory, no_connections
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.mqtt_raw import (
    CONNACK,
    PINGREQ,
    PINGRESP,
    PUBACK,
    RawClient,
    connect_packet,
    publish_packet,
)
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"
PINGRESP_KIND = PINGRESP


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., EdgeApp]]:
    with AppFactory(tmp_path) as apps:

        def make(**env: str) -> EdgeApp:
            edge = apps(**env)
            edge.service.create_device("ka-1", token="ka-1")[1].result(DEADLINE_S)
            return edge

        yield make


@pytest.fixture
def app(make_app: Callable[..., EdgeApp]) -> EdgeApp:
    return make_app()


def connected(app: EdgeApp, keep_alive: int) -> RawClient:
    """A raw client of device ka-1, connected with ``keep_alive`` seconds."""
    client = RawClient(app.mqtt_port, timeout=DEADLINE_S)
    client.send(connect_packet("ka", "ka-1", keep_alive=keep_alive))
    packet = client.read()
    assert packet.kind == CONNACK and packet.body[1] == 0, packet
    return client


def test_a_silent_client_is_disconnected_after_one_and_a_half_keep_alives(app: EdgeApp) -> None:
    with connected(app, keep_alive=1) as client:
        start = time.monotonic()
        assert client.closed_by_server()
        took = time.monotonic() - start
    assert 1.4 <= took < 4.0, took
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_client_that_keeps_sending_stays_connected(app: EdgeApp) -> None:
    with connected(app, keep_alive=1) as client:
        end = time.monotonic() + 4.0
        while time.monotonic() < end:  # more than twice 1.5 s: the timer was pushed on
            client.send(PINGREQ)
            assert client.read().kind == PINGRESP_KIND
            time.sleep(0.4)  # the client's pace, not a wait for the server
        client.send(publish_packet(TELEMETRY, b'{"n": 1}', qos=1, packet_id=1))
        assert client.read().kind == PUBACK
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def closed_within(client: RawClient, *, limit: float, feed: bytes = b"",
                  every: float = 0.25) -> float:
    """Seconds until the server closes the connection, the client sending the next byte of
    ``feed`` every ``every`` seconds meanwhile (nothing once it is all sent); fails after
    ``limit`` seconds."""
    start = time.monotonic()
    client.sock.settimeout(every)
    sent = 0
    while time.monotonic() - start < limit:
        try:
            if client.sock.recv(4096) == b"":
                return time.monotonic() - start
        except ConnectionResetError:
            return time.monotonic() - start
        except TimeoutError:
            if sent < len(feed):
                client.send(feed[sent:sent + 1])
                sent += 1
    raise AssertionError(f"still open after {limit:g}s ({sent} bytes trickled)")


def test_a_client_stalled_in_the_middle_of_a_publish_is_disconnected(app: EdgeApp) -> None:
    packet = publish_packet(TELEMETRY, json.dumps({"n": "x" * 200}).encode(), qos=1, packet_id=1)
    with connected(app, keep_alive=1) as client:
        client.send(packet[:len(packet) // 2])  # the header and half the body, then nothing
        took = closed_within(client, limit=6.0)
    assert 1.4 <= took < 4.0, took
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_bytes_of_an_unfinished_packet_do_not_keep_a_client_alive(app: EdgeApp) -> None:
    """Four bytes a second of one PUBLISH: the keep-alive counts packets, not bytes (a client
    can hold a connection with a packet it never finishes only for 1.5 keep-alives)."""
    packet = publish_packet(TELEMETRY, json.dumps({"n": "x" * 200}).encode(), qos=1, packet_id=1)
    with connected(app, keep_alive=1) as client:
        client.send(packet[:10])
        took = closed_within(client, limit=6.0, feed=packet[10:])
    assert 1.4 <= took < 4.0, took
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


ANSWER_KEY = "x" * 200_000
"""A client attribute that makes every attribute request's answer about 200 KB."""


def hoard(app: EdgeApp, client: RawClient, requests: int) -> None:
    """Device ka-1 gets the ANSWER_KEY attribute; ``requests`` attribute requests for it are
    sent in one go, and their answers (``requests`` x 200 KB, more than the kernel's socket
    buffers hold) are never read."""
    client.send(publish_packet(ATTRIBUTES, json.dumps({"big": ANSWER_KEY}).encode(), qos=1,
                               packet_id=1))
    assert client.read().kind == PUBACK
    client.send(b"".join(publish_packet(f"v1/devices/me/attributes/request/{i}",
                                        b'{"clientKeys": "big"}') for i in range(requests)))


def test_a_client_that_stops_reading_is_closed_after_the_commit_timeout_without_keep_alive(
        make_app: Callable[..., EdgeApp]) -> None:
    """Keep-alive 0, and 20 MB of answers the client does not read, below the write buffer's
    cap (2 x 16 MiB here): once the server's write buffer is over its high-water mark, a
    packet read (a PINGREQ) makes it wait for the client to read (reading nothing more of it),
    for the commit timeout (1 s here), then it closes the connection."""
    app = make_app(EDGE_HTTP_REQUEST_TIMEOUT_S="1", EDGE_MQTT_MAX_MESSAGE_BYTES=str(16 << 20))
    server = app.mqtt_server
    assert server is not None
    logs = Logs()
    try:
        with RawClient(app.mqtt_port, timeout=DEADLINE_S, rcvbuf=4096) as client:
            assert client.connect("deaf", "ka-1", keep_alive=0) == (0, 0)
            hoard(app, client, 100)

            def ended() -> bool:
                with contextlib.suppress(OSError):  # closed by the server
                    client.send(PINGREQ)  # one more packet read, then the wait
                return server.connections == 0

            wait_until(ended, timeout=DEADLINE_S, poll=0.2, what="the connection closed")
        (line,) = logs.matching("closing the connection: the client read nothing of the")
    finally:
        logs.close()
    assert line["message"].endswith("bytes written to it for 1s")
    assert not logs.matching("wait for the client to read them")  # not the cap
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_client_that_reads_nothing_of_what_the_edge_publishes_is_closed_past_the_cap(
        make_app: Callable[..., EdgeApp]) -> None:
    """Keep-alive 0; 20 MB of answers to attribute requests pile up unread: past max(1 MiB,
    2 x mqtt.max_message_bytes), 2 MiB here, the connection is closed at once, without the
    client sending anything more."""
    app = make_app()
    logs = Logs()
    try:
        with RawClient(app.mqtt_port, timeout=DEADLINE_S, rcvbuf=4096) as client:
            assert client.connect("hoarder", "ka-1", keep_alive=0) == (0, 0)
            hoard(app, client, 100)
            no_connections(app)
        (line,) = logs.matching("wait for the client to read them")
    finally:
        logs.close()
    assert line["level"].name == "WARNING"
    assert line["extra"]["buffered"] > 2 << 20


class Scheduled:
    """Counts what the server's loop is asked to schedule later (call_at, and call_later
    through it) and the tasks it is asked to create, from the moment it is installed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timers = 0
        self.tasks = 0
        installed = threading.Event()

        def install() -> None:
            call_at, create_task = loop.call_at, loop.create_task

            def counted_call_at(when: float, callback: Callable[..., Any], *args: Any,
                                **kw: Any) -> asyncio.TimerHandle:
                self.timers += 1
                return call_at(when, callback, *args, **kw)

            def counted_create_task(coro: Any, **kw: Any) -> asyncio.Task[Any]:
                self.tasks += 1
                return create_task(coro, **kw)

            loop.call_at = counted_call_at  # type: ignore[method-assign]
            loop.create_task = counted_create_task  # type: ignore[method-assign]
            installed.set()

        loop.call_soon_threadsafe(install)
        assert installed.wait(DEADLINE_S)


def test_reading_a_packet_schedules_no_timer_and_no_task(app: EdgeApp) -> None:
    server = app.mqtt_server
    assert server is not None and server._loop is not None
    count = 100
    with connected(app, keep_alive=60) as client:
        client.send(publish_packet(TELEMETRY, b'{"n": -1}', qos=1, packet_id=1))
        assert client.read().kind == PUBACK  # the connection's timers are armed by now
        scheduled = Scheduled(server._loop)
        for i in range(count):  # one in flight at a time: each publish is its own read
            client.send(publish_packet(TELEMETRY, json.dumps({"n": i}).encode(), qos=1,
                                       packet_id=i + 2))
            packet = client.read()
            assert (packet.kind, packet.packet_id) == (PUBACK, i + 2)
            client.send(PINGREQ)
            assert client.read().kind == PINGRESP_KIND
    assert scheduled.tasks == 0
    assert scheduled.timers <= 2, scheduled.timers  # at most a commit-timeout check come due
    no_connections(app)  # nothing of the test still runs (or logs) once it returns
