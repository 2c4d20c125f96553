"""A whole EdgeApp (tmp_path, real LMDB, real gRPC on loopback) whose store fails under a
downlink (a damaged device record), answering by the peer the link found at connect: the
reference cloud (cloudCapabilities with orderedApply, tests/helpers/fake_peer.py) gets
success=false with retryable=true, which it honours; a ThingsBoard-like peer (no capabilities)
gets no answer, since ThingsBoard drops a downlink answered success=false
(EdgeGrpcSession.onDownlinkResponse) and only sends again what is unanswered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.proto import edge_pb2
from tests.helpers.fake_peer import FakeCloud

DEADLINE_S = 10.0
ROUTING_KEY, SECRET = "rk-store-failure", "secret-store-failure"
REFERENCE = edge_pb2.CloudCapabilities(orderedApply=True, dedupBySeq=True)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Any]]:
    """What a test starts (fakes, apps), stopped at its end."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, EdgeApp):
            thing.stop(timeout=30)
        else:
            thing.stop()


def edge(tmp_path: Path, fake: FakeCloud) -> EdgeApp:
    env = {"EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
           "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_MQTT_ENABLED": "false",
           "CLOUD_ROUTING_KEY": ROUTING_KEY, "CLOUD_ROUTING_SECRET": SECRET,
           "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(fake.port),
           "EDGE_CLOUD_BATCH_TIMEOUT_MS": "50"}
    return EdgeApp(load_edge_config(env=env)).start()


def device_downlink(fake: FakeCloud, device_id: uuid.UUID, token: str) -> edge_pb2.DownlinkMsg:
    b = device_id.bytes
    msb, lsb = (int.from_bytes(b[:8], "big", signed=True),
                int.from_bytes(b[8:], "big", signed=True))
    device = {"id": {"entityType": "DEVICE", "id": str(device_id)}, "name": "pump",
              "type": "default", "createdTime": 1_700_000_000_000}
    creds = {"deviceId": {"entityType": "DEVICE", "id": str(device_id)},
             "credentialsType": "ACCESS_TOKEN", "credentialsId": token}
    return edge_pb2.DownlinkMsg(
        downlinkMsgId=fake.new_downlink_id(),
        deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
            msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
            entity=json.dumps(device))],
        deviceCredentialsUpdateMsg=[edge_pb2.DeviceCredentialsUpdateMsg(
            entity=json.dumps(creds))])


def acked(fake: FakeCloud, msg: edge_pb2.DownlinkMsg) -> list[edge_pb2.DownlinkResponseMsg]:
    return fake.wait_for(lambda: fake.acks_for(msg.downlinkMsgId), timeout=DEADLINE_S,
                         what=f"the answer to downlink {msg.downlinkMsgId}")


@pytest.mark.parametrize("capabilities", [REFERENCE, None], ids=["reference-cloud", "thingsboard"])
def test_a_store_failure_is_answered_by_the_peer_the_link_found(
        tmp_path: Path, started: list[Any], capabilities: edge_pb2.CloudCapabilities | None,
) -> None:
    fake = FakeCloud(capabilities=capabilities, uplinks="ordered" if capabilities else "ack")
    started.append(fake.start())
    app = edge(tmp_path, fake)
    started.append(app)
    fake.wait_for(lambda: fake.sync_completed_ids, timeout=DEADLINE_S, what="the first sync")
    device_id = uuid.uuid4()
    [first] = acked(fake, fake.send_downlink(device_downlink(fake, device_id, "tok-1")))
    assert first.success
    assert app.link_board.value["peer_ordered"] is (capabilities is not None)
    app.store.write(lambda txn: txn.put(device_id.bytes, b"\x02garbage",
                                        db=app.store.dbs["devices"]))
    failing = fake.send_downlink(device_downlink(fake, device_id, "tok-2"))
    later = fake.send_downlink(edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id()))
    [answer] = acked(fake, later)  # the edge answers in order: the failing one came first
    assert answer.success
    answers = fake.acks_for(failing.downlinkMsgId)
    status = app.admin_api.status()["sync"]
    if capabilities is None:
        assert answers == []
        assert status["full_requested"].startswith(
            f"downlink {failing.downlinkMsgId} could not be stored (devices: {device_id}")
    else:
        [refusal] = answers
        assert (refusal.success, refusal.HasField("retryable"), refusal.retryable) == (
            False, True, True)
        assert refusal.errorMsg.startswith(f"devices: {device_id}")
        assert status["full_requested"] is None
