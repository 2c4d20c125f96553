"""A device's attribute read, as every transport answers it: from the edge's store, and, for
shared keys the edge does not hold, after asking the cloud (an AttributesRequestMsg through the
queue, at most once per device per interval) and waiting for its answer up to a timeout while
the link is up. The HTTP API's GET attributes and MQTT's attribute requests both call it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from edge_sync.api.device_service import DeviceService
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import Unavailable


async def read_attributes(
    service: DeviceService,
    device_id: uuid.UUID,
    *,
    client_keys: tuple[str, ...] | None,
    shared_keys: tuple[str, ...] | None,
    link_connected: Callable[[], bool] | None,
    timeout_s: float,
    polls: set[LongPoll],
) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    """ThingsBoard's reply shape and the shared keys still missing (``("*",)`` when all were
    asked for and the edge holds none). ``link_connected`` None: no cloud link, nothing to
    fetch. The poll waiting for the cloud is in ``polls`` while it waits (the caller may
    abandon it when it stops)."""
    keys = {"client_keys": client_keys, "shared_keys": shared_keys}
    result, missing = service.read_attributes(device_id, **keys)
    if not missing or link_connected is None:
        return result, missing
    poll: LongPoll | None = None
    if link_connected():
        poll = LongPoll(asyncio.get_running_loop())
        polls.add(poll)
    try:
        service.fetch_shared(device_id, poll, int(timeout_s * 1000))
        if poll is not None:
            try:
                answered, _ = await poll.wait(timeout_s)
            except Unavailable:  # the device's shard restarts: what is known
                answered = False
            if answered:
                result, missing = service.read_attributes(device_id, **keys)
    finally:
        if poll is not None:
            polls.discard(poll)
    return result, missing
