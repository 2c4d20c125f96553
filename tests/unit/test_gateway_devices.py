"""Which devices are gateways (ThingsBoard's ``additionalInfo.gateway``) and what the edge keeps
and sends of it: the device record (a stored device of an earlier release still loads; a store
without gateways keeps the earlier layout), the cloud's device JSON read as ThingsBoard's MQTT
transport reads the flag, the Device JSON uplinked (additionalInfo: gateway, or the
lastConnectedGateway of a device a gateway named first), and the admin API's and the CLI's
``gateway``.

And the devices a gateway names: DeviceService.get_or_create_device over a real store, a real
QueueActor and a real ShardActor (``Devices``), with the store's writer held by the test where
a creation must stay pending (tests/helpers/mqtt_gateway.held_commits)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pykka
import pytest

from edge_sync.actors.address import Address
from edge_sync.actors.queue_actor import QueueActor, QueuePolicy
from edge_sync.actors.shard import EntityRouter, ShardActor
from edge_sync.api import device_service
from edge_sync.api.device_service import DeviceService
from edge_sync.cli.edge import build_parser
from edge_sync.common.wire import Owner, gateway_flag
from edge_sync.errors import Conflict, StorageCorrupt
from edge_sync.link.event_payloads import event_payload
from edge_sync.metrics import Metrics
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore, TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import NIL_UUID, Action, Device, Lane, StoredEvent
from tests.helpers.mqtt_gateway import held_commits
from tests.helpers.set_clock import SetClock
from tests.unit.test_downlink_actor import Rig, credentials_msg, device_msg, rig

__all__ = ["rig"]  # the fixture, for pytest

DEVICE_ID = uuid.UUID("00000000-0000-4000-8000-0000000000d1")
DEADLINE_S = 10.0
T0 = 1_700_000_000_000


def device(**kw: Any) -> Device:
    return Device(id=DEVICE_ID, name="gw", type="t", token="tok", created_time=7, label="l", **kw)


# -- the record ----------------------------------------------------------------------------------


def test_a_gateway_record_has_a_seventh_field_and_others_keep_the_six_of_before() -> None:
    plain, gateway = device(), device(gateway=True)
    assert codec.unpack(codec.encode_device(plain), "d") == ["gw", "t", "tok", 7, "l", 1]
    assert codec.unpack(codec.encode_device(gateway), "d") == ["gw", "t", "tok", 7, "l", 1, True]
    assert codec.decode_device(DEVICE_ID.bytes, codec.encode_device(plain)) == plain
    assert codec.decode_device(DEVICE_ID.bytes, codec.encode_device(gateway)) == gateway


def test_records_of_earlier_releases_load_as_plain_devices() -> None:
    six = codec.pack(("gw", "t", "tok", 7, "l", 1))  # as the release before wrote it
    assert codec.decode_device(DEVICE_ID.bytes, six) == device()
    previous = msgpack.packb([1, "gw", "t", "tok", 7, "l", 1], use_bin_type=True)
    assert codec.decode_device(DEVICE_ID.bytes, previous, previous=True) == device()


@pytest.mark.parametrize("fields", [("gw", "t", "tok", 7, "l"), ("gw", "t", "tok", 7, "l", 1,
                                                                  True, 0)])
def test_a_record_of_another_shape_is_reported(fields: tuple[Any, ...]) -> None:
    with pytest.raises(StorageCorrupt, match="record of an unexpected shape"):
        codec.decode_device(DEVICE_ID.bytes, codec.pack(fields))
    with pytest.raises(StorageCorrupt, match="malformed gateway flag"):
        codec.decode_device(DEVICE_ID.bytes, codec.pack(("gw", "t", "tok", 7, "l", 1, "yes")))


def test_a_previous_format_record_is_never_a_gateway() -> None:
    """The previous format (a bare array led by schema number 1) predates gateways: a record
    of it with a seventh field is damage, not a gateway."""
    seven = msgpack.packb([1, "gw", "t", "tok", 7, "l", 1, True], use_bin_type=True)
    with pytest.raises(StorageCorrupt, match="record of an unexpected shape"):
        codec.decode_device(DEVICE_ID.bytes, seven, previous=True)


def test_as_json_says_whether_it_is_a_gateway() -> None:
    assert device().as_json()["gateway"] is False
    assert device(gateway=True).as_json()["gateway"] is True


# -- the cloud's device JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("info, flag", [
    (None, None),
    ({}, False),
    ({"gateway": True}, True),
    ({"gateway": False, "description": "x"}, False),
    ({"gateway": "true"}, True),  # Jackson's asBoolean, as ThingsBoard reads it
    ({"gateway": " true\n"}, True),  # trimmed
    ({"gateway": "TRUE"}, False),  # case-sensitive
    ({"gateway": "True "}, False),
    ({"gateway": "yes"}, False),
    ({"gateway": 1}, True),  # an integer: non-zero
    ({"gateway": -7}, True),
    ({"gateway": 2**70}, True),
    ({"gateway": 0}, False),
    ({"gateway": 1.0}, False),  # a floating-point number: false whatever its value
    ({"gateway": 0.5}, False),
    ({"gateway": None}, False),
    ({"gateway": {"enabled": True}}, False),
    ('{"gateway": true}', True),  # additionalInfo as JSON text
    ("not json", False),
    ([True], False),
])
def test_gateway_flag_of_additional_info(info: Any, flag: bool | None) -> None:
    assert gateway_flag(info) is flag


def test_the_cloud_sets_and_clears_the_flag_and_its_absence_keeps_it(rig: Rig) -> None:
    dev = uuid.uuid4()
    assert rig.apply(device_msg(1, dev, "gw-1", additionalInfo={"gateway": True})).success
    assert rig.apply(credentials_msg(2, dev, "tok-gw-1")).success
    stored = rig.device(dev)
    assert stored is not None and stored.gateway and stored.token == "tok-gw-1"
    assert rig.by_token("tok-gw-1") == stored
    assert rig.apply(device_msg(3, dev, "gw-1", additionalInfo=None)).success  # kept
    kept = rig.device(dev)
    assert kept is not None and kept.gateway
    assert rig.apply(device_msg(4, dev, "gw-1", additionalInfo={"gateway": False})).success
    cleared = rig.device(dev)
    assert cleared is not None and not cleared.gateway


# -- the Device JSON uplinked --------------------------------------------------------------------


def added(body: dict[str, Any]) -> dict[str, Any]:
    event = StoredEvent(seq=1, id=uuid.UUID(int=1), created_time=1, tenant_id=NIL_UUID,
                        edge_id=NIL_UUID, type="DEVICE", entity_type="DEVICE",
                        entity_id=DEVICE_ID, action=Action.ADDED, body=body, ts=1,
                        lane=Lane.HIGH)
    _, msg = event_payload(event, Owner(uuid.UUID(int=5)))
    out: dict[str, Any] = json.loads(msg.entity)
    return out


def test_additional_info_travels_in_the_device_json() -> None:
    gateway_body = {**device(gateway=True).as_json(), "additionalInfo": {"gateway": True}}
    assert added(gateway_body)["additionalInfo"] == {"gateway": True}
    child = {**device().as_json(), "additionalInfo": {"lastConnectedGateway": str(DEVICE_ID)}}
    assert added(child)["additionalInfo"] == {"lastConnectedGateway": str(DEVICE_ID)}
    assert added({**device().as_json(), "additionalInfo": None})["additionalInfo"] is None


# -- provisioning --------------------------------------------------------------------------------


def test_the_cli_asks_for_a_gateway_with_gateway() -> None:
    parser = build_parser()
    assert parser.parse_args(["device", "create", "--name", "g", "--gateway"]).gateway is True
    assert parser.parse_args(["device", "create", "--name", "d"]).gateway is False


# -- the devices a gateway names: get_or_create_device ------------------------------------------


class Devices:
    """A DeviceService as the agent wires it: a real store, QueueActor and ShardActor."""

    def __init__(self, path: Path) -> None:
        self.store = LmdbStore(path / "store", initial_map_mb=4, max_size_mb=64)
        self.tokens = TokenCache()
        self.clock = SetClock(T0)
        queue_ref: pykka.ActorRef[Any] = QueueActor.start(
            lambda _reason: None, self.store, policy=QueuePolicy(purge_interval_s=3600),
            metrics=Metrics(), tokens=self.tokens)
        shard_ref: pykka.ActorRef[Any] = ShardActor.start(
            lambda _reason: None, 0, Address("queue", lambda: queue_ref), passivate_after_s=60.0,
            store=self.store)
        self._refs = [shard_ref, queue_ref]
        self.service = DeviceService(
            self.store, EntityRouter([Address("shard-0", lambda: shard_ref)]),
            tokens=self.tokens, clock=self.clock)

    def named(self, name: str) -> Device | None:
        with self.store.read() as txn:
            return EntityStore(self.store).device_by_name(txn, name)

    def actions(self, device_id: uuid.UUID) -> list[str]:
        with self.store.read() as txn:
            return [e.action for e in EventLog(self.store).iter_events(txn)
                    if e.entity_id == device_id]

    def close(self) -> None:
        for ref in self._refs:
            ref.stop()
        self.store.close()


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Devices]:
    d = Devices(tmp_path)
    try:
        yield d
    finally:
        d.close()


def test_each_caller_gets_its_own_creation_future(devices: Devices) -> None:
    """A caller that cancels its wait (a gateway connection that ends: asyncio cancels the
    future it awaits) cancels nothing of the others': the creation commits, each other
    caller is told, and the name stays pending until it has."""
    with held_commits(devices.store):
        first = devices.service.get_or_create_device("shared", type_="pump")
        second = devices.service.get_or_create_device("shared")
        assert first.new and not second.new and first.device == second.device
        assert first.creation is not None and second.creation is not None
        assert first.creation is not second.creation
        assert first.creation.cancel()
        third = devices.service.get_or_create_device("shared")
        assert not third.new and third.device == first.device and third.creation is not None
    assert len(second.creation.result(DEADLINE_S)) == 2
    assert third.creation.exception(DEADLINE_S) is None
    assert devices.named("shared") == first.device
    assert devices.actions(first.device.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    again = devices.service.get_or_create_device("shared")
    assert (again.device, again.creation, again.new) == (first.device, None, False)


def test_a_name_the_edge_has_is_that_device_with_nothing_to_wait_for(devices: Devices) -> None:
    made, created = devices.service.create_device("present", type_="pump", token="t-present")
    created.result(DEADLINE_S)
    found = devices.service.get_or_create_device("present", type_="other")
    assert (found.device, found.creation, found.new) == (made, None, False)
    with pytest.raises(Exception, match="device name must be 1 to 255 bytes"):
        devices.service.get_or_create_device(" ")


def test_after_a_creation_failed_the_next_call_creates_the_device_anew(devices: Devices) -> None:
    """The creation fails (a device of that name came from the cloud meanwhile, deleted again
    after): the name leaves the pending map, and the next call creates a device of its own."""
    squatter = Device(id=uuid.uuid4(), name="flaky", type="t", token="t-squatter",
                      created_time=1)
    with held_commits(devices.store,
                      then=lambda txn: EntityStore(devices.store).put_device(txn, squatter)):
        failed = devices.service.get_or_create_device("flaky")
        assert failed.new and failed.creation is not None
    assert isinstance(failed.creation.exception(DEADLINE_S), Conflict)
    assert devices.actions(failed.device.id) == []
    devices.store.write(lambda txn: EntityStore(devices.store).delete_device(txn, squatter.id))
    again = devices.service.get_or_create_device("flaky")
    assert again.new and again.creation is not None
    assert again.device.id not in (failed.device.id, squatter.id)
    assert again.creation.exception(DEADLINE_S) is None
    assert devices.named("flaky") == again.device


def test_a_name_the_admin_api_is_creating_is_that_device(devices: Devices) -> None:
    """An operator's creation (admin API, CLI) and a gateway naming the same new device at the
    same moment: the gateway gets the operator's device, its creation; nothing conflicts."""
    with held_commits(devices.store):
        made, created = devices.service.create_device("shared-name", type_="pump",
                                                      token="operator-token")
        named = devices.service.get_or_create_device("shared-name", type_="ignored")
        assert not named.new and named.device == made and named.creation is not None
    assert len(created.result(DEADLINE_S)) == 2
    assert named.creation.exception(DEADLINE_S) is None
    assert devices.named("shared-name") == made
    assert devices.actions(made.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED]


