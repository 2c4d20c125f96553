"""The real `edge-sync run` (a subprocess) against the emulated ThingsBoard CE server
(tests.helpers.tb_server.TbServer), where what the cloud sends meets what the edge holds or
cannot store:

- a device whose name a stale device has on the edge (deleted on the server while the edge was
  away) is applied under ThingsBoard Edge's unique name (thingsboard-edge BaseDeviceProcessor
  .updateDeviceNameIfDuplicateExists), answered success, and kept by the next full sync, whose
  end removes the stale device and its token;
- a downlink the edge's store fails to take is not answered: ThingsBoard drops a downlink
  answered success=false (EdgeGrpcSession.onDownlinkResponse) and sends again only what is
  unanswered, MAX_DOWNLINK_ATTEMPTS times; the edge asks for a full sync at its next connect.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.storage.env import LmdbStore
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import edge_status
from tests.helpers.tb_server import MAX_DOWNLINK_ATTEMPTS, SyncContent, SyncDevice, TbServer
from tests.helpers.wait import wait_until
from tests.integration.test_thingsboard_server import Harness

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def edge_devices(agent: Agent) -> dict[uuid.UUID, str]:
    """The devices the edge holds: id -> name."""
    resp = agent.admin("GET", "/api/entities?type=DEVICE")
    assert resp.status == 200, resp.body
    return {uuid.UUID(e["id"]): e["name"] for e in resp.json()}


def synced(server: TbServer, count: int) -> None:
    server.wait_for(lambda: server.sync_completed == count, timeout=DEADLINE_S,
                    what=f"sync {count} acknowledged")


def test_a_device_whose_name_a_stale_device_has_is_renamed_and_kept_by_the_full_sync(
        harness: Harness) -> None:
    server = harness.server(sync=SyncContent(devices=(SyncDevice("pump", "tok-old"),)))
    agent = harness.agent(server)
    synced(server, 1)
    found = server.device_named("pump")
    assert found is not None
    stale = found[0]
    agent.terminate()
    fresh = server.replace_device(stale, "pump", "tok-new")
    agent.start()
    synced(server, 2)  # the restart's sync (not a full one) sends the new device
    assert server.sync_requests == [True, False]
    devices = edge_devices(agent)
    name = devices[fresh]
    assert re.fullmatch(r"pump_[A-Za-z]{15}", name), name
    assert devices == {stale: "pump", fresh: name}
    with server.cond:
        refused = [a for a in server.downlink_acks if not a.success]
        discarded = list(server.discarded)
    assert (refused, discarded) == ([], [])
    [line] = [r for r in agent.log_records()
              if r["message"].startswith(f"device {fresh} applied as")]
    assert (line["holder_id"], line["cloud_name"], line["name"]) == (str(stale), "pump", name)

    resp = agent.admin("POST", "/api/sync", {"full": True})
    assert resp.status == 202, resp.body
    synced(server, 3)
    assert server.sync_requests == [True, False, True]
    wait_until(lambda: edge_devices(agent) == {fresh: name}, timeout=DEADLINE_S,
               what="the stale device removed at the full sync's end, the new one kept",
               show=lambda: edge_devices(agent))
    assert agent.post_telemetry("tok-new", {"v": 7}) == 200
    server.wait_for(lambda: [v for _, v in server.points(fresh)] == [{"v": 7}],
                    timeout=DEADLINE_S, what="the renamed device's telemetry")
    assert agent.post_telemetry("tok-old", {"v": 8}) == 401


def damage_device_record(agent: Agent, device_id: uuid.UUID) -> None:
    """The device's record in the stopped edge's store overwritten with garbage: reading it
    fails (StorageCorrupt), a failure of the edge's own store, not of what the cloud sends."""
    store = LmdbStore(agent.data_dir)
    try:
        store.write(lambda txn: txn.put(device_id.bytes, b"\x02garbage",
                                        db=store.dbs["devices"]))
    finally:
        store.close()


def test_a_downlink_the_store_cannot_take_is_not_answered_and_thingsboard_sends_it_again(
        harness: Harness) -> None:
    # resends under the edge's 30 s wait for sync progress: at ThingsBoard's default 60 s the
    # edge would end the sync and reconnect first (docs/link-protocol.md, Downlink)
    server = harness.server(sync=SyncContent(devices=(SyncDevice("pump", "tok-pump"),)),
                            sleep_between_batches_s=0.5)
    agent = harness.agent(server)
    synced(server, 1)
    found = server.device_named("pump")
    assert found is not None
    device_id = found[0]
    agent.terminate()
    damage_device_record(agent, device_id)
    server.change_device(device_id, label="moved")
    agent.start()
    synced(server, 2)  # the sync moves on once ThingsBoard gives the downlink up
    with server.cond:
        [lost] = server.discarded
        sends = [attempt for attempt, m in server.downlinks_sent
                 if m.downlinkMsgId == lost.downlinkMsgId]
        answers = [a for a in server.downlink_acks if a.downlinkMsgId == lost.downlinkMsgId]
        refused = [a for a in server.downlink_acks if not a.success]
    [update] = lost.deviceUpdateMsg  # the device's downlink (its credentials and profile)
    assert f'"{device_id}"' in update.entity and '"moved"' in update.entity
    assert sends == list(range(1, MAX_DOWNLINK_ATTEMPTS + 1))
    assert (answers, refused) == ([], [])
    failures = [r for r in agent.log_records()
                if r["message"].startswith(f"downlink {lost.downlinkMsgId} not applied")]
    assert len(failures) == MAX_DOWNLINK_ATTEMPTS
    assert all("not answered, so the cloud sends it again" in r["message"] for r in failures)
    sync = edge_status(agent)["sync"]
    assert sync["full_requested"] is not None
    assert sync["full_requested"].startswith(
        f"downlink {lost.downlinkMsgId} could not be stored (devices: {device_id}")
