"""The real `edge-cloud serve` (a subprocess, tests.helpers.cloud_proc.CloudProc) against a
ThingsBoard Edge 4.3 emulated from its Java sources (tests.helpers.tb_edge.TbEdge): it
initialises only from time-based tenant and edge ids and a CE cloud, validates every downlink
as the Edge's processors do, asks for attributes and relations of what it receives, and
uplinks without edge-sync's extensions (random uplinkMsgIds, no edgeSeqId, no uplinkEpoch).

What a real ThingsBoard Edge must get: an EdgeConfiguration it can initialise from, a full sync
in ThingsBoard's order that completes even when it refuses a downlink (parked by the cloud and
shown to the operator), a root rule chain that forwards its devices' telemetry, answers to its
attribute requests, and its uplinks applied.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.proto import edge_pb2
from tests.helpers.cloud_proc import CloudProc
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.tb_common import NULL_UUID, TimeBased, halves, typed_id, uuid_from
from tests.helpers.tb_edge import (
    EdgeInitError,
    ReceivedDownlink,
    TbEdge,
    device_created_uplink,
    telemetry_entity_data,
)
from tests.helpers.tb_server import SyncContent, SyncDevice, TbServer
from tests.helpers.wait import wait_until
from tests.integration.test_cloud_link import SYNC_HEAD, layout

pytestmark = pytest.mark.slow

RK, SECRET = "rk-tb-edge", "secret-tb-edge-41c2"
PUSH_TO_CLOUD = "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode"
SYNC_DEADLINE_S = 30.0


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.cloud: CloudProc | None = None
        self.edges: list[TbEdge] = []
        self.edge_record: dict[str, Any] = {}
        self.devices: dict[str, dict[str, Any]] = {}

    def start_cloud(self, devices: dict[str, dict[str, Any]], **env: str) -> CloudProc:
        """edge-cloud serve with one edge and these devices (name -> shared attributes);
        refused downlinks are resent after 300 ms."""
        cloud = CloudProc(self.tmp_path / "cloud", env={
            "CLOUD_DOWNLINK_RESEND_TIMEOUT_MS": "300", "CLOUD_DOWNLINK_MAX_ATTEMPTS": "3", **env})
        self.cloud = cloud.start()
        self.edge_record = cloud.create_edge("tb-edge", RK, SECRET)
        for name, attrs in devices.items():
            self.devices[name] = cloud.create_device(RK, name, token=f"tok-{name}")
            if attrs:
                cloud.set_attr(name, attrs, routing_key=RK)
        return cloud

    def edge(self, **kwargs: Any) -> TbEdge:
        assert self.cloud is not None
        edge = TbEdge(self.cloud.rpc_port, RK, SECRET, **kwargs)
        self.edges.append(edge)
        return edge

    def device_id(self, name: str) -> uuid.UUID:
        return uuid.UUID(self.devices[name]["id"])

    def close(self) -> None:
        for edge in self.edges:
            edge.close()
        if self.cloud is not None:
            self.cloud.close()


def wait_queue_drained(cloud: CloudProc) -> None:
    """Wait until the cloud's durable downlink queue for the edge is empty (each one
    acknowledged or parked): what was queued before the edge connected (device creations,
    attribute sets) follows the full sync, as ThingsBoard's edge event queue does."""
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=SYNC_DEADLINE_S,
               what="the cloud's downlink queue drained", show=lambda: cloud.edge_row(RK))


def sync_part(edge: TbEdge) -> list[ReceivedDownlink]:
    """The downlinks of the (first) sync, up to and including its SyncCompletedMsg."""
    with edge.cond:
        got = list(edge.downlinks)
    end = next(i for i, d in enumerate(got) if d.kinds == ("syncCompletedMsg",))
    return got[:end + 1]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    s.close()


