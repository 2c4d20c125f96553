"""The real `edge-sync run` (a subprocess, tests.helpers.agent.Agent) against a ThingsBoard CE
4.3 server emulated from its Java sources (tests.helpers.tb_server.TbServer): no edge-sync
extension in any answer, uplinks answered late and out of order, payloads validated as
ThingsBoard validates them, no deduplication, sync packs with random ids.

What a real ThingsBoard must see: devices and alarms owned by the EdgeConfiguration's tenant,
telemetry applied once, a device the server refuses for ever dead-lettered in bounded time while
every other device's data keeps flowing, rate limiting and slow answers that cause no loss and
no duplicate, a full sync of a hundred widget types that completes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.proto import edge_pb2
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import edge_status, wait_drained
from tests.helpers.link_client import LinkClient, credentials, telemetry
from tests.helpers.tb_common import NULL_UUID, JavaError, halves, java_error_text, typed_id
from tests.helpers.tb_server import RATE_LIMIT_ERROR, SyncContent, SyncDevice, TbServer
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK, SECRET = "rk-tb-server", "secret-tb-server-7f3a"
DEADLINE_S = 30.0
TS0 = 1_700_000_000_000


# -- harness -------------------------------------------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[TbServer] = []
        self.agents: list[Agent] = []

    def server(self, **kwargs: Any) -> TbServer:
        server = TbServer(RK, SECRET, **kwargs).start()
        self.servers.append(server)
        return server

    def agent(self, server: TbServer, **env: str) -> Agent:
        """`edge-sync run` linked to the server, with short reconnect delays; ``env`` adds or
        overrides settings."""
        base = {
            "CLOUD_ROUTING_KEY": RK,
            "CLOUD_ROUTING_SECRET": SECRET,
            "CLOUD_RPC_HOST": "127.0.0.1",
            "CLOUD_RPC_PORT": str(server.port),
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
            "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
            "EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S": "1",
            "EDGE_CLOUD_BATCH_TIMEOUT_MS": "50",
        }
        agent = Agent(self.tmp_path / f"edge-{len(self.agents) + 1}", env={**base, **env})
        self.agents.append(agent)
        return agent.start()

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        for server in self.servers:
            server.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def link_state(agent: Agent) -> str:
    return str(edge_status(agent)["link"]["state"])


def wait_connected(agent: Agent, timeout: float = DEADLINE_S) -> None:
    wait_until(lambda: link_state(agent) == "CONNECTED", timeout=timeout,
               what="the edge CONNECTED to the ThingsBoard server",
               show=lambda: edge_status(agent)["link"])


def post_points(agent: Agent, token: str, values: range, key: str = "v") -> None:
    with agent.client() as http:
        for n in values:
            status = http.post_json(f"/api/v1/{token}/telemetry",
                                    {"ts": TS0 + n, "values": {key: n}}).status
            assert status == 200, (token, n, status)


def values_of(points: list[tuple[int, dict[str, Any]]], key: str = "v") -> list[Any]:
    return [values[key] for _, values in points]


def dead_events_cli(agent: Agent, *args: str) -> str:
    """`edge-sync events --status dead ARGS`, a real subprocess on the agent's store: stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge_sync.cli.edge", "events", "--status", "dead", *args],
        env=agent.environment(), cwd=agent.workdir, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- tests ---------------------------------------------------------------------------------------


def test_connect_with_a_wrong_secret_is_refused_and_nothing_else_is_read(harness: Harness) -> None:
    server = harness.server()
    agent = harness.agent(server, CLOUD_ROUTING_SECRET="not-the-secret")
    wait_until(lambda: link_state(agent) == "AUTH_FAILED", timeout=DEADLINE_S,
               what="the edge's link AUTH_FAILED")
    with server.cond:
        assert server.connect_answers[0] == edge_pb2.BAD_CREDENTIALS
        assert server.connects[0].edgeSecret == "not-the-secret"
        assert server.sync_requests == [] and server.uplinks == []


