"""Relations from a ThingsBoard server (link/relation_requests.py): the DownlinkActor (real LMDB,
a real QueueActor) records the entities whose relations ThingsBoard Edge asks for in the
downlink's transaction and appends one RELATION_REQUEST event each once it commits; a full sync
of a ThingsBoard peer leaves the edge's relations alone; the reference cloud is asked nothing
and its full sync still removes the relations it did not send."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from edge_sync.actors.address import Address
from edge_sync.actors.messages import Append
from edge_sync.actors.queue_actor import QueueActor, QueuePolicy
from edge_sync.clock import SYSTEM_CLOCK
from edge_sync.common.wire import Owner
from edge_sync.link.downlink_actor import ApplyDownlink, DownlinkActor, FullSyncStarted
from edge_sync.link.event_payloads import event_payload
from edge_sync.link.relation_requests import (
    ClearQueuedRequests,
    RelationRequests,
    RelationRequestsAppended,
    to_ask,
)
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_keys import CHANGED, CREATED, UNCHANGED
from edge_sync.storage.records import Action, Lane, StoredEvent
from edge_sync.storage.relation_requests import RelationRequestBook
from edge_sync.supervisor import actor_child
from tests.helpers.wait import wait_until
from tests.unit.test_downlink_actor import (
    DEADLINE_S,
    Rig,
    asset_msg,
    device_msg,
    halves,
    sync_done,
)

OWNER = Owner(uuid.UUID(int=7))


class TbRig(Rig):
    """The DownlinkActor with a QueueActor to append its requests; ``queue_up`` False: the
    queue is down (every append is refused Unavailable, as Address does)."""

    def __init__(self, path: Path) -> None:
        self.queue_up = True
        self.queue_ref: pykka.ActorRef[Any] | None = None
        super().__init__(path)

    def start(self) -> None:
        if self.queue_up and self.queue_ref is None:
            self.queue_ref = QueueActor.start(lambda _reason: None, self.store,
                                              policy=QueuePolicy(purge_interval_s=3600),
                                              metrics=Metrics())
        queue = Address("queue", lambda: self.queue_ref if self.queue_up else None)
        self.child = actor_child(DownlinkActor, self.store, self.connection,
                                 metrics=self.metrics, tokens=self.tokens,
                                 notify=self.notified.append, version="9.9.9",
                                 tell_queue=queue.tell)(self.exits.append)

    def tb(self, msg: edge_pb2.DownlinkMsg, stream_id: int = 1) -> None:
        """A downlink from a ThingsBoard server, applied."""
        self.child.ref.tell(ApplyDownlink(stream_id, msg, peer_ordered=False))
        reply = wait_until(lambda: self._reply(), timeout=DEADLINE_S, what="the answer")
        assert reply.success, reply.error

    def reference(self, msg: edge_pb2.DownlinkMsg, stream_id: int = 1) -> None:
        assert self.apply(msg, stream_id).success

    def _reply(self) -> Any:
        assert not self.exits, f"the DownlinkActor exited: {self.exits[0]!r}"
        return None if self.replies.empty() else self.replies.get_nowait()

    def requests(self) -> list[StoredEvent]:
        with self.store.read() as txn:
            return [e for e in EventLog(self.store).iter_events(txn)
                    if e.action == Action.RELATION_REQUEST]

    def recorded(self) -> list[tuple[str, uuid.UUID]]:
        with self.store.read() as txn:
            return [(w.entity_type, w.entity_id)
                    for w in RelationRequestBook(self.store).wanted(txn)]

    def relations(self) -> list[tuple[str, str, str]]:
        with self.store.read() as txn:
            return sorted((r["from"]["id"], r["type"], r["to"]["id"])
                          for e in self.graph.entities(txn, entity_type="ASSET")
                          for r in self.graph.relations(txn, e.id) if r["from"]["id"] == str(e.id))

    def stop_queue(self) -> None:
        if self.queue_ref is not None:
            self.queue_ref.stop()
            self.queue_ref = None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[TbRig]:
    r = TbRig(tmp_path / "edge")
    yield r
    if r.child.ref.is_alive():
        r.child.stop(timeout=DEADLINE_S)
    r.stop_queue()
    r.collector.stop()
    r.store.close()


def relation_msg(dl_id: int, src: uuid.UUID, dst: uuid.UUID,
                 kind: int = edge_pb2.ENTITY_CREATED_RPC_MESSAGE) -> edge_pb2.DownlinkMsg:
    """A relationUpdateMsg as ThingsBoard's RelationEdgeProcessor makes one."""
    entity = {"from": {"entityType": "ASSET", "id": str(src)},
              "to": {"entityType": "ASSET", "id": str(dst)}, "type": "Contains",
              "typeGroup": "COMMON", "additionalInfo": None}
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, relationUpdateMsg=[
        edge_pb2.RelationUpdateMsg(msgType=kind, entity=json.dumps(entity))])


