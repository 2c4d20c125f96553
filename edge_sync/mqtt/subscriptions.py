"""A connected device's MQTT subscriptions to what the edge sends it: server-side RPC requests
and shared attribute updates. Each subscription is one task of the server's loop that waits on
the device's session exactly as an HTTP long poll does (a LongPoll handed to the DeviceService,
devices/subscribers.py), publishes what it gets, and waits again; the RPC lifecycle and the
attribute flows stay in the device session (docs/device-rpc.md). No thread waits.

What a subscription gets is handed to ``send``, which publishes it at the QoS the subscription
was granted (mqtt/connection.py): at QoS 1 it stays in the client's session until the PUBACK.
A subscription serves only while its connection is open: RPC requests that come meanwhile wait
in the device's session (and expire there), and are published when a connection of the device
subscribes again, or resumes a kept session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger

from edge_sync.api.device_service import DeviceService
from edge_sync.devices.subscribers import LongPoll, Subscriber
from edge_sync.errors import Unavailable
from edge_sync.mqtt import topics

POLL_S = 300.0
"""How long one wait on the session lasts before it is renewed."""
RETRY_S = 1.0
"""The pause after the device's session was unavailable (its shard restarting)."""

Send = Callable[[str, bytes], None]

_log = logger.bind(component="mqtt")


class Subscriptions:
    """The server's loop thread only."""

    def __init__(self, service: DeviceService, device_id: uuid.UUID, send: Send) -> None:
        self._service = service
        self._device = device_id
        self._send = send
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def subscribe(self, topic_filter: str) -> bool:
        """Start serving ``topic_filter``; False when the edge does not serve it."""
        if topic_filter == topics.RPC_REQUEST_FILTER:
            self._start(topic_filter, self._service.poll_rpc, _rpc_request)
        elif topic_filter == topics.ATTRIBUTES:
            self._start(topic_filter, self._service.poll_attributes, _attribute_update)
        elif topic_filter != topics.ATTRIBUTES_RESPONSE_FILTER:  # answers are always sent
            return False
        return True

    def unsubscribe(self, topic_filter: str) -> None:
        task = self._tasks.pop(topic_filter, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _start(self, topic_filter: str, poll: Callable[[uuid.UUID, Subscriber], None],
               publish: Callable[[Any], tuple[str, Any]]) -> None:
        if topic_filter in self._tasks:
            return  # a repeated SUBSCRIBE replaces the subscription: nothing to change
        self._tasks[topic_filter] = asyncio.create_task(self._serve(topic_filter, poll, publish))

    async def _serve(self, topic_filter: str, poll: Callable[[uuid.UUID, Subscriber], None],
                     publish: Callable[[Any], tuple[str, Any]]) -> None:
        log = _log.bind(device=str(self._device), topic=topic_filter)
        while True:
            waiter = LongPoll(asyncio.get_running_loop())
            try:
                poll(self._device, waiter)
                answered, value = await waiter.wait(POLL_S)
            except Unavailable as exc:
                log.debug("session unavailable, waiting again: {}", exc)
                await asyncio.sleep(RETRY_S)
                continue
            if answered:
                topic, body = publish(value)
                self._send(topic, json.dumps(body, separators=(",", ":")).encode())


def _rpc_request(request: dict[str, Any]) -> tuple[str, Any]:
    """ThingsBoard's shape: the id in the topic, method and params in the body."""
    body = {k: v for k, v in request.items() if k != "id"}
    return f"{topics.RPC_REQUEST_PREFIX}{request['id']}", body


def _attribute_update(update: Any) -> tuple[str, Any]:
    return topics.ATTRIBUTES, update