def test_device_and_alarm_are_accepted_with_the_tenant_of_the_edge_configuration(harness: Harness) -> None:
    server = harness.server()
    agent = harness.agent(server)
    wait_connected(agent)
    device_id, token = agent.create_device("tb-dev-1")
    device_uuid = uuid.UUID(device_id)
    server.wait_for(lambda: device_uuid in server.devices and device_uuid in server.credentials,
                    what="the device and its credentials applied")
    with server.cond:
        device = server.devices[device_uuid]
        assert device["tenantId"] == typed_id("TENANT", server.tenant_id)
        assert device["customerId"] == typed_id("CUSTOMER", NULL_UUID)
        assert device["id"] == typed_id("DEVICE", device_uuid)
        assert device["name"] == "tb-dev-1"
        assert server.credentials[device_uuid] == token

    resp = agent.admin("POST", "/api/alarms", {"device": device_id, "type": "High temperature",
                                               "severity": "MAJOR"})
    assert resp.status == 201, resp.body
    alarm_id = uuid.UUID(resp.json()["alarm_id"])
    server.wait_for(lambda: alarm_id in server.alarms, what="the alarm created")
    with server.cond:
        alarm = server.alarms[alarm_id]
        assert alarm["tenantId"] == typed_id("TENANT", server.tenant_id)
        assert alarm["originator"] == typed_id("DEVICE", device_uuid)
        assert (alarm["type"], alarm["severity"]) == ("High temperature", "MAJOR")
        assert server.failures() == []
        [connect] = server.connects
        assert (connect.edgeRoutingKey, connect.edgeSecret) == (RK, SECRET)
        assert server.sync_requests == [True]
    assert [a.entity_id for a in server.applications("device_created")] == [device_uuid]
    assert [a.entity_id for a in server.applications("alarm_created")] == [alarm_id]


def test_alarms_of_an_edge_assigned_to_a_customer_get_their_originators_customer(
        harness: Harness) -> None:
    """An edge assigned to a customer holds the tenant's devices too. ThingsBoard refuses an
    alarm naming another customer than its originator's (BaseAlarmService.createAlarm), so the
    edge names none and each alarm gets its originator's: none for the tenant's device, the
    customer's for the device the edge made (which the edge gives its own customer)."""
    customer = uuid.uuid1()
    server = harness.server(customer=customer, sync=SyncContent(
        devices=(SyncDevice("tenant-pump", "tok-tenant-pump"),)))
    agent = harness.agent(server)
    wait_connected(agent)
    synced = server.device_named("tenant-pump")
    assert synced is not None
    made, _ = agent.create_device("customer-pump")
    server.wait_for(lambda: uuid.UUID(made) in server.devices, what="the edge's device")
    with server.cond:
        assert server.devices[uuid.UUID(made)]["customerId"] == typed_id("CUSTOMER", customer)
    raised = []
    for device in (str(synced[0]), made):
        resp = agent.admin("POST", "/api/alarms", {"device": device, "type": "Overheat",
                                                   "severity": "MAJOR"})
        assert resp.status == 201, resp.body
        raised.append(uuid.UUID(resp.json()["alarm_id"]))
    server.wait_for(lambda: set(raised) <= set(server.alarms), timeout=DEADLINE_S,
                    what="both alarms created")
    with server.cond:
        assert [server.alarms[a]["customerId"] for a in raised] == [
            typed_id("CUSTOMER", NULL_UUID), typed_id("CUSTOMER", customer)]
        assert server.failures() == []
    assert [a.entity_id for a in server.applications("alarm_created")] == raised
    assert wait_drained(agent)["queue"]["dead"] == 0


def test_telemetry_is_applied_exactly_once_when_answers_come_late_and_out_of_order(harness: Harness) -> None:
    # every other message is answered 0.4 s late, the rest at once: answers overtake each other
    server = harness.server(answer_delay=lambda up: 0.4 if up.uplinkMsgId % 2 else 0.01)
    agent = harness.agent(server, EDGE_CLOUD_BATCH_SIZE="5", EDGE_CLOUD_WINDOW="8")
    wait_connected(agent)
    devices = [agent.create_device(f"tb-tel-{i}") for i in range(4)]
    for _, token in devices:
        post_points(agent, token, range(30))
    ids = [uuid.UUID(device_id) for device_id, _ in devices]
    server.wait_for(lambda: all(len(server.points(d)) >= 30 for d in ids), timeout=DEADLINE_S,
                    what="30 points of every device")
    wait_drained(agent, timeout=DEADLINE_S)

    for device_id, _ in devices:
        assert values_of(server.points(uuid.UUID(device_id))) == list(range(30)), device_id
    with server.cond:
        assert len(server.connects) == 1
        assert server.failures() == []
        assert set(server.receipts.values()) == {1}, "an uplink message was sent twice"
        received = [r.msg.uplinkMsgId for r in server.uplinks]
        answered = [r.msg.uplinkMsgId for r in sorted(server.uplinks,
                                                     key=lambda r: r.answered_at or 0)]
    assert set(server.payload_receipts().values()) == {1}, "an event was sent twice"
    assert answered != received  # the answers did come out of order
    assert len(server.applications("device_created")) == 4


