"""The edge's ConnectionActor against scripted peers (tests/helpers/fake_peer.py): a whole EdgeApp
on tmp_path whose cloud link points at a fake cloud over real gRPC on loopback.

Peers: ThingsBoard-like (no capabilities, random ids, out-of-order acks), one that redelivers
downlinks, one that rejects an event (go-back-N), one that never answers, one that refuses the
credentials, one whose clock is 120 s behind, one with a small maxInboundMessageSize.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from edge_sync.actors.messages import Append
from edge_sync.app import EdgeApp
from edge_sync.common import ids
from edge_sync.config import load_edge_config
from edge_sync.link import connection
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Device, Lane, NewEvent, Status, StoredEvent, lane_for
from tests.helpers.fake_peer import FAKE_TENANT_ID, FakeCloud, Payload, Uplink, payloads
from tests.helpers.log_capture import log_records as capture_logs
from tests.helpers.metric_values import metric_total
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
SYNC_TIMEOUT_S = 3.0
"""connection.SYNC_TIMEOUT_S in the long-sync tests: long enough that a pause of the test's
slow cloud under load (waiting for an acknowledgement) does not pass for a silent sync."""
LONG_SYNC_S = 2 * SYNC_TIMEOUT_S
"""How long the slow cloud of those tests keeps sending: longer than the timeout, so a sync
still running at its end proves the wait restarted."""
SLOW_ANSWER_S = 10.0
"""How long the peer of the held-event test takes to answer the slow device's creation: what
must not wait for it is waited for with a deadline well below this."""
ROUTING_KEY, SECRET = "rk-fake", "secret-fake"


# -- harness ---------------------------------------------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.fakes: list[FakeCloud] = []
        self.apps: list[EdgeApp] = []

    def fake(self, **kwargs: Any) -> FakeCloud:
        fake = FakeCloud(**kwargs).start()
        self.fakes.append(fake)
        return fake

    def edge(self, fake: FakeCloud, **env: str) -> EdgeApp:
        base = {
            "EDGE_DATA_DIR": str(self.tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "2",
            "EDGE_MQTT_ENABLED": "false",
            "CLOUD_ROUTING_KEY": ROUTING_KEY, "CLOUD_ROUTING_SECRET": SECRET,
            "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(fake.port),
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "200", "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
            "EDGE_CLOUD_RECONNECT_JITTER": "0", "EDGE_CLOUD_RETRY_INTERVAL_MS": "10000",
            "EDGE_CLOUD_BATCH_TIMEOUT_MS": "50",
        }
        app = EdgeApp(load_edge_config(env={**base, **env})).start()
        self.apps.append(app)
        return app

    def close(self) -> None:
        for app in self.apps:
            app.stop(timeout=30)
        for fake in self.fakes:
            fake.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record (DEBUG and up) logged during the test."""
    with capture_logs() as records:
        yield records


def link_state(app: EdgeApp) -> str:
    return str(app.link_board.value["state"])


def metric(app: EdgeApp, name: str) -> float:
    return app.metrics.snapshot()[name]


def edge_events(app: EdgeApp) -> list[StoredEvent]:
    with app.store.read() as txn:
        return list(EventLog(app.store).iter_events(txn))


def settled(app: EdgeApp, total: int) -> bool:
    """Every one of `total` events is no longer PENDING."""
    events = edge_events(app)
    return len(events) == total and all(e.status is not Status.PENDING for e in events)


def make_device(app: EdgeApp, name: str) -> Device:
    device, fut = app.service.create_device(name, token=f"tok-{name}")
    assert len(fut.result(DEADLINE_S)) == 2
    return device


def post(app: EdgeApp, device: Device, values: list[dict[str, Any]], ts0: int = 1_700_000_000_000
         ) -> range:
    entries = tuple((ts0 + i, tuple(v.items())) for i, v in enumerate(values))
    seqs: Future[range] = app.service.post_entries(device.id, entries)
    return seqs.result(DEADLINE_S)


def post_then_delete(app: EdgeApp, device: Device, values: list[dict[str, Any]]) -> range:
    """The device's telemetry then its DELETED (order-sensitive, normal lane), committed together
    through the queue (the device API has no delete): the link sees them in one read."""
    ts0 = 1_700_000_000_000
    events = tuple(NewEvent("DEVICE", "DEVICE", device.id, Action.TIMESERIES_UPDATED,
                            {"ts": ts0 + i, "values": v}, ts0 + i, Lane.NORMAL)
                   for i, v in enumerate(values))
    deleted = NewEvent("DEVICE", "DEVICE", device.id, Action.DELETED, device.as_json(),
                       ts0 + len(values), lane_for("DEVICE", Action.DELETED))
    assert deleted.lane is Lane.NORMAL
    reply: Future[range] = Future()
    app.queue.tell(Append(device.id, (*events, deleted), reply))
    return reply.result(DEADLINE_S)


def sync_done(fake: FakeCloud) -> bool:
    return bool(fake.sync_completed_ids) and all(
        any(a.success for a in fake.acks_for(i)) for i in fake.sync_completed_ids)


# -- a. a ThingsBoard-like peer ---------------------------------------------------------------------


