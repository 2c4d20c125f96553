"""The device API's attribute read when the device's shard cannot be told (restarting): the
read answers what the store holds, naming the missing keys, not 503 (a fake DeviceService whose
entity side is down; the real aiohttp application on loopback)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from edge_sync.actors.address import Address
from edge_sync.actors.messages import FetchSharedAttributes
from edge_sync.api.device_http import MISSING_HEADER, DeviceHttpApi
from edge_sync.metrics import Metrics
from edge_sync.storage.records import Device

DEVICE = Device(id=uuid.UUID("00000000-0000-4000-8000-0000000000d5"), name="d", type="default",
                token="tok", created_time=0)


class ShardDown:
    """Authenticates, reads a store holding one client attribute, and routes to a shard that
    is down (an Address that resolves nothing)."""

    def __init__(self) -> None:
        self.shard = Address("shard-0", lambda: None)

    def authenticate(self, token: str) -> Device:
        assert token == "tok"
        return DEVICE

    def read_attributes(self, device_id: uuid.UUID, *, client_keys: Any,
                        shared_keys: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
        return {"client": {"fw": "1.2"}, "shared": {}}, ("setpoint",)

    def fetch_shared(self, device_id: uuid.UUID, subscriber: Any, wait_ms: int) -> None:
        self.shard.tell(FetchSharedAttributes(device_id, subscriber, wait_ms))

    def watch_access(self, watcher: Any) -> Callable[[], None]:
        """No revocation comes here."""
        return lambda: None


def test_a_read_whose_shard_is_down_answers_what_is_known() -> None:
    api = DeviceHttpApi(ShardDown(), max_body_bytes=1024, request_timeout_s=5.0,  # type: ignore[arg-type]
                        metrics=Metrics(), link_connected=lambda: True)

    async def scenario() -> tuple[int, Any, str | None]:
        async with TestClient(TestServer(api.make_app())) as client:
            resp = await client.get("/api/v1/tok/attributes?clientKeys=fw&sharedKeys=setpoint")
            return resp.status, await resp.json(), resp.headers.get(MISSING_HEADER)

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == (
        200, {"client": {"fw": "1.2"}, "shared": {}}, "setpoint")