def test_a_device_the_server_refuses_for_ever_is_dead_lettered_while_others_keep_flowing(
        harness: Harness) -> None:
    refusal = "Device name 'bad-sensor' violates the tenant's naming policy!"
    server = harness.server(
        refuse_device=lambda d: refusal if str(d.get("name")).startswith("bad-") else None)
    agent = harness.agent(server, EDGE_CLOUD_RETRY_INTERVAL_MS="300",
                          EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS="5000",
                          EDGE_CLOUD_RETRY_PERMANENT_AFTER="3")
    wait_connected(agent)
    started = time.monotonic()
    bad_id, bad_token = agent.create_device("bad-sensor")
    good = [agent.create_device(f"good-{i}") for i in range(3)]
    post_points(agent, bad_token, range(5))
    for _, token in good:
        post_points(agent, token, range(20))

    def dead() -> list[dict[str, Any]] | None:
        events = [e for e in agent.read_log() if e.status.value == "DEAD"]
        return [e.as_json() for e in events] if events else None

    wait_until(dead, timeout=40, what="the refused device's event dead-lettered")
    dead_after_s = time.monotonic() - started
    good_ids = [uuid.UUID(device_id) for device_id, _ in good]
    server.wait_for(lambda: all(set(values_of(server.points(d))) == set(range(20))
                                for d in good_ids), timeout=DEADLINE_S,
                    what="every point of the other devices")
    wait_drained(agent, timeout=DEADLINE_S)

    # bounded: 3 failures in a message, then 3 alone, 300 ms apart, and answers within ms
    assert dead_after_s < 20, dead_after_s
    # the other devices' data flowed while the refused device was still being retried
    first_good = min(a.at for a in server.applications("telemetry")
                     if a.entity_id != uuid.UUID(bad_id))
    with server.cond:
        refused_at = [r.answered_at for r in server.uplinks
                      if r.answer is not None and not r.answer.success
                      and r.answered_at is not None]
    assert refused_at and max(refused_at) > first_good
    assert {e for _, e in server.failures()} == {java_error_text(JavaError(refusal))}
    # what the operator sees: exactly the device's creation, with the server's error text
    [event] = [json.loads(line) for line in dead_events_cli(agent, "--json").splitlines()]
    assert (event["entity_id"], event["action"], event["status"]) == (bad_id, "ADDED", "DEAD")
    # on one line: the stack frames' line breaks escaped
    assert event["error"] == "rejected by the cloud: " + java_error_text(
        JavaError(refusal)).replace("\n", "\\n")
    text = dead_events_cli(agent)
    assert bad_id in text and f"error=rejected by the cloud: {refusal}" in text
    assert uuid.UUID(bad_id) not in server.devices
    assert server.points(uuid.UUID(bad_id)) == []  # the server skips data of a device it lacks
    for device_id, _ in good:
        assert uuid.UUID(device_id) in server.devices


def test_rate_limited_messages_are_retried_and_applied_never_dead_lettered(harness: Harness) -> None:
    server = harness.server(rate_limited_first=4, answer_delay=0.0)
    agent = harness.agent(server, EDGE_CLOUD_RETRY_INTERVAL_MS="200",
                          EDGE_CLOUD_RETRY_PERMANENT_AFTER="2", EDGE_CLOUD_BATCH_SIZE="2")
    wait_connected(agent)
    device_id, token = agent.create_device("tb-limited")
    post_points(agent, token, range(6))
    device = uuid.UUID(device_id)
    server.wait_for(lambda: len(server.points(device)) >= 6, timeout=DEADLINE_S,
                    what="every point applied")
    st = wait_drained(agent, timeout=DEADLINE_S)

    assert st["queue"]["dead"] == 0
    assert [e for e in agent.read_log() if e.status.value != "DEPLOYED"] == []
    failures = server.failures()
    # more failures than permanent_after, yet transient: nothing set aside
    assert len(failures) == 4 and {e for _, e in failures} == {RATE_LIMIT_ERROR}
    # a rate-limited message is not processed, so nothing was applied twice
    assert values_of(server.points(device)) == list(range(6))
    assert [a.entity_id for a in server.applications("device_created")] == [device]