def _order_violations(uplinks: list[Uplink]) -> list[str]:
    """Pairs of concurrently unacknowledged messages (or payloads of one message, which
    ThingsBoard may apply concurrently) sharing an entity where one side is order-sensitive."""
    out: list[str] = []
    for u in uplinks:
        mine = payloads(u.msg)
        by_entity: dict[uuid.UUID, list[Payload]] = {}
        for p in mine:
            by_entity.setdefault(p.entity_id, []).append(p)
        for eid, ps in by_entity.items():
            if len(ps) > 1 and any(p.sensitive for p in ps):
                out.append(f"message {u.msg.uplinkMsgId} holds {[p.action for p in ps]} of {eid}")
        for other in u.in_flight:
            theirs = payloads(other)
            for eid, ps in by_entity.items():
                also = [p for p in theirs if p.entity_id == eid]
                if also and (any(p.sensitive for p in ps) or any(p.sensitive for p in also)):
                    out.append(f"message {u.msg.uplinkMsgId} ({[p.action for p in ps]}) sent while "
                               f"{other.uplinkMsgId} ({[p.action for p in also]}) of {eid} was "
                               f"unacknowledged")
    return out


def test_thingsboard_like_peer_sync_then_upload_without_concurrent_order_sensitive_events(
        harness: Harness) -> None:
    fake = harness.fake(uplinks="random", capabilities=None, random_ids=True, hold_sync=True,
                        min_ack_delay_s=0.005, max_ack_delay_s=0.04, seed=11)
    app = harness.edge(fake, EDGE_CLOUD_BATCH_SIZE="4", EDGE_CLOUD_WINDOW="8")

    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    wait_until(lambda: link_state(app) == "SYNCING", timeout=DEADLINE_S, what="SYNCING")
    # A backlog before the sync completes: nothing may be sent before syncCompletedMsg.
    early = [make_device(app, f"tb-early-{i}") for i in range(6)]
    for i, d in enumerate(early):
        post(app, d, [{"n": i * 10 + k} for k in range(3)])
    assert fake.uplinks == []
    fake.release_sync()
    wait_until(lambda: link_state(app) == "CONNECTED", timeout=DEADLINE_S, what="CONNECTED")
    wait_until(lambda: settled(app, len(early) * 5), timeout=DEADLINE_S, what="the backlog acknowledged")
    # Then devices one by one on a live link: each one's telemetry and deletion are committed
    # while its ADDED is in flight.
    late: list[Device] = []
    for i in range(6, 12):
        d = make_device(app, f"tb-late-{i}")
        late.append(d)
        post_then_delete(app, d, [{"n": i * 10 + k} for k in range(3)])
        wait_until(lambda: settled(app, len(early) * 5 + len(late) * 6), timeout=DEADLINE_S,
                   what=f"{d.name} acknowledged")
    devices = early + late
    total = len(early) * 5 + len(late) * 6
    wait_until(lambda: settled(app, total), timeout=20, what="every event acknowledged")

    # connect and sync as ThingsBoard sees them
    [connect] = fake.connects
    req = connect.request
    assert (req.edgeRoutingKey, req.edgeSecret, req.edgeVersion) == (ROUTING_KEY, SECRET,
                                                                      edge_pb2.V_4_3_0)
    assert req.maxInboundMessageSize == 4 * 1024 * 1024
    assert fake.sync_requests == [(1, True)]  # first connect: full sync
    [sync_id] = fake.sync_completed_ids
    assert [a.success for a in fake.acks_for(sync_id)] == [True]
    assert app.link_board.value["peer"] == "ThingsBoard"

    events = edge_events(app)
    assert all(e.status is Status.DEPLOYED for e in events), [
        (e.seq, e.status) for e in events if e.status is not Status.DEPLOYED]
    # each event delivered exactly once (no resend was due: retry interval 10 s)
    got = fake.applied_seqs()
    assert sorted(got) == [e.seq for e in events]
    assert len(got) == len(set(got))

    assert _order_violations(fake.uplinks) == []
    assert any(u.in_flight for u in fake.uplinks), "the window never had two messages in flight"

    # per device, in arrival order: ADDED, CREDENTIALS_UPDATED, its telemetry in order, DELETED
    by_device: dict[uuid.UUID, list[Payload]] = {}
    for p in fake.applied:
        by_device.setdefault(p.entity_id, []).append(p)
    for i, d in enumerate(devices):
        got_d = by_device[d.id]
        assert [p.action for p in got_d] == [
            "ADDED", "CREDENTIALS_UPDATED", "TIMESERIES_UPDATED", "TIMESERIES_UPDATED",
            "TIMESERIES_UPDATED", *(["DELETED"] if d in late else [])], d.name
        assert got_d[0].value["name"] == d.name
        assert got_d[1].value["credentialsId"] == d.token
        assert [p.value for p in got_d[2:5]] == [{"n": i * 10 + k} for k in range(3)]
    # the uplink ids are opaque to the peer but unique per stream
    ids = [u.msg.uplinkMsgId for u in fake.uplinks]
    assert len(ids) == len(set(ids))