def customer_msg(dl_id: int, customer: uuid.UUID, title: str,
                 kind: int = edge_pb2.ENTITY_CREATED_RPC_MESSAGE) -> edge_pb2.DownlinkMsg:
    msb, lsb = halves(customer)
    entity = {"id": {"entityType": "CUSTOMER", "id": str(customer)}, "title": title}
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, customerUpdateMsg=[
        edge_pb2.CustomerUpdateMsg(msgType=kind, idMSB=msb, idLSB=lsb, entity=json.dumps(entity))])


def appended(rig: TbRig, n: int) -> list[StoredEvent]:
    """The RELATION_REQUEST events, once there are ``n`` of them and nothing is recorded any
    more. The DownlinkActor answers a downlink once its transaction (which records the
    requests) commits; the events are appended after that, by the QueueActor: a test reads
    them only through this wait."""
    wait_until(lambda: len(rig.requests()) >= n and not rig.recorded(), timeout=DEADLINE_S,
               what=f"{n} relation requests appended",
               show=lambda: (rig.requests(), rig.recorded()))
    return rig.requests()


def asked(rig: TbRig, n: int) -> list[tuple[str, uuid.UUID]]:
    """The (type, entity) of the RELATION_REQUEST events, once there are ``n`` of them and
    nothing is recorded any more."""
    return [(e.entity_type, e.entity_id) for e in appended(rig, n)]


# -- which entities -----------------------------------------------------------------------------


def test_what_thingsboard_edge_asks_for() -> None:
    ids = [uuid.UUID(int=i) for i in range(10)]
    saved = [("DEVICE", ids[0], CREATED), ("DEVICE", ids[1], CHANGED),
             ("CUSTOMER", ids[2], CHANGED), ("USER", ids[3], CHANGED),
             ("ASSET", ids[4], UNCHANGED), ("DEVICE_PROFILE", ids[5], CREATED),
             ("RULE_CHAIN", ids[6], CREATED), ("TENANT", ids[7], CREATED),
             ("ENTITY_VIEW", ids[8], CREATED), ("DASHBOARD", ids[9], CREATED)]
    assert to_ask(saved, full_sync=False) == [
        ("DEVICE", ids[0]), ("CUSTOMER", ids[2]), ("USER", ids[3]), ("TENANT", ids[7]),
        ("ENTITY_VIEW", ids[8]), ("DASHBOARD", ids[9])]
    # a full sync: every such entity it sends, changed or not
    assert to_ask(saved, full_sync=True) == [
        ("DEVICE", ids[0]), ("DEVICE", ids[1]), ("CUSTOMER", ids[2]), ("USER", ids[3]),
        ("ASSET", ids[4]), ("TENANT", ids[7]), ("ENTITY_VIEW", ids[8]), ("DASHBOARD", ids[9])]