def test_an_answer_5_s_late_is_waited_for_not_resent(harness: Harness) -> None:
    server = harness.server(answer_delay=5.0)
    agent = harness.agent(server)  # the default ack timeout and retry interval
    wait_connected(agent)
    device_id, token = agent.create_device("tb-slow")
    post_points(agent, token, range(3))
    device = uuid.UUID(device_id)
    server.wait_for(lambda: len(server.answered()) == len(server.uplinks) > 0
                    and len(server.points(device)) >= 3, timeout=DEADLINE_S,
                    what="every uplink answered")
    wait_drained(agent, timeout=DEADLINE_S)

    with server.cond:
        assert dict(server.receipts) == {r.msg.uplinkMsgId: 1 for r in server.uplinks}
        assert all(r.answered_at is not None and r.answered_at - r.at >= 5.0
                   for r in server.uplinks)
        assert len(server.connects) == 1
    assert set(server.payload_receipts().values()) == {1}, "an event was sent twice"
    assert values_of(server.points(device)) == [0, 1, 2]
    assert [a.entity_id for a in server.applications("device_created")] == [device]


def test_a_full_sync_of_a_hundred_widget_types_completes_then_uplinks_flow(harness: Harness) -> None:
    server = harness.server(sync=SyncContent(
        widget_types=100, widgets_bundles=1,
        devices=(SyncDevice("synced-1", "tok-synced-1"), SyncDevice("synced-2", "tok-synced-2"))))
    agent = harness.agent(server)
    server.wait_for(lambda: server.sync_completed == 1, timeout=DEADLINE_S,
                    what="the full sync completed")
    wait_connected(agent)

    with server.cond:
        sent = server.first_sends()
        acks = {a.downlinkMsgId: a for a in server.downlink_acks}
        assert [m.downlinkMsgId for m in sent
                if m.downlinkMsgId not in acks or not acks[m.downlinkMsgId].success] == []
        assert [m for attempt, m in server.downlinks_sent if attempt > 1] == []
        assert server.discarded == []
        assert sum(len(m.widgetTypeUpdateMsg) for m in sent) == 100
        assert sent[-1].HasField("syncCompletedMsg")
    # the synced device's token works on the edge, and its data reaches the server
    synced = server.device_named("synced-1")
    assert synced is not None
    post_points(agent, "tok-synced-1", range(3))
    server.wait_for(lambda: len(server.points(synced[0])) >= 3, timeout=DEADLINE_S,
                    what="the synced device's telemetry")
    assert values_of(server.points(synced[0])) == [0, 1, 2]
    # a device created on the edge names the device profile the sync brought
    device_id, _ = agent.create_device("made-after-sync")
    server.wait_for(lambda: uuid.UUID(device_id) in server.devices, what="the new device")
    with server.cond:
        made = server.devices[uuid.UUID(device_id)]
    assert made["deviceProfileId"] == typed_id("DEVICE_PROFILE", server.device_profile_id)
    assert made["tenantId"] == typed_id("TENANT", server.tenant_id)


def edge_relations(agent: Agent, entity_id: uuid.UUID) -> list[tuple[str, str, str]] | None:
    """The relations the edge holds from the entity: (from id, type, to id); None while the
    edge does not have the entity."""
    resp = agent.admin("GET", f"/api/entities/{entity_id}")
    if resp.status == 404:
        return None
    assert resp.status == 200, resp.body
    return sorted((r["from"]["id"], r["type"], r["to"]["id"])
                  for r in resp.json()["relations"]["from"])


def relation_requests(server: TbServer) -> list[uuid.UUID]:
    """The entities the edge asked the server for the relations of, in arrival order."""
    return [a.entity_id for a in server.applications("relation_request")]


