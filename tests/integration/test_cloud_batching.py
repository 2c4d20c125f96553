"""The reference cloud batches attribute updates and commits concurrent admin writes together,
over its real admin API (aiohttp) and real gRPC on loopback with a scripted edge
(tests/helpers/link_client.py): consecutive attribute downlinks for one edge travel as one
DownlinkMsg with many entityData; a refused batch is sent again one by one so only the bad part
is parked; a thousand concurrent POST /api/attributes are all committed, each answered once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_sync.cloud import CloudServer
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.session import LinkSettings
from edge_sync.common.wire import kv_dict, uuid_of
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, DownlinkConfig, EdgesRpcConfig
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import LinkClient


def cloud_config(data_dir: Path) -> CloudConfig:
    return CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0),
        storage=CloudStorageConfig(data_dir=data_dir),
        downlink=DownlinkConfig(resend_timeout_ms=10_000),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


@pytest.fixture
def clients() -> Iterator[list[LinkClient]]:
    made: list[LinkClient] = []
    yield made
    for c in made:
        c.close()


def provision(server: CloudServer, count: int) -> list[CloudDevice]:
    server.service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
    return [server.service.create_device("rk-1", f"dev-{i}", token=f"tok-{i}")[0]
            for i in range(count)]


def connect(server: CloudServer, clients: list[LinkClient], devices: int) -> LinkClient:
    """The scripted edge, connected and synced; the devices' creation downlinks acknowledged
    (one each: a device does not travel with others)."""
    client = LinkClient(server.port)
    clients.append(client)
    assert client.connect("rk-1", "s3cret-1", store_id="store-1").responseCode == edge_pb2.ACCEPTED
    client.sync(full=False)
    for _ in range(devices):
        created = client.downlink()
        assert len(created.deviceUpdateMsg) == 1 and not created.entityData
        client.ack(created.downlinkMsgId)
    return client


def attributes_of(msg: edge_pb2.DownlinkMsg) -> list[tuple[str, dict[str, Any]]]:
    return [(str(uuid_of(d.entityIdMSB, d.entityIdLSB)), kv_dict(d.attributesUpdatedMsg.kv))
            for d in msg.entityData]


def queued(server: CloudServer) -> int:
    return server.store.queued_downlinks(server.service.edge("rk-1").edge_id)


def test_attribute_updates_queued_one_after_another_travel_as_one_downlink(tmp_path, clients):
    with CloudServer(cloud_config(tmp_path / "c")) as server:
        devices = provision(server, 30)
        for i, dev in enumerate(devices):  # queued while the edge is away
            server.service.set_attributes(str(dev.id), {"setpoint": i})
        server.service.set_attributes(str(devices[0].id), {"setpoint": -1})
        client = connect(server, clients, len(devices))
        batch = client.downlink()
        assert attributes_of(batch) == (
            [(str(d.id), {"setpoint": i}) for i, d in enumerate(devices)]
            + [(str(devices[0].id), {"setpoint": -1})])
        assert {d.postAttributeScope for d in batch.entityData} == {"SHARED_SCOPE"}
        client.ack(batch.downlinkMsgId)
        assert client.nothing_within(0.3)
        assert queued(server) == 0
        assert server.service.parked_downlinks("rk-1") == []


def test_a_refused_attribute_batch_is_sent_one_by_one_and_only_the_bad_part_is_parked(
        tmp_path, clients):
    link = LinkSettings(resend_timeout_s=0.2, max_attempts=2)
    with CloudServer(cloud_config(tmp_path / "c"), link=link) as server:
        devices = provision(server, 3)
        numbers = [server.service.set_attributes(str(d.id), {"mode": m})[1]
                   for d, m in zip(devices, ("good-0", "bad", "good-2"), strict=True)]
        client = connect(server, clients, len(devices))
        batch = client.downlink()
        assert [v for _, v in attributes_of(batch)] == [{"mode": "good-0"}, {"mode": "bad"},
                                                        {"mode": "good-2"}]
        client.ack(batch.downlinkMsgId, success=False, error="attribute 'mode': bad value")
        seen = []
        while not seen or seen[-1] != "good-2":
            d = client.downlink()
            ((_, values),) = attributes_of(d)
            seen.append(values["mode"])
            refused = values["mode"] == "bad"
            client.ack(d.downlinkMsgId, success=not refused, error="bad value" if refused else "")
        assert seen == ["good-0", "bad", "bad", "good-2"]  # bad: refused max_attempts times
        assert client.nothing_within(0.3)
        assert queued(server) == 0
        parked = server.service.parked_downlinks("rk-1")
        assert [(p.number, p.cause, p.error, p.attempts) for p in parked] == [
            (numbers[1], "refused", "bad value", 2)]


ALL_ANSWERED_S = 60.0
"""A bound for a thousand concurrent admin calls to be answered: it tells a stuck server from a
slow one. (5 s was exceeded on a machine with a load of 29 on 2 CPUs.)"""


def test_concurrent_admin_attribute_calls_are_all_committed_and_each_answered_once(
        tmp_path, clients):
    count = 1000
    with CloudServer(cloud_config(tmp_path / "c")) as server:
        devices = provision(server, count)
        before = queued(server)

        async def set_all() -> list[tuple[int, Any]]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
                async def one(i: int, dev: CloudDevice) -> tuple[int, Any]:
                    async with s.post(f"http://127.0.0.1:{server.admin_port}/api/attributes",
                                      data=json.dumps({"device": str(dev.id),
                                                       "values": {"setpoint": i}}),
                                      headers={"Content-Type": "application/json"}) as resp:
                        return resp.status, await resp.json()
                return list(await asyncio.wait_for(
                    asyncio.gather(*(one(i, d) for i, d in enumerate(devices))), ALL_ANSWERED_S))

        answers = asyncio.run(set_all())
        assert [status for status, _ in answers] == [200] * count
        assert [a["device"] for _, a in answers] == [str(d.id) for d in devices]
        numbers = sorted(a["downlink"] for _, a in answers)
        assert numbers == list(range(numbers[0], numbers[0] + count))  # one each, none shared
        assert queued(server) == before + count
        assert [server.store.shared_attributes(d.id) for d in devices] == [
            {"setpoint": i} for i in range(count)]