def test_the_edge_configuration_is_one_a_thingsboard_edge_initialises_from(setup: Setup) -> None:
    setup.start_cloud({})
    edge = setup.edge()
    before_ms = int(time.time() * 1000)
    config = edge.connect()  # EdgeInitError if a real Edge would not initialise

    assert config.cloudType == "CE"
    assert (config.routingKey, config.secret, config.name) == (RK, SECRET, "tb-edge")
    assert edge.edge_id == uuid.UUID(setup.edge_record["id"])
    assert edge.tenant_id is not None and edge.edge_id is not None
    assert (edge.tenant_id.version, edge.edge_id.version) == (1, 1)
    # the Edge dates its tenant and edge records from the ids: creation times, not garbage
    assert edge.tenant_created_ms is not None and edge.edge_created_ms is not None
    assert 0 < before_ms - edge.edge_created_ms < 120_000
    assert edge.tenant_created_ms <= edge.edge_created_ms
    assert edge.customer_id == NULL_UUID
    assert edge.server_max_inbound == 4 * 1024 * 1024


def test_a_full_sync_comes_in_thingsboard_order_with_a_push_to_cloud_root_chain(setup: Setup) -> None:
    setup.start_cloud({"dev-1": {"target": 21, "mode": "eco"}, "dev-2": {"target": 19},
                       "dev-3": {}})
    edge = setup.edge()
    edge.connect()
    edge.wait_synced(timeout=SYNC_DEADLINE_S)

    synced = sync_part(edge)
    assert edge.refused() == []
    # packed where the Edge's fixed apply order agrees with the sync's: the tenant, the queues,
    # the root chain with its metadata, the profiles, then the three devices with their
    # credentials in one message, the shared attributes of dev-1 and dev-2 in the next
    assert [layout(d.msg) for d in synced] == [
        *SYNC_HEAD, ["deviceUpdateMsg"] * 3 + ["deviceCredentialsUpdateMsg"] * 3,
        ["entityData"] * 2, ["syncCompletedMsg"]]
    ids = {setup.device_id(n) for n in ("dev-1", "dev-2", "dev-3")}
    devices_msg, attrs_msg = synced[4].msg, synced[5].msg
    assert {uuid.UUID(json.loads(c.entity)["deviceId"]["id"])
            for c in devices_msg.deviceCredentialsUpdateMsg} == ids
    assert sorted(uuid_from(d.entityIdMSB, d.entityIdLSB) for d in attrs_msg.entityData) == \
        sorted(setup.device_id(n) for n in ("dev-1", "dev-2"))

    with edge.cond:
        assert edge.tenant is not None and edge.tenant_id is not None
        assert edge.tenant["id"] == typed_id("TENANT", edge.tenant_id)
        assert set(edge.devices) == {setup.device_id(n) for n in ("dev-1", "dev-2", "dev-3")}
        for device_id, device in edge.devices.items():
            assert device["tenantId"] == typed_id("TENANT", edge.tenant_id), device_id
            profile = device["deviceProfileId"]
            assert profile["entityType"] == "DEVICE_PROFILE"
            assert uuid.UUID(profile["id"]) in edge.device_profiles, device_id
        assert edge.credentials == {
            setup.device_id(n): f"tok-{n}" for n in ("dev-1", "dev-2", "dev-3")}
        roots = [c for c in edge.rule_chains.values() if c.get("root")]
        assert len(roots) == 1 and roots[0]["type"] == "EDGE"
        [metadata] = edge.rule_chain_metadata
        assert metadata["ruleChainId"] == roots[0]["id"]
        assert PUSH_TO_CLOUD in [node["type"] for node in metadata["nodes"]]
    assert edge.shared_attributes(setup.device_id("dev-1")) == {"target": 21, "mode": "eco"}
    assert edge.shared_attributes(setup.device_id("dev-2")) == {"target": 19}