def test_a_relation_request_is_a_relation_request_msg_in_the_normal_lane(rig: TbRig) -> None:
    device = uuid.uuid4()
    rig.tb(device_msg(1, device, "pump-1"))
    (event,) = appended(rig, 1)
    assert (event.type, event.entity_type, event.entity_id, event.lane) == (
        "DEVICE", "DEVICE", device, Lane.NORMAL)
    msb, lsb = halves(device)
    assert event_payload(event, OWNER) == ("relationRequestMsg", edge_pb2.RelationRequestMsg(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE", edgeSeqId=event.seq))


def test_an_entity_recorded_again_while_its_request_is_appended_is_asked_for_again(
        tmp_path: Path) -> None:
    """RelationRequests alone (real LMDB, the append and the actor's mailbox captured)."""
    store = LmdbStore(tmp_path / "edge", initial_map_mb=8, max_size_mb=64)
    appends: list[Append] = []
    mailbox: list[object] = []
    requests = RelationRequests(store, SYSTEM_CLOCK, append=appends.append,
                                tell_self=mailbox.append)
    book = RelationRequestBook(store)
    customer = uuid.uuid4()
    try:
        def save(result: str) -> None:
            store.write(lambda txn: requests.record(txn, [("CUSTOMER", customer, result)],
                                                    full_sync=False))
            requests.send()

        def commit(append: Append, first_seq: int) -> None:
            assert append.reply is not None
            append.reply.set_result(range(first_seq, first_seq + len(append.events)))
            for message in mailbox:
                if isinstance(message, RelationRequestsAppended):
                    requests.appended(message)
            if any(isinstance(m, ClearQueuedRequests) for m in mailbox):
                requests.clear()
            mailbox.clear()

        def recorded() -> list[uuid.UUID]:
            with store.read() as txn:
                return [w.entity_id for w in book.wanted(txn)]

        save(CREATED)
        save(CHANGED)  # changed again before the first request is in the log
        assert [[e.entity_id for e in a.events] for a in appends] == [[customer], [customer]]
        requests.send(everything=True)  # both in flight: nothing more
        assert len(appends) == 2
        commit(appends[0], 1)
        assert recorded() == [customer]  # the second recording stays until its own commit
        requests.send(everything=True)
        assert len(appends) == 2
        commit(appends[1], 2)
        assert recorded() == []
        requests.send(everything=True)
        assert len(appends) == 2
    finally:
        store.close()


# -- asking ---------------------------------------------------------------------------------------


def test_thingsboard_downlinks_ask_for_the_relations_of_what_they_create(rig: TbRig) -> None:
    a, b, customer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rig.tb(asset_msg(1, a, "a"))
    assert asked(rig, 1) == [("ASSET", a)]
    rig.tb(asset_msg(2, a, "a2", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE))  # an update: no
    rig.tb(customer_msg(3, customer, "Acme"))
    rig.tb(customer_msg(4, customer, "Acme Inc", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE))
    rig.tb(asset_msg(5, b, "b"))
    assert asked(rig, 4) == [("ASSET", a), ("CUSTOMER", customer), ("CUSTOMER", customer),
                             ("ASSET", b)]
    rig.tb(asset_msg(6, b, "b"))  # unchanged outside a full sync: nothing
    rig.tb(sync_done(7))  # an incremental sync's completion: nothing either
    assert asked(rig, 4) == [("ASSET", a), ("CUSTOMER", customer), ("CUSTOMER", customer),
                             ("ASSET", b)]


def test_the_reference_cloud_is_asked_nothing(rig: TbRig) -> None:
    rig.reference(asset_msg(1, uuid.uuid4(), "a"))
    rig.reference(customer_msg(2, uuid.uuid4(), "Acme"))
    rig.reference(sync_done(3))
    rig.tb(asset_msg(4, (last := uuid.uuid4()), "z"))  # the next request has the next seq
    assert asked(rig, 1) == [("ASSET", last)]


def test_requests_the_queue_refused_stay_recorded_and_are_appended_at_the_next_start(
        rig: TbRig) -> None:
    a = uuid.uuid4()
    rig.child.stop(timeout=DEADLINE_S)
    rig.stop_queue()
    rig.queue_up = False
    rig.start()
    rig.tb(asset_msg(1, a, "a"))  # committed; its request refused: the queue is down
    wait_until(lambda: rig.recorded() == [("ASSET", a)], timeout=DEADLINE_S,
               what="the request recorded")
    assert rig.requests() == []
    rig.child.stop(timeout=DEADLINE_S)
    rig.queue_up = True
    rig.start()  # a new process would: what is recorded is appended
    assert asked(rig, 1) == [("ASSET", a)]


# -- full sync -----------------------------------------------------------------------------------


def test_a_thingsboard_full_sync_keeps_the_relations_and_asks_for_them_again(rig: TbRig) -> None:
    a, b, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rig.tb(asset_msg(1, a, "a"))
    rig.tb(asset_msg(2, b, "b"))
    rig.tb(asset_msg(3, gone, "gone"))
    rig.tb(relation_msg(4, a, b))  # the answer to a request
    rig.tb(relation_msg(5, gone, a))
    assert asked(rig, 3) == [("ASSET", a), ("ASSET", b), ("ASSET", gone)]
    rig.child.ref.tell(FullSyncStarted(1, "test"))
    rig.tb(asset_msg(10, a, "a"))  # unchanged, and no relation in the sync
    rig.tb(asset_msg(11, b, "b"))
    rig.tb(sync_done(12))
    # the relation between what is still on the edge stays; gone's went with it
    assert rig.relations() == [(str(a), "Contains", str(b))]
    assert asked(rig, 5)[3:] == [("ASSET", a), ("ASSET", b)]


def test_the_reference_clouds_full_sync_still_removes_the_relations_it_did_not_send(
        rig: TbRig) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for i, asset in enumerate((a, b, c), start=1):
        rig.reference(asset_msg(i, asset, f"asset-{i}"))
    rig.reference(relation_msg(4, a, b))
    rig.reference(relation_msg(5, a, c))
    rig.child.ref.tell(FullSyncStarted(1, "test"))
    for i, asset in enumerate((a, b, c), start=10):
        rig.reference(asset_msg(i, asset, f"asset-{i - 9}"))
    rig.reference(relation_msg(20, a, b))
    rig.reference(sync_done(21))
    assert rig.relations() == [(str(a), "Contains", str(b))]
    # nothing recorded in any of those transactions (a request is recorded until its event is
    # in the log), and no event: nothing was asked, and nothing is still to be appended
    assert rig.recorded() == []
    assert rig.requests() == []
