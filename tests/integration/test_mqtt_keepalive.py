"""The MQTT keep-alive without a timer per packet, in one process: a whole EdgeApp (real LMDB,
the real MQTT server on loopback) and raw clients (tests/helpers/mqtt_raw.py).

- A client silent for 1.5 times its keep-alive is disconnected; one that keeps sending (here
  PINGREQs only) is not.
- Reading a packet schedules nothing on the server's loop: a client publishing one QoS 1
  message at a time (each its own read) makes no task and no timer per publish (the
  connection's one keep-alive timer is pushed on only when it comes due).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from tests.helpers.mqtt_raw import CONNACK, PUBACK, RawClient, connect_packet, publish_packet

DEADLINE_S = 10.0
TELEMETRY = "v1/devices/me/telemetry"
PINGREQ = b"\xc0\x00"
PINGRESP_KIND = 13


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "2",
        "EDGE_MQTT_ENABLED": "true", "EDGE_MQTT_HOST": "127.0.0.1", "EDGE_MQTT_PORT": "0",
    })
    edge = EdgeApp(cfg).start()
    try:
        created = edge.service.create_device("ka-1", token="ka-1")[1]
        created.result(DEADLINE_S)
        yield edge
    finally:
        edge.stop()


def connected(app: EdgeApp, keep_alive: int) -> RawClient:
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


def test_a_client_that_keeps_sending_stays_connected(app: EdgeApp) -> None:
    with connected(app, keep_alive=1) as client:
        end = time.monotonic() + 4.0
        while time.monotonic() < end:  # more than twice 1.5 s: the timer was pushed on
            client.send(PINGREQ)
            assert client.read().kind == PINGRESP_KIND
            time.sleep(0.4)
        client.send(publish_packet(TELEMETRY, b'{"n": 1}', qos=1, packet_id=1))
        assert client.read().kind == PUBACK


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