def test_an_operator_creating_a_name_being_created_is_told_at_once(devices: Devices) -> None:
    with held_commits(devices.store):
        named = devices.service.get_or_create_device("taken-meanwhile")
        _, refused = devices.service.create_device("taken-meanwhile")
        assert refused.done()
        with pytest.raises(Conflict, match="is being created"):
            refused.result(0)
    assert named.creation is not None and named.creation.exception(DEADLINE_S) is None


def test_a_creation_pending_past_its_limit_no_longer_holds_the_name(devices: Devices) -> None:
    """Every path settles a creation (committed, refused, or failed with Unavailable when its
    actor is down); one that did not within PENDING_CREATION_MAX_MS (a message lost to a
    bug) no longer holds its name: the next caller asks the store again, which keeps names
    unique whatever happens (here the first creation commits after all, and the second is
    refused)."""
    with held_commits(devices.store):
        first = devices.service.get_or_create_device("slow")
        devices.clock.ms += device_service.PENDING_CREATION_MAX_MS
        assert devices.service.get_or_create_device("slow").device == first.device
        devices.clock.ms += 1
        second = devices.service.get_or_create_device("slow")
        assert second.new and second.device.id != first.device.id
    assert first.creation is not None and second.creation is not None
    assert first.creation.exception(DEADLINE_S) is None
    assert isinstance(second.creation.exception(DEADLINE_S), Conflict)
    assert devices.named("slow") == first.device