def test_a_relation_made_in_the_cloud_before_the_edge_connects_reaches_the_edge(
        harness: Harness) -> None:
    server = harness.server(sync=SyncContent(
        devices=(SyncDevice("pump", "tok-pump"), SyncDevice("tank", "tok-tank"))))
    pump, tank = server.device_named("pump"), server.device_named("tank")
    assert pump is not None and tank is not None
    server.relate(("DEVICE", pump[0]), ("DEVICE", tank[0]), "Feeds")
    agent = harness.agent(server)
    wait_until(lambda: edge_relations(agent, pump[0]) == [(str(pump[0]), "Feeds", str(tank[0]))],
               timeout=DEADLINE_S, what="the cloud's relation on the edge")
    # asked once for each device (both answered with the relation), the tenant and the user
    server.wait_for(lambda: len(relation_requests(server)) >= 4, what="the relation requests")
    requests = relation_requests(server)
    assert len(requests) == 4  # the fourth: the tenant admin user
    assert [requests.count(e) for e in (pump[0], tank[0], server.tenant_id)] == [1, 1, 1]
    with server.cond:
        assert [(m.relationUpdateMsg[0].msgType, json.loads(m.relationUpdateMsg[0].entity)["type"])
                for m in server.relation_answers] == [(edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
                                                       "Feeds")] * 2
    assert edge_relations(agent, tank[0]) == []  # it is the relation's to end


def test_a_full_sync_does_not_remove_the_edges_relations(harness: Harness) -> None:
    server = harness.server(sync=SyncContent(
        devices=(SyncDevice("pump", "tok-pump"), SyncDevice("tank", "tok-tank"))))
    pump, tank = server.device_named("pump"), server.device_named("tank")
    assert pump is not None and tank is not None
    server.relate(("DEVICE", pump[0]), ("DEVICE", tank[0]), "Feeds")
    agent = harness.agent(server)
    wait_until(lambda: edge_relations(agent, pump[0]), timeout=DEADLINE_S,
               what="the cloud's relation on the edge")
    made = agent.admin("POST", "/api/relations", {
        "from": {"entityType": "DEVICE", "id": str(tank[0])},
        "to": {"entityType": "DEVICE", "id": str(pump[0])}, "type": "Drains"})
    assert made.status == 201, made.body
    server.wait_for(lambda: len(server.relations) == 2, what="the edge's relation in the cloud")
    wait_until(lambda: edge_status(agent)["queue"]["pending"] == 0, timeout=DEADLINE_S,
               what="the edge's relation acknowledged", show=lambda: edge_status(agent)["queue"])
    with server.cond:
        asked_before = len(relation_requests(server))
        answered_before = len(server.relation_answers)

    log_before = agent.admin("GET", "/api/apply-log?limit=10000").json()
    assert agent.admin("POST", "/api/sync", {"full": True}).status == 202
    # counted once the edge acknowledged the SyncCompletedMsg: after its end was committed
    server.wait_for(lambda: server.sync_completed == 2, what="the full sync completed")
    # the sync carried no relation: the edge asks again for those of what it sent; the
    # answers (Feeds and Drains, once from each end) are acknowledged after their commit
    server.wait_for(lambda: {pump[0], tank[0], server.tenant_id}
                    <= set(relation_requests(server)[asked_before:]),
                    what="the relation requests after the full sync")

    def answers_applied() -> bool:
        answers = server.relation_answers[answered_before:]
        acked = {a.downlinkMsgId for a in server.downlink_acks if a.success}
        return len(answers) == 4 and {m.downlinkMsgId for m in answers} <= acked

    server.wait_for(answers_applied, what="the answers applied on the edge")
    with server.cond:
        answered = [json.loads(m.relationUpdateMsg[0].entity)
                    for m in server.relation_answers[answered_before:]]
    assert sorted(r["type"] for r in answered) == ["Drains", "Drains", "Feeds", "Feeds"]
    # nothing removed, nothing added again: the answers carry what the edge holds (the
    # cloud's JSON text of it, "version": null) and change nothing
    after = agent.admin("GET", f"/api/apply-log?limit=10000&after={log_before[-1]['index']}")
    assert [e for e in after.json() if e["entity_type"] == "RELATION"] == []
    assert edge_relations(agent, pump[0]) == [(str(pump[0]), "Feeds", str(tank[0]))]
    assert edge_relations(agent, tank[0]) == [(str(tank[0]), "Drains", str(pump[0]))]