def test_events_recorded_before_the_first_connect_name_the_tenant_when_sent(
        harness: Harness) -> None:
    """A device and an alarm recorded while the edge has never been accepted (no tenant known)
    reach ThingsBoard with the tenant of the connect response's EdgeConfiguration."""
    fake = harness.fake(response_code=edge_pb2.SERVER_UNAVAILABLE)
    app = harness.edge(fake, EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD="100")
    fake.wait_for(lambda: fake.connects, what="a refused connect")
    device = make_device(app, "before-connect")
    alarm_id, fut = app.service.raise_alarm(device.id, "overheat", severity="MAJOR")
    fut.result(DEADLINE_S)
    # Time-based ids, as ThingsBoard makes them (its device processors read createdTime back
    # from the id): made at the device's creation time.
    assert device.id.version == 1 and alarm_id.version == 1
    assert ids.unix_ms(device.id) == device.created_time
    assert {e.tenant_id for e in edge_events(app)} == {uuid.UUID(int=0)}
    fake.response_code = edge_pb2.ACCEPTED
    wait_until(lambda: settled(app, 3), timeout=DEADLINE_S, what="every event acknowledged")

    tenant = {"entityType": "TENANT", "id": str(FAKE_TENANT_ID)}
    null_customer = {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"}
    [added] = [p for p in fake.applied if p.action == "ADDED"]
    assert added.value == {
        "id": {"entityType": "DEVICE", "id": str(device.id)}, "createdTime": device.created_time,
        "tenantId": tenant, "customerId": null_customer, "name": "before-connect",
        "type": "default", "label": "", "additionalInfo": None}
    [alarm] = [m for u in fake.uplinks for m in u.msg.alarmUpdateMsg]
    sent = json.loads(alarm.entity)
    assert (sent["id"], sent["tenantId"], sent["originator"]) == (
        {"entityType": "ALARM", "id": str(alarm_id)}, tenant,
        {"entityType": "DEVICE", "id": str(device.id)})
    assert "customerId" not in sent  # ThingsBoard gives an alarm its originator's customer
    assert (sent["severity"], sent["acknowledged"], sent["cleared"]) == ("MAJOR", False, False)


# -- b. downlinks redelivered ------------------------------------------------------------------------


def shared_attr_downlink(downlink_id: int, device: Device, values: dict[str, int]
                         ) -> edge_pb2.DownlinkMsg:
    b = device.id.bytes
    return edge_pb2.DownlinkMsg(downlinkMsgId=downlink_id, entityData=[edge_pb2.EntityDataProto(
        entityIdMSB=int.from_bytes(b[:8], "big", signed=True),
        entityIdLSB=int.from_bytes(b[8:], "big", signed=True), entityType="DEVICE",
        attributesUpdatedMsg=transport_pb2.PostAttributeMsg(kv=[
            transport_pb2.KeyValueProto(key=k, type=transport_pb2.LONG_V, long_v=v)
            for k, v in values.items()]),
        postAttributeScope="SHARED_SCOPE")])


def deliver(fake: FakeCloud, msg: edge_pb2.DownlinkMsg, acks: int) -> list[bool]:
    """Send; wait until downlinkMsgId has `acks` acknowledgements; their success flags."""
    fake.send_downlink(msg)
    fake.wait_for(lambda: len(fake.acks_for(msg.downlinkMsgId)) >= acks,
                  what=f"ack {acks} of downlink {msg.downlinkMsgId}")
    return [a.success for a in fake.acks_for(msg.downlinkMsgId)]


def test_redelivered_downlink_is_applied_once_and_a_reused_id_with_new_content_is_applied(
        harness: Harness) -> None:
    fake = harness.fake(uplinks="ack", random_ids=True, seed=5)
    app = harness.edge(fake)
    device = make_device(app, "dl-dev")
    wait_until(lambda: link_state(app) == "CONNECTED", timeout=DEADLINE_S, what="CONNECTED")
    fake.wait_for(lambda: sync_done(fake), what="sync acknowledged")

    def shared() -> dict[str, Any]:
        return app.service.get_attributes(device.token, client_keys=None, shared_keys=None)["shared"]

    applied0 = metric(app, 'edge_sync_downlinks_total{outcome="applied"}')
    x, y = fake.new_downlink_id(), fake.new_downlink_id()
    assert x != y
    first = shared_attr_downlink(x, device, {"target": 21})
    assert deliver(fake, first, 1) == [True]
    assert shared() == {"target": 21}
    assert deliver(fake, shared_attr_downlink(y, device, {"target": 22}), 1) == [True]
    assert shared() == {"target": 22}
    # the first one again, late and byte-identical: acknowledged, not applied again
    assert deliver(fake, first, 2) == [True, True]
    assert shared() == {"target": 22}
    assert metric(app, 'edge_sync_downlinks_total{outcome="duplicate"}') == 1
    assert metric(app, 'edge_sync_downlinks_total{outcome="applied"}') == applied0 + 2

    # ThingsBoard picks ids at random: two different downlinks may share one
    z = fake.new_downlink_id()
    assert deliver(fake, shared_attr_downlink(z, device, {"a": 1}), 1) == [True]
    assert deliver(fake, shared_attr_downlink(z, device, {"b": 2}), 2) == [True, True]
    assert shared() == {"target": 22, "a": 1, "b": 2}
    assert metric(app, 'edge_sync_downlinks_total{outcome="duplicate"}') == 1
    assert metric(app, 'edge_sync_downlinks_total{outcome="applied"}') == applied0 + 4
    assert metric(app, 'edge_sync_downlinks_total{outcome="failed"}') == 0

    # content the edge refuses: success=false, and the extension says a resend cannot help
    bad = edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id(), deviceUpdateMsg=[
        edge_pb2.DeviceUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, entity="not json")])
    assert deliver(fake, bad, 1) == [False]
    [refusal] = fake.acks_for(bad.downlinkMsgId)
    assert (refusal.HasField("retryable"), refusal.retryable) == (True, False)
    assert refusal.errorMsg != ""
    assert metric(app, 'edge_sync_downlinks_total{outcome="failed"}') == 1