# -- the token cache -----------------------------------------------------------------------------


def test_a_device_creation_leaves_the_cached_tokens_alone(devices: Devices) -> None:
    """A new device's id, name and token are new (its creation commits only then), so no
    cached entry can be stale because of it: a gateway creating devices by the thousand does
    not make every device's next request read the store again."""
    known, created = devices.service.create_device("known", token="known-token")
    created.result(DEADLINE_S)
    assert devices.service.authenticate("known-token") == known
    assert devices.tokens.get("known-token") == known
    generation = devices.tokens.generation
    for i in range(3):
        named = devices.service.get_or_create_device(f"new-{i}")
        assert named.creation is not None and named.creation.exception(DEADLINE_S) is None
    assert devices.tokens.get("known-token") == known
    assert devices.tokens.generation == generation
    newcomer = devices.named("new-0")
    assert newcomer is not None and devices.service.authenticate(newcomer.token) == newcomer


def test_a_token_the_cloud_changes_still_clears_the_cache(rig: Rig) -> None:
    dev = uuid.uuid4()
    assert rig.apply(device_msg(1, dev, "d-1")).success
    assert rig.apply(credentials_msg(2, dev, "old-token")).success
    stored = rig.device(dev)
    assert stored is not None
    rig.tokens.put("old-token", stored, generation=rig.tokens.generation)
    assert rig.apply(credentials_msg(3, dev, "new-token")).success
    assert rig.tokens.get("old-token") is None
