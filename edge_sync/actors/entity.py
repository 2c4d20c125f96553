"""Per-entity actors: a lightweight object per device, hosted on a shard actor.

One entity lives on one shard and a shard handles its mailbox in order, so an entity's commands
are handled one at a time in arrival order. Here each command becomes the cloud events (and
entity-store changes) of one atomic Append to the QueueActor.
"""

from __future__ import annotations

import uuid

from edge_sync.actors.address import Address
from edge_sync.actors.messages import (
    Append,
    CreateDevice,
    EntityCommand,
    PostClientAttributes,
    PostRpcResponse,
    PostTelemetry,
    ProvisionDevice,
    PutAttributes,
    PutLatestTelemetry,
    RaiseAlarm,
)
from edge_sync.storage.records import Action, Lane, NewEvent, Scope, lane_for


class EntityActor:
    """State and behaviour of one entity. Runs on its shard's thread only."""

    __slots__ = ("entity_id", "last_used", "queue")

    def __init__(self, entity_id: uuid.UUID, queue: Address, now: float) -> None:
        self.entity_id = entity_id
        self.queue = queue
        self.last_used = now

    def handle(self, command: EntityCommand, now: float) -> None:
        self.last_used = now
        match command:
            case PostTelemetry():
                self._telemetry(command)
            case PostClientAttributes():
                self._attributes(command)
            case ProvisionDevice():
                self._provision(command)
            case RaiseAlarm():
                self._alarm(command)
            case PostRpcResponse():
                self._rpc_response(command)

    def _telemetry(self, cmd: PostTelemetry) -> None:
        eid = self.entity_id
        events = tuple(
            NewEvent("DEVICE", "DEVICE", eid, Action.TIMESERIES_UPDATED,
                     {"ts": ts, "values": dict(values)}, ts, Lane.NORMAL)
            for ts, values in cmd.entries
        )
        latest: dict[str, tuple[int, object]] = {}
        for ts, values in cmd.entries:
            for key, value in values:
                seen = latest.get(key)
                if seen is None or seen[0] <= ts:
                    latest[key] = (ts, value)
        mutation = PutLatestTelemetry(eid, tuple((k, ts, v) for k, (ts, v) in latest.items()))
        self.queue.tell(Append(eid, events, cmd.reply, (mutation,)))

    def _attributes(self, cmd: PostClientAttributes) -> None:
        eid = self.entity_id
        event = NewEvent("DEVICE", "DEVICE", eid, Action.ATTRIBUTES_UPDATED,
                         {"scope": Scope.CLIENT.value, "kv": dict(cmd.values)}, cmd.ts, Lane.NORMAL)
        mutation = PutAttributes(eid, Scope.CLIENT, cmd.values, cmd.ts)
        self.queue.tell(Append(eid, (event,), cmd.reply, (mutation,)))

    def _alarm(self, cmd: RaiseAlarm) -> None:
        """Alarm events belong to the alarm entity but are handled by the originator's actor,
        so a device's alarms keep their order with the device's other events."""
        body = dict(cmd.alarm)
        body.update({"id": str(cmd.alarm_id), "originator": str(cmd.device_id)})
        event = NewEvent("ALARM", "ALARM", cmd.alarm_id, cmd.action, body, cmd.ts,
                         lane_for("ALARM", cmd.action))
        self.queue.tell(Append(cmd.device_id, (event,), cmd.reply))

    def _rpc_response(self, cmd: PostRpcResponse) -> None:
        body = {"requestId": cmd.request_id, "response": cmd.response}
        event = NewEvent("DEVICE", "DEVICE", cmd.device_id, Action.RPC_CALL, body, cmd.ts,
                         lane_for("DEVICE", Action.RPC_CALL))
        self.queue.tell(Append(cmd.device_id, (event,), cmd.reply))

    def _provision(self, cmd: ProvisionDevice) -> None:
        d = cmd.device
        added = NewEvent("DEVICE", "DEVICE", d.id, Action.ADDED, d.as_json(), d.created_time,
                         lane_for("DEVICE", Action.ADDED))
        credentials = NewEvent(
            "DEVICE", "DEVICE", d.id, Action.CREDENTIALS_UPDATED,
            {"deviceId": str(d.id), "credentialsType": "ACCESS_TOKEN", "credentialsId": d.token},
            d.created_time, lane_for("DEVICE", Action.CREDENTIALS_UPDATED),
        )
        self.queue.tell(Append(d.id, (added, credentials), cmd.reply, (CreateDevice(d),)))
