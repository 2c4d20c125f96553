"""ThingsBoard's MQTT gateway API (``v1/gateway/...``): one connection that publishes and
subscribes for many devices. Not served yet: every gateway publish is refused as invalid and
every gateway subscription is refused (SUBACK 0x80).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from edge_sync.api.device_service import DeviceService
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest
from edge_sync.storage.records import Device

Send = Callable[[str, bytes], None]


class Gateway:
    """The gateway side of one MQTT connection; the server's loop thread only."""

    def __init__(
        self,
        service: DeviceService,
        device: Device,
        send: Send,
        *,
        link_connected: Callable[[], bool] | None,
        polls: set[LongPoll],
        commit_timeout_s: float,
    ) -> None:
        self._service = service
        self._device = device
        self._send = send
        self._link_connected = link_connected
        self._polls = polls
        self._commit_timeout = commit_timeout_s
        self._children: dict[str, uuid.UUID] = {}

    def publish(self, topic: str, payload: bytes) -> Future[Any] | None:
        """Take a publish under ``v1/gateway/``: the future of its commit (None when there is
        nothing to wait for). BadRequest: refused (the connection closes)."""
        raise BadRequest(f"the gateway API is not served ({topic})")

    def subscribe(self, topic_filter: str) -> bool:
        return False

    def unsubscribe(self, topic_filter: str) -> None:
        return None

    async def close(self) -> None:
        return None