def test_a_refused_device_downlink_is_parked_and_the_sync_still_completes(setup: Setup) -> None:
    refusal = "Device 'dev-refused' is not allowed on this edge!"
    cloud = setup.start_cloud({"dev-ok": {"target": 1}, "dev-refused": {}})
    edge = setup.edge(refuse_device=lambda d: refusal if d.get("name") == "dev-refused" else None)
    edge.connect()
    edge.wait_synced(timeout=SYNC_DEADLINE_S)

    wait_queue_drained(cloud)
    synced = sync_part(edge)
    # the devices' pack refused once, then sent again entry by entry in the Edge's apply order:
    # each device alone (dev-refused refused downlink.max_attempts times, then parked), then
    # each one's credentials alone, and the sync moves on
    assert [layout(d.msg) for d in synced] == [
        *SYNC_HEAD, ["deviceUpdateMsg"] * 2 + ["deviceCredentialsUpdateMsg"] * 2,
        *[["deviceUpdateMsg"]] * 4, *[["deviceCredentialsUpdateMsg"]] * 2, ["entityData"],
        ["syncCompletedMsg"]]
    refused = [d for d in synced if not d.success]
    assert len(refused) == 4
    refused_id, ok_id = setup.device_id("dev-refused"), setup.device_id("dev-ok")
    assert refused[0] is synced[4]
    assert {uuid_from(d.idMSB, d.idLSB) for d in refused[0].msg.deviceUpdateMsg} == {
        refused_id, ok_id}
    assert len({r.msg.downlinkMsgId for r in refused[1:]}) == 1  # one downlink, resent
    for r in refused[1:]:
        [dev] = r.msg.deviceUpdateMsg
        assert (dev.idMSB, dev.idLSB) == halves(refused_id)
    assert all(r.error.startswith(refusal + "\n") for r in refused)
    [ok] = [d for d in synced[5:9] if d.success]
    assert [uuid_from(d.idMSB, d.idLSB) for d in ok.msg.deviceUpdateMsg] == [ok_id]
    assert set(edge.devices) == {setup.device_id("dev-ok")}
    assert edge.shared_attributes(setup.device_id("dev-ok")) == {"target": 1}

    status = cloud.cli_json("status")
    [row] = [r for r in status["edges"] if r["routing_key"] == RK]
    assert row["parked_downlinks"] == len(row["parked"])
    # the sync's own copy of the device (the queued creation that follows it is refused too)
    [parked] = [p for p in row["parked"] if p["in_sync"]]
    assert (parked["cause"], parked["attempts"]) == ("refused", 3)
    assert parked["error"] == refused[-1].error
    assert parked["kinds"] == "deviceUpdateMsg"
    assert {p["error"] for p in row["parked"]} == {refused[-1].error}
    api = cloud.admin("GET", f"/api/edges/{RK}/downlinks/parked")
    assert api == row["parked"]
    text = cloud.cli("status").stdout
    assert f"parked downlink {parked['downlink_id']}" in text and refusal in text


def test_attribute_and_relation_requests_are_answered(setup: Setup) -> None:
    cloud = setup.start_cloud({"dev-1": {"target": 21, "mode": "eco"}, "dev-2": {}})
    edge = setup.edge()
    edge.connect()
    edge.wait_synced(timeout=SYNC_DEADLINE_S)
    wait_queue_drained(cloud)  # from here on, an attributes downlink can only be an answer
    asked_at = time.monotonic()
    answers = edge.flush_requests()

    # EDGE: attributes + relations; TENANT: attributes; each device: attributes + relations
    assert len(answers) == 2 + 1 + 2 * 2
    assert all(a.success for a in answers.values()), answers
    dev1 = setup.device_id("dev-1")
    edge.wait_for(lambda: edge.shared_attributes(dev1, after=asked_at) == {"target": 21,
                                                                            "mode": "eco"},
                  timeout=SYNC_DEADLINE_S, what="dev-1's shared attributes, as the answer")
    wait_queue_drained(cloud)
    with edge.cond:
        answered = [(entity, scope, values) for at, entity, scope, values in edge.attributes
                    if at > asked_at]
    # one SHARED_SCOPE answer for dev-1; nothing for scopes and entities without attributes
    assert answered == [(dev1, "SHARED_SCOPE", {"target": 21, "mode": "eco"})]
    assert edge.refused() == []