def test_a_full_sync_asked_for_during_the_first_sync_runs_once_that_one_completes(
        harness: Harness) -> None:
    """ThingsBoard ignores a SyncRequestMsg while its sync runs and never answers it
    (EdgeGrpcSession.startSyncProcess: "Sync is already started, skipping starting it now").
    The edge holds an operator's request until the running sync completes, says so in its
    status, then sends it: a second full sync runs and completes."""
    server = harness.server(hold_sync=True)
    agent = harness.agent(server)
    server.wait_for(lambda: server.sync_starts == [True], what="the first sync started")
    asked_ms = int(time.time() * 1000)
    resp = agent.admin("POST", "/api/sync", {"full": True})
    assert resp.status == 202, resp.body

    def pending() -> dict[str, Any] | None:
        last = edge_status(agent)["sync"]["last"]
        return last if last is not None and last.get("pending") is not None else None

    held = wait_until(pending, timeout=DEADLINE_S, what="the operator's request pending")
    assert link_state(agent) == "SYNCING"
    assert (held["full"], held["reason"], held["completed_ms"]) == (
        True, "first connect (no edge identity stored)", None)
    assert (held["pending"]["full"], held["pending"]["reason"], held["pending"]["requests"]) == (
        True, "operator", 1)
    assert held["pending"]["requested_ms"] >= asked_ms
    with server.cond:
        assert server.sync_requests == [True]  # held: not sent while the sync runs

    server.release_sync()
    server.wait_for(lambda: server.sync_completed == 2, timeout=DEADLINE_S,
                    what="the operator's full sync completed after the first")
    with server.cond:
        assert server.sync_requests == server.sync_starts == [True, True]
        assert server.discarded == []

    def second_done() -> dict[str, Any] | None:
        st = edge_status(agent)
        last = st["sync"]["last"]
        return st if last["reason"] == "requested: operator" and last["completed_ms"] else None

    st = wait_until(second_done, timeout=DEADLINE_S, what="the status of the second sync")
    last = st["sync"]["last"]
    assert (last["full"], last["pending"]) == (True, None)
    assert last["requested_ms"] >= held["pending"]["requested_ms"]
    assert (st["sync"]["full_in_progress"], st["sync"]["full_requested"]) == (False, None)
    assert st["sync"]["last_full_ms"] >= last["requested_ms"]