# -- c. one event rejected ---------------------------------------------------------------------------


def test_rejected_event_is_dead_lettered_and_the_rest_delivered_once_in_order(
        harness: Harness) -> None:
    ordered = edge_pb2.CloudCapabilities(orderedApply=True, dedupBySeq=False)
    fake = harness.fake(uplinks="ordered", capabilities=ordered, hold_sync=True,
                        reject_error="value of 'n' out of range")
    app = harness.edge(fake, EDGE_CLOUD_BATCH_SIZE="3", EDGE_CLOUD_WINDOW="8")
    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    device = make_device(app, "rej-dev")
    seqs = post(app, device, [{"n": k} for k in range(20)])
    rejected = seqs[5]  # n == 5
    fake.reject_seqs = {rejected}
    fake.release_sync()
    total = 22
    wait_until(lambda: settled(app, total), timeout=15, what="every event acknowledged or dead")

    events = {e.seq: e for e in edge_events(app)}
    dead = [e for e in events.values() if e.status is Status.DEAD]
    assert [(e.seq, e.error) for e in dead] == [
        (rejected, "rejected by the cloud: value of 'n' out of range")]
    assert fake.rejected == [rejected]
    assert fake.refused >= 1, "no later message of the failed epoch was in flight: rule untested"
    # everything else exactly once, in seq order (device events first: they have the lower seqs)
    expected = [s for s in sorted(events) if s != rejected]
    assert fake.applied_seqs() == expected
    assert [p.value["n"] for p in fake.applied if p.action == "TIMESERIES_UPDATED"] == [
        k for k in range(20) if k != 5]
    # after the rejection: only higher epochs, never the dead event again
    reject_at = next(i for i, u in enumerate(fake.uplinks) if rejected in u.seqs
                     and u.answer is not None and not u.answer.success and u.answer.HasField(
                         "rejectedEdgeSeqId"))
    failed_epoch = fake.uplinks[reject_at].epoch
    assert failed_epoch is not None
    resent = [u for u in fake.uplinks[reject_at + 1:] if u.answer is not None and u.answer.success]
    assert resent and all((u.epoch or 0) > failed_epoch for u in resent)
    assert all(rejected not in u.seqs for u in fake.uplinks[reject_at + 1:])
    assert metric_total(app.metrics.snapshot(), "edge_sync_dead_letters_total") == 1
    assert link_state(app) == "CONNECTED"


# -- d. a peer that never answers uplinks ----------------------------------------------------------------