def test_uplinks_without_edge_seq_ids_are_applied(setup: Setup) -> None:
    cloud = setup.start_cloud({"dev-1": {}})
    edge = setup.edge()
    edge.connect()
    edge.wait_synced(timeout=SYNC_DEADLINE_S)
    assert edge.tenant_id is not None
    made = TimeBased().make()
    dev1 = setup.device_id("dev-1")
    pack = [device_created_uplink(edge.tenant_id, made, "made-on-edge", "tok-made"),
            edge_pb2.UplinkMsg(entityData=[telemetry_entity_data(made, 1_700_000_000_000,
                                                                 {"t": 1})]),
            edge_pb2.UplinkMsg(entityData=[telemetry_entity_data(dev1, 1_700_000_000_001,
                                                                 {"t": 2})])]
    answers = edge.send_pack(pack)

    assert len(answers) == 3 and all(a.success for a in answers.values()), answers
    assert len(edge.uplinks_sent) == 3  # answered at the first attempt: nothing resent
    assert all(not m.HasField("uplinkEpoch") and not m.HasField("firstEdgeSeqId")
               for _, m in edge.uplinks_sent)
    events = cloud.events(RK)
    got = sorted((e["entity_id"], e["action"], e["seq"]) for e in events)
    assert got == sorted([(str(made), "ADDED", None), (str(made), "CREDENTIALS_UPDATED", None),
                          (str(made), "TIMESERIES_UPDATED", None),
                          (str(dev1), "TIMESERIES_UPDATED", None)])
    telemetry = {e["entity_id"]: e["body"] for e in events if e["action"] == "TIMESERIES_UPDATED"}
    assert telemetry == {str(made): {"ts": 1_700_000_000_000, "values": {"t": 1}},
                         str(dev1): {"ts": 1_700_000_000_001, "values": {"t": 2}}}


def test_the_emulated_edge_does_not_initialise_from_random_ids() -> None:
    """The emulator itself: a cloud whose tenant and edge ids are random (version 4) UUIDs
    (tests.helpers.fake_peer's) is one a real Edge cannot initialise from, and it says so."""
    fake = FakeCloud().start()
    edge = TbEdge(fake.port, RK, SECRET)
    try:
        with pytest.raises(EdgeInitError, match=r"version 1 uuid \(provided version 4\)"):
            edge.connect()
        assert fake.sync_requests == []
    finally:
        edge.close()
        fake.stop()


def test_the_emulated_edge_refuses_a_device_without_tenant_as_a_real_one_does() -> None:
    """The emulators themselves: the ThingsBoard server's synced device lost its tenantId; the
    Edge refuses it ("Device should be assigned to tenant!"), and the server drops a refused
    downlink without entityData at once (not resent), so the sync completes without it."""
    server = TbServer(RK, SECRET, sync=SyncContent(devices=(SyncDevice("orphan", "tok-o"),)),
                      sleep_between_batches_s=0.2).start()
    [(orphan_id, orphan)] = list(server.devices.items())
    del orphan["tenantId"]
    edge = TbEdge(server.port, RK, SECRET)
    try:
        edge.connect()
        edge.wait_synced(timeout=SYNC_DEADLINE_S)
        [refused] = edge.refused()
        assert refused.error.splitlines()[0] == "Device should be assigned to tenant!"
        assert [attempt for attempt, m in server.downlinks_sent
                if m.downlinkMsgId == refused.msg.downlinkMsgId] == [1]
        assert server.discarded == []
        server.wait_for(lambda: server.sync_completed == 1, what="the sync completed")
        assert orphan_id not in edge.devices
    finally:
        edge.close()
        server.stop()
