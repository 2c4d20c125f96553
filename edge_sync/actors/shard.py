"""Shard actors and the EntityRouter.

A fixed number of pykka shard actors host the entity actors: the router picks a shard by a
stable hash of the entity id (CRC-32, the same across runs and processes), the shard activates
the entity on first use and passivates it when idle (virtual actors, as in Orleans).
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.entity import EntityActor
from edge_sync.actors.messages import (
    Crash,
    EntityCommand,
    PassivateIdle,
    PostClientAttributes,
    PostRpcResponse,
    PostTelemetry,
    ProvisionDevice,
    RaiseAlarm,
)
from edge_sync.actors.ticker import Ticker
from edge_sync.errors import InjectedFault
from edge_sync.supervisor import ExitReporter, SupervisedActor


def shard_of(entity_id: uuid.UUID, shards: int) -> int:
    """Stable shard index of an entity."""
    return zlib.crc32(entity_id.bytes) % shards


def entity_of(command: EntityCommand) -> uuid.UUID:
    match command:
        case ProvisionDevice(device=device):
            return device.id
        case (PostTelemetry(device_id=device_id) | PostClientAttributes(device_id=device_id)
              | RaiseAlarm(device_id=device_id) | PostRpcResponse(device_id=device_id)):
            return device_id
    raise TypeError(f"not an entity command: {command!r}")


class ShardActor(SupervisedActor):
    def __init__(
        self,
        report_exit: ExitReporter,
        index: int,
        queue: Address,
        *,
        passivate_after_s: float,
    ) -> None:
        super().__init__(report_exit)
        self.index = index
        self._queue = queue
        self._passivate_after = passivate_after_s
        self._entities: dict[uuid.UUID, EntityActor] = {}
        self._ticker: Ticker | None = None
        self._log = logger.bind(component="shard", shard=index)

    def on_start(self) -> None:
        """Actor thread: start the passivation timer."""
        ref = self.actor_ref
        interval = max(1.0, self._passivate_after / 2)
        self._ticker = Ticker(f"passivate-{self.index}", interval, lambda: ref.tell(PassivateIdle()))
        self._ticker.start()

    def on_stop(self) -> None:
        """Actor thread."""
        if self._ticker:
            self._ticker.stop()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PassivateIdle):
            self._passivate(time.monotonic())
            return None
        if isinstance(message, PostTelemetry | PostClientAttributes | ProvisionDevice | RaiseAlarm
                      | PostRpcResponse):
            now = time.monotonic()
            entity_id = entity_of(message)
            entity = self._entities.get(entity_id)
            if entity is None:
                entity = self._entities[entity_id] = EntityActor(entity_id, self._queue, now)
                self._log.bind(entity=str(entity_id)).trace("entity activated")
            entity.handle(message, now)
            return None
        if isinstance(message, Crash):
            raise InjectedFault(f"shard-{self.index}: {message.reason}")
        self._log.warning("shard: unknown message {!r}", type(message).__name__)
        return None

    def _passivate(self, now: float) -> None:
        idle = [eid for eid, e in self._entities.items() if now - e.last_used > self._passivate_after]
        for eid in idle:
            del self._entities[eid]
        if idle:
            self._log.bind(count=len(idle), active=len(self._entities)).debug("entities passivated")


class EntityRouter:
    """Routes entity commands to their shard. Any thread."""

    def __init__(self, shards: Sequence[Address]) -> None:
        if not shards:
            raise ValueError("at least one shard")
        self._shards = tuple(shards)

    def tell(self, command: EntityCommand) -> None:
        self._shards[shard_of(entity_of(command), len(self._shards))].tell(command)