def test_the_emulated_server_refuses_what_thingsboard_refuses_and_applies_resends_again() -> None:
    """The emulator itself, through a bare edge (tests.helpers.link_client): the checks the
    scenarios above rely on are there, so a pass means what it says."""
    server = TbServer(RK, SECRET, answer_delay=0.0).start()
    client = LinkClient(server.port)
    try:
        assert client.connect(RK, SECRET).responseCode == edge_pb2.ACCEPTED
        client.sync(full=False)
        tenant = typed_id("TENANT", server.tenant_id)
        no_tenant, dev, other = uuid.uuid1(), uuid.uuid1(), uuid.uuid1()

        def device(device_id: uuid.UUID, name: str, **extra: Any) -> edge_pb2.DeviceUpdateMsg:
            msb, lsb = halves(device_id)
            return edge_pb2.DeviceUpdateMsg(
                msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
                entity=json.dumps({"id": typed_id("DEVICE", device_id), "name": name, **extra}))

        def errors(**payloads: Any) -> str:
            answer = client.uplink(epoch=None, **payloads)
            assert not answer.HasField("retryable") and not answer.HasField("rejectedEdgeSeqId")
            return "" if answer.success else answer.errorMsg.splitlines()[0]

        assert errors(deviceUpdateMsg=[device(no_tenant, "a")]) == \
            "Device should be assigned to tenant!"
        assert errors(deviceUpdateMsg=[device(dev, " ", tenantId=tenant)]) == \
            "Device name should be specified!"
        assert errors(deviceUpdateMsg=[device(dev, "b", tenantId=tenant)],
                      deviceCredentialsUpdateMsg=[credentials(dev, "tok-b", 1)]) == ""
        assert errors(deviceUpdateMsg=[device(other, "c", tenantId=tenant)],
                      deviceCredentialsUpdateMsg=[credentials(other, "tok-b", 2)]) == \
            "Device credentials are already assigned to another device!"
        alarm = edge_pb2.AlarmUpdateMsg(
            msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=1, idLSB=2,
            entity=json.dumps({"type": "t", "severity": "MAJOR",
                               "originator": typed_id("DEVICE", dev)}))
        assert errors(alarmUpdateMsg=[alarm]) == "Alarm should be assigned to tenant!"

        def owned_alarm(originator: uuid.UUID, customer: uuid.UUID | None) -> edge_pb2.AlarmUpdateMsg:
            body = {"type": "t", "severity": "MAJOR", "tenantId": tenant,
                    "originator": typed_id("DEVICE", originator)}
            if customer is not None:
                body["customerId"] = typed_id("CUSTOMER", customer)
            return edge_pb2.AlarmUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
                                           idMSB=3, idLSB=originator.int & 0xFFFF,
                                           entity=json.dumps(body))

        assert errors(alarmUpdateMsg=[owned_alarm(dev, uuid.uuid1())]) == \
            "Can't assign alarm to customer. Originator belongs to different customer!"
        assert errors(alarmUpdateMsg=[owned_alarm(uuid.uuid1(), NULL_UUID)]) == \
            "Can't assign alarm to customer. Originator is not assigned to customer!"
        assert errors(alarmUpdateMsg=[owned_alarm(dev, NULL_UUID)]) == ""
        assert errors(alarmUpdateMsg=[owned_alarm(uuid.uuid1(), None)]) == ""
        scope = telemetry(dev, None)
        scope.ClearField("postTelemetryMsg")
        scope.postAttributesMsg.kv.add(key="k", type=1, long_v=1)
        scope.postAttributeScope = "DEVICE_SCOPE"
        assert errors(entityData=[scope]) == \
            "No enum constant org.thingsboard.server.common.data.AttributeScope.DEVICE_SCOPE"
        # unknown entity: skipped with success; no dedup: the same message twice, applied twice
        assert errors(entityData=[telemetry(uuid.uuid1(), None, {"t": 1})]) == ""
        for _ in range(2):
            assert errors(entityData=[telemetry(dev, None, {"t": 7})]) == ""
        assert server.points(dev) == [(1_700_000_000_000, {"t": 7})] * 2
        assert set(server.devices) == {dev, other}  # "c" itself was valid; its token was not
        assert server.credentials == {dev: "tok-b"}

        # relations: saved only when both ends exist; a request is answered after the sync
        # with one relationUpdateMsg downlink per relation from or to the entity
        def relation(src: uuid.UUID, dst: uuid.UUID) -> edge_pb2.RelationUpdateMsg:
            return edge_pb2.RelationUpdateMsg(
                msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, entity=json.dumps(
                    {"from": typed_id("DEVICE", src), "to": typed_id("DEVICE", dst),
                     "type": "Contains", "typeGroup": "COMMON", "additionalInfo": None}))

        assert errors(relationUpdateMsg=[relation(dev, uuid.uuid1())]) == ""  # skipped
        assert errors(relationUpdateMsg=[relation(dev, other)]) == ""
        assert [a.kind for a in server.applied if a.kind.startswith("relation")] == [
            "relation_skipped", "relation_saved"]
        assert errors(relationRequestMsg=[edge_pb2.RelationRequestMsg(entityType="THING")]) == \
            "No enum constant org.thingsboard.server.common.data.EntityType.THING"
        msb, lsb = halves(other)
        client.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=(
            edge_pb2.UplinkMsg(uplinkMsgId=1000, relationRequestMsg=[edge_pb2.RelationRequestMsg(
                entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE")]))))
        got = [client.recv(), client.recv()]  # its answer, and the relation's downlink
        assert [r.uplinkResponseMsg.success for r in got if r.HasField("uplinkResponseMsg")] == [
            True]
        (answer,) = [r.downlinkMsg for r in got if r.HasField("downlinkMsg")]
        assert answer.relationUpdateMsg[0].msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
        assert json.loads(answer.relationUpdateMsg[0].entity) == {
            "from": typed_id("DEVICE", dev), "to": typed_id("DEVICE", other), "type": "Contains",
            "typeGroup": "COMMON", "additionalInfo": None, "version": None}
    finally:
        client.close()
        server.stop()