def test_unanswered_uplink_is_resent_under_higher_epochs_then_the_edge_reconnects(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    fake = harness.fake(uplinks="silent")
    app = harness.edge(fake, EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS="300",
                       EDGE_CLOUD_RETRY_MAX_RETRIES="2")
    make_device(app, "silent-dev")
    fake.wait_for(lambda: len(fake.connects) >= 2 and any(u.stream == 2 for u in fake.uplinks),
                  what="a second stream carrying uplinks", timeout=10)

    first = [u for u in fake.uplinks if u.stream == 1]
    # 1 send + max_retries resends of the oldest message, each under a higher epoch, new ids
    assert len(first) == 3, [(u.msg.uplinkMsgId, u.epoch, u.seqs) for u in first]
    assert [u.seqs for u in first] == [[1]] * 3  # the device's ADDED (ThingsBoard-like peer: alone)
    epochs = [u.epoch for u in first]
    assert all(e is not None for e in epochs) and epochs == sorted(set(epochs))  # type: ignore[type-var]
    assert [u.msg.uplinkMsgId for u in first] == [1, 2, 3]
    gaps = [b.at - a.at for a, b in itertools.pairwise(first)]
    assert all(g >= 0.25 for g in gaps), gaps  # resent after retry.ack_timeout (300 ms), not sooner

    second = [u for u in fake.uplinks if u.stream == 2]
    assert second[0].seqs == [1] and second[0].msg.uplinkMsgId == 1  # ids restart per stream
    assert fake.sync_requests[:2] == [(1, True), (2, False)]  # identity known after the first

    transitions = [(r["extra"].get("old_state"), r["extra"].get("state")) for r in log_records
                   if r["extra"].get("component") == "link" and "state" in r["extra"]]
    assert transitions[:5] == [("DISCONNECTED", "CONNECTING"), ("CONNECTING", "SYNCING"),
                               ("SYNCING", "CONNECTED"), ("CONNECTED", "BACKOFF"),
                               ("BACKOFF", "CONNECTING")]
    assert metric(app, "edge_sync_link_connect_attempts_total") >= 2
    assert metric_total(app.metrics.snapshot(), "edge_sync_uplink_resends_total") >= 2
    assert all(e.status is Status.PENDING for e in edge_events(app))


# -- e. bad credentials --------------------------------------------------------------------------------


def test_bad_credentials_retry_only_at_the_maximum_interval(harness: Harness) -> None:
    fake = harness.fake(response_code=edge_pb2.BAD_CREDENTIALS)
    app = harness.edge(fake, EDGE_CLOUD_RECONNECT_INTERVAL_MS="100",
                       EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="1000")
    make_device(app, "auth-dev")
    fake.wait_for(lambda: len(fake.connects) >= 3, what="three connect attempts", timeout=8)
    wait_until(lambda: link_state(app) == "AUTH_FAILED", timeout=DEADLINE_S, what="AUTH_FAILED")

    times = fake.connect_times()[:3]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # reconnect.interval is 100 ms: a retry at that pace would show gaps near 0.1 s
    assert all(0.95 <= g <= 2.0 for g in gaps), gaps
    assert fake.sync_requests == [] and fake.uplinks == []
    assert metric(app, "edge_sync_link_bad_credentials_total") >= 3
    assert metric(app, "edge_sync_link_connect_attempts_total") >= 3
    assert all(e.status is Status.PENDING for e in edge_events(app))


# -- f. clock skew --------------------------------------------------------------------------------------


def test_cloud_clock_120s_behind_warns_once_and_delivery_is_unaffected(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    caps = edge_pb2.CloudCapabilities(orderedApply=True, dedupBySeq=True)
    fake = harness.fake(uplinks="ordered", capabilities=caps, dedup=True, clock_offset_ms=-120_000)
    app = harness.edge(fake, EDGE_CLOUD_BATCH_SIZE="5")
    device = make_device(app, "skew-dev")
    seqs = post(app, device, [{"n": k} for k in range(12)])
    wait_until(lambda: settled(app, 14), timeout=DEADLINE_S, what="every event acknowledged")
    # more cloud timestamps: each downlink carries cloudTimeMillis
    for v in (1, 2):
        assert deliver(fake, shared_attr_downlink(fake.new_downlink_id(), device, {"v": v}), 1) == [True]

    events = edge_events(app)
    assert all(e.status is Status.DEPLOYED for e in events)
    assert fake.applied_seqs() == [e.seq for e in events] == [1, 2, *seqs]
    assert [p.value["n"] for p in fake.applied if p.action == "TIMESERIES_UPDATED"] == list(range(12))
    skew_warnings = [r for r in log_records if r["level"].name == "WARNING"
                     and "clocks differ" in r["message"]]
    assert len(skew_warnings) == 1, [r["message"] for r in skew_warnings]
    assert re.match(r"edge and cloud clocks differ by 1[12]\d\.\ds", skew_warnings[0]["message"])
    assert 119_000 <= skew_warnings[0]["extra"]["skew_ms"] <= 130_000
    skew = app.link_board.value["clock_skew_ms"]
    assert isinstance(skew, int) and 119_000 <= skew <= 130_000
    assert [r["message"] for r in log_records if r["level"].name == "ERROR"] == []


# -- g. the peer's maxInboundMessageSize -----------------------------------------------------------------


def test_no_uplink_exceeds_the_peers_max_inbound_message_size(harness: Harness) -> None:
    caps = edge_pb2.CloudCapabilities(orderedApply=True, dedupBySeq=True)
    fake = harness.fake(uplinks="ordered", capabilities=caps, dedup=True, max_inbound=2048)
    app = harness.edge(fake)
    device = make_device(app, "big-dev")
    # Many small key/values: protobuf spends more bytes on each than the edge's own encoding,
    # so a batch read under 2048 stored bytes does not fit in 2048 wire bytes as it is.
    small = post(app, device, [{f"k{j:02d}": k * 100 + j for j in range(40)} for k in range(30)])
    # One event whose payload alone leaves no room for the message around it (seq 33 < 128: a
    # one-byte edgeSeqId, as in the probe), and one far too large.
    ts = 1_800_000_000_000
    probe_len = next(n for n in range(1900, 2100) if _telemetry_payload_size(device, ts, n) == 2040)
    [tight] = post(app, device, [{"s": "t" * probe_len}], ts0=ts)
    [huge] = post(app, device, [{"s": "y" * 3000}], ts0=ts)
    assert tight == 33
    wait_until(lambda: settled(app, 34), timeout=DEADLINE_S, what="every event acknowledged or dead")

    assert fake.uplinks, "nothing sent"
    sizes = [u.size for u in fake.uplinks]
    assert max(sizes) <= 2048, sizes
    # the gRPC message is the RequestMsg around it; the fake's server enforces the limit on it
    assert max(u.request_size for u in fake.uplinks) <= 2048
    assert len(fake.connects) == 1  # the stream was never broken by an oversize message
    assert max(len(u.seqs) for u in fake.uplinks) >= 2, "the limit was never tested by packing"
    assert fake.applied_seqs() == [1, 2, *small]
    assert [p.value["k00"] for p in fake.applied if p.action == "TIMESERIES_UPDATED"] == [
        k * 100 for k in range(30)]
    dead = [e for e in edge_events(app) if e.status is Status.DEAD]
    assert [e.seq for e in dead] == [tight, huge]
    for e in dead:
        assert e.error is not None
        assert "exceeds the cloud's maxInboundMessageSize (2048 bytes)" in e.error, e.error


def _telemetry_payload_size(device: Device, ts: int, str_len: int) -> int:
    """The byte size of the entityData payload of telemetry {"s": "t" * str_len} (edgeSeqId 33)."""
    b = device.id.bytes
    return edge_pb2.EntityDataProto(
        entityIdMSB=int.from_bytes(b[:8], "big", signed=True),
        entityIdLSB=int.from_bytes(b[8:], "big", signed=True), entityType="DEVICE",
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(tsKvList=[transport_pb2.TsKvListProto(
            ts=ts, kv=[transport_pb2.KeyValueProto(key="s", type=transport_pb2.STRING_V,
                                                   string_v="t" * str_len)])]),
        edgeSeqId=33).ByteSize()


# -- d'. a failing oldest message, later ones answered first ----------------------------------------


def test_oldest_message_failing_transiently_while_later_ones_succeed_reconnects_after_max_retries(
        harness: Harness) -> None:
    """A failure the edge reads as transient (ThingsBoard's rate limit) is resent with backoff,
    never dead-lettered; max_retries resends of it make the link reconnect."""
    bad: list[int] = []
    # Answers take 20 ms, the failing message's 60 ms: its successors are answered first.
    fake = harness.fake(uplinks="ack", capabilities=None,
                        fail_error="Failed to process uplink message. Rate limit reached",
                        answer_delay=lambda items: 0.06 if any(p.seq in bad for p in items) else 0.02)
    app = harness.edge(fake, EDGE_CLOUD_BATCH_SIZE="1", EDGE_CLOUD_WINDOW="4",
                       EDGE_CLOUD_RETRY_INTERVAL_MS="150", EDGE_CLOUD_RETRY_MAX_RETRIES="2")
    fake.wait_for(lambda: sync_done(fake), what="sync acknowledged")
    device = make_device(app, "flaky-dev")
    wait_until(lambda: settled(app, 2), timeout=DEADLINE_S, what="the device's events acknowledged")
    bad.append(3)  # the first telemetry event (1 and 2: the device's), failed from its first send
    fake.fail_seqs = {3}
    seqs = post(app, device, [{"n": k} for k in range(40)])
    assert seqs[0] == 3
    fake.wait_for(lambda: len(fake.connects) >= 2 or fake.failed.count(seqs[0]) > 3,
                  what="a reconnect or a 4th send of the failing message", timeout=15)
    sends = [u for u in fake.uplinks if u.stream == 1 and seqs[0] in u.seqs]
    assert len(sends) == 3, f"sent {len(sends)} times on the first stream (1 + max_retries = 3)"
    assert len(fake.connects) >= 2
    gaps = [b.at - a.at for a, b in itertools.pairwise(sends)]
    assert gaps[0] >= 0.14 and gaps[1] >= 0.29, gaps  # backoff: 150 ms, then 300 ms
    assert all(len(u.seqs) == 1 for u in sends)  # resent alone, not with everything after it
    assert [e.seq for e in edge_events(app) if e.status is Status.DEAD] == []


# -- h. a long sync ------------------------------------------------------------------------------------


def test_a_silent_sync_times_out_and_a_sync_that_keeps_sending_is_not_cut(
        harness: Harness, monkeypatch: pytest.MonkeyPatch,
        log_records: list[dict[str, Any]]) -> None:
    """The wait for SyncCompletedMsg (3 s here) restarts on every downlink of the sync applied: a
    sync that sends nothing is cut after 3 s; a sync of 6 s sending every 0.3 s completes."""
    monkeypatch.setattr(connection, "SYNC_TIMEOUT_S", SYNC_TIMEOUT_S)
    fake = harness.fake(uplinks="ack", hold_sync=True)
    app = harness.edge(fake, CLOUD_RPC_TIMEOUT="500")
    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    asked = time.monotonic()
    fake.wait_for(lambda: len(fake.connects) >= 2, what="a reconnect after a silent sync")
    assert fake.connects[1].at - asked >= SYNC_TIMEOUT_S - 0.1
    [cut] = [r["message"] for r in log_records if "no sync completion" in r["message"]]
    assert ("no new downlink applied for 3.0s (0 downlinks received during the sync, 0 applied)"
            in cut), cut

    fake.wait_for(lambda: len(fake.sync_requests) >= 2, what="the second stream's sync request")
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < LONG_SYNC_S:
        msg = fake.send_downlink(edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id()))
        sent += 1
        fake.wait_for(lambda m=msg: fake.acks_for(m.downlinkMsgId), what="a sync downlink acked")
        time.sleep(0.3)  # the pace of a slow cloud, not a wait for anything
    assert link_state(app) == "SYNCING" and len(fake.connects) == 2
    fake.release_sync()
    wait_until(lambda: link_state(app) == "CONNECTED", timeout=DEADLINE_S, what="CONNECTED")
    assert len(fake.connects) == 2
    [done] = [r["message"] for r in log_records
              if r["message"].startswith("link SYNCING -> CONNECTED")]
    assert done.startswith(f"link SYNCING -> CONNECTED: sync completed ({sent + 1} downlinks in "), \
        done  # and the syncCompletedMsg
    assert len([r for r in log_records if r["message"].startswith("sync in progress")]) == 1


# -- i. a permanent error from a peer without retry hints --------------------------------------------


def test_thingsboard_like_permanent_error_dead_letters_one_device_while_the_others_flow(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    """One device's creation is refused with ThingsBoard's plain failure (no hint) every time:
    it goes out in a message with the other devices' creations (3 failures), then alone (3
    more), and is dead-lettered with the server's text; the other devices' events, held only
    while they shared its failed message, are all delivered meanwhile, without a reconnect;
    its own later events follow once it is dead-lettered."""
    error = "Device should be assigned to tenant!"
    fake = harness.fake(uplinks="ack", capabilities=None, hold_sync=True, fail_error=error)
    app = harness.edge(fake, EDGE_CLOUD_BATCH_SIZE="4", EDGE_CLOUD_WINDOW="4",
                       EDGE_CLOUD_RETRY_INTERVAL_MS="1000", EDGE_CLOUD_RETRY_MAX_RETRIES="1")
    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    good0, poison, good1 = (make_device(app, n) for n in ("good-0", "poison", "good-1"))
    added = {e.entity_id: e.seq for e in edge_events(app) if e.action == Action.ADDED}
    fake.fail_seqs = {added[poison.id]}
    for i, d in enumerate((good0, poison, good1)):
        post(app, d, [{"n": i * 10 + k} for k in range(3)])
    fake.release_sync()
    goods = {good0.id, good1.id}

    def good_done() -> bool:
        events = [e for e in edge_events(app) if e.entity_id in goods]
        return len(events) == 10 and all(e.status is Status.DEPLOYED for e in events)

    wait_until(good_done, timeout=DEADLINE_S, what="the good devices' events acknowledged")
    bad = [e for e in edge_events(app) if e.entity_id == poison.id]
    assert all(e.status is Status.PENDING for e in bad)  # still being isolated
    wait_until(lambda: settled(app, 15), timeout=DEADLINE_S, what="every event settled")

    dead = [(e.seq, e.error) for e in edge_events(app) if e.status is Status.DEAD]
    assert dead == [(added[poison.id], f"rejected by the cloud: {error}")]
    sends = [len(u.seqs) for u in fake.uplinks if added[poison.id] in u.seqs]
    assert len(sends) == 6 and sends[3:] == [1, 1, 1], sends  # 3 with others, then 3 alone
    assert len(fake.connects) == 1  # a permanent error never makes the link reconnect
    # ThingsBoard applies the rest of a failed message: at least once, in per-device order
    for i, d in enumerate((good0, poison, good1)):
        first: dict[int | None, Payload] = {}
        for p in fake.applied:
            if p.entity_id == d.id:
                first.setdefault(p.seq, p)
        actions = [p.action for p in first.values()]
        assert actions == ([] if d is poison else ["ADDED"]) + [
            "CREDENTIALS_UPDATED", *["TIMESERIES_UPDATED"] * 3], d.name
        assert [p.value for p in first.values() if p.action == "TIMESERIES_UPDATED"] == [
            {"n": i * 10 + k} for k in range(3)]
    [logged] = [r for r in log_records if "dead-lettered" in r["message"]
                and r["extra"].get("component") == "link"]
    assert logged["extra"]["seq"] == added[poison.id]
    assert logged["extra"]["entity_id"] == str(poison.id)
    assert metric_total(app.metrics.snapshot(), "edge_sync_dead_letters_total") == 1


def refused_downlink(downlink_id: int) -> edge_pb2.DownlinkMsg:
    """Credentials whose entity is not JSON: content the edge cannot apply, refused
    (success=false, not retryable) every time. (Credentials for a device the edge does not
    have are not refused: they are held until the device comes.)"""
    return edge_pb2.DownlinkMsg(downlinkMsgId=downlink_id, deviceCredentialsUpdateMsg=[
        edge_pb2.DeviceCredentialsUpdateMsg(entity='{"deviceId": ')])


def test_a_sync_redelivering_a_refused_downlink_times_out_one_applying_new_ones_completes(
        harness: Harness, monkeypatch: pytest.MonkeyPatch,
        log_records: list[dict[str, Any]]) -> None:
    """Only a downlink applied for the first time is progress: a cloud that redelivers one
    downlink the edge refuses, every 0.2 s for ever, gets the sync cut after 3 s; a cloud that
    does the same but also sends a new downlink every 0.3 s for 6 s gets its sync completed."""
    monkeypatch.setattr(connection, "SYNC_TIMEOUT_S", SYNC_TIMEOUT_S)
    fake = harness.fake(uplinks="ack", hold_sync=True)
    app = harness.edge(fake, CLOUD_RPC_TIMEOUT="500")
    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    refused = refused_downlink(fake.new_downlink_id())
    asked = time.monotonic()
    fake.redeliver(refused, every_s=0.2)
    fake.wait_for(lambda: len(fake.connects) >= 2, what="a reconnect after a sync making no progress")
    assert fake.connects[1].at - asked >= SYNC_TIMEOUT_S - 0.1

    def answers(stream: int, downlink_id: int) -> list[bool]:
        return [a.success for s, a in fake.downlink_acks if s == stream
                and a.downlinkMsgId == downlink_id]

    first = answers(1, refused.downlinkMsgId)
    # refused, again and again, within the 3 s (about 15 times; fewer when the machine is busy)
    assert len(first) >= 2 and not any(first), first
    assert {(a.errorMsg, a.retryable) for _, a in fake.downlink_acks
            if a.downlinkMsgId == refused.downlinkMsgId} == {
        ("deviceCredentialsUpdateMsg: entity is not JSON", False)}  # its content, every time
    [cut] = [r["message"] for r in log_records if "no sync completion" in r["message"]]
    assert "no new downlink applied for 3.0s" in cut and ", 0 applied)" in cut, cut

    fake.wait_for(lambda: len(fake.sync_requests) >= 2, what="the second stream's sync request")
    fake.redeliver(refused, every_s=0.2)
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < LONG_SYNC_S:
        msg = fake.send_downlink(edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id()))
        sent += 1
        fake.wait_for(lambda m=msg: fake.acks_for(m.downlinkMsgId), what="a sync downlink acked")
        time.sleep(0.3)  # the pace of a slow cloud, not a wait for anything
    assert link_state(app) == "SYNCING" and len(fake.connects) == 2
    fake.release_sync()
    wait_until(lambda: link_state(app) == "CONNECTED", timeout=DEADLINE_S, what="CONNECTED")
    assert len(fake.connects) == 2
    # refused all along the 6 s (about 30 times), not counted as progress
    assert len(answers(2, refused.downlinkMsgId)) >= 2
    assert not any(answers(2, refused.downlinkMsgId))


# -- j. ThingsBoard's late answers, and an event held behind a slow one ----------------------------


def test_thingsboard_like_late_answer_to_a_resent_message_settles_it_once(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    """The peer answers each message's first send after 600 ms, past the ack timeout (400 ms),
    and never answers a resend: each late answer settles its events (DEPLOYED, counted once),
    the unanswered resend is not resent again, and the link never reconnects."""
    seen: set[int | None] = set()

    def delay(items: list[Payload]) -> float | None:
        seqs = {p.seq for p in items}
        if seqs & seen:
            return None  # a resend: never answered
        seen.update(seqs)
        return 0.6

    fake = harness.fake(uplinks="ack", capabilities=None, answer_delay=delay)
    app = harness.edge(fake, EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS="400", EDGE_CLOUD_RETRY_MAX_RETRIES="1")
    fake.wait_for(lambda: sync_done(fake), what="sync acknowledged")
    device = make_device(app, "late-dev")
    [telemetry] = post(app, device, [{"n": 1}])
    wait_until(lambda: settled(app, 3), timeout=DEADLINE_S, what="every event acknowledged")

    events = edge_events(app)
    assert [(e.seq, e.status) for e in events] == [(s, Status.DEPLOYED) for s in (1, 2, telemetry)]
    # each seq deployed once
    assert metric_total(app.metrics.snapshot(), "edge_sync_events_total", outcome="acked") == 3
    # one send and one resend each (ThingsBoard applies both: at least once), then no more
    assert [[u.seqs for u in fake.uplinks].count([s]) for s in (1, 2, telemetry)] == [2, 2, 2]
    assert len(fake.uplinks) == 6 and len(fake.connects) == 1
    late = [r for r in log_records if "answered after it was resent" in r["message"]]
    assert [r["extra"]["first_seq"] for r in late] == [1, 2, telemetry]


def test_an_event_held_behind_a_slow_creation_does_not_keep_other_devices_waiting(
        harness: Harness) -> None:
    """Device "slow"'s creation is answered after 10 s and its credentials wait for that answer
    (held). Another device's telemetry committed meanwhile goes within the batch timeout, not
    after the slow answer."""
    def delay(items: list[Payload]) -> float:
        slow = any(p.action == "ADDED" and p.value["name"] == "slow" for p in items)
        return SLOW_ANSWER_S if slow else 0.0

    fake = harness.fake(uplinks="ack", capabilities=None, answer_delay=delay)
    app = harness.edge(fake)
    fake.wait_for(lambda: sync_done(fake), what="sync acknowledged")
    quick = make_device(app, "quick")
    wait_until(lambda: settled(app, 2), timeout=DEADLINE_S, what="quick's events acknowledged")
    make_device(app, "slow")
    fake.wait_for(lambda: len(fake.uplinks) == 3, what="slow's creation sent")
    time.sleep(0.3)  # past the batch timeout (50 ms): only slow's answer can free its credentials
    [seq] = post(app, quick, [{"n": 1}])
    # well before the slow answer can come (it is answered 10 s after it was sent)
    fake.wait_for(lambda: seq in fake.applied_seqs(), timeout=SLOW_ANSWER_S / 2,
                  what="quick's telemetry applied before slow's answer")
    [creation] = [u for u in fake.uplinks if u.seqs == [3]]
    assert creation.answer is None  # still unanswered
    wait_until(lambda: settled(app, 5), timeout=SLOW_ANSWER_S + DEADLINE_S,
               what="every event acknowledged")
