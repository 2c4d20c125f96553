"""A full sync whose payloads arrive shuffled, dependants before what they depend on, to a real
`edge-sync run`: the edge holds what it cannot apply yet, says in its status what is held and
for what, applies each once its references arrive, and ends with exactly the cloud's graph and
nothing waiting.

The payloads are those of a real full sync: a population made in a real CloudStore
(tests/helpers/graph_rig.py populate: the plant of bench/graph_population.py), the sync's
entries as cloud/full_sync.entries yields them (everything but SyncCompletedMsg, in
ThingsBoard's order), each in a DownlinkMsg of its own. A
scripted cloud (tests/helpers/fake_peer.py FakeCloud, hold_sync) accepts the edge's connect and
full sync request, sends them in a seeded order built to put dependants first (the sync order
reversed, then locally shuffled), and only then its SyncCompletedMsg.

At a quarter, half way and twelve before the end, with every sent downlink acknowledged, the
edge's held entities are exactly those a model of "hold until every hard reference is on the
edge, release on arrival" predicts, each naming every reference it still lacks and none it
never lacked; the status shows the same (count, and the first ones with their wait). A held
entity naming a reference that has arrived meanwhile is reported at the end. At the end the edge's
graph equals the cloud's assignment entity by entity, relations as (from, to, type, group),
the devices' shared attributes too; the apply log has every entity after its references and
each once; nothing is held.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud import full_sync
from edge_sync.cloud.store import CloudStore
from edge_sync.common.entity_graph import BY_FIELD, Ref, provides, relation_key
from edge_sync.common.wire import uuid_of
from edge_sync.proto import edge_pb2
from edge_sync.storage.graph_store import WAITABLE, describe_relation, hard_references
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import edge_status
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.graph_rig import (
    ISSUE_PLANT,
    Extras,
    added_twice,
    cloud_view,
    edge_view,
    graph_diff,
    order_violations,
    populate,
    quiet_product_logs,
    scaled,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0
RK, SECRET = "rk-shuffled", "secret-shuffled-3b9e"
SEED = 20251205
SPEC = scaled(ISSUE_PLANT, 0.1)  # 200 devices, 20 assets, 30 relations, 2 dashboards, ...
_ID_FIELD = {"TENANT": "id", "RULE_CHAIN_METADATA": "ruleChainId",
             "DEVICE_CREDENTIALS": "deviceId", "USER_CREDENTIALS": "userId"}


@dataclass
class Item:
    """One payload of the full sync, in a DownlinkMsg of its own, and what the model needs."""

    list_field: str
    msg: edge_pb2.DownlinkMsg
    key: tuple[str, str]  # (entity type, id) or ("RELATION", describe_relation) or ("DATA", id)
    refs: list[Ref] = field(default_factory=list)  # what holds it back
    provides: list[Ref] = field(default_factory=list)


def _item(field_name: str, raw: bytes) -> Item:
    msg = edge_pb2.DownlinkMsg()
    getattr(msg, field_name).add().MergeFromString(raw)
    m = getattr(msg, field_name)[0]
    if field_name == "entityData":
        device = uuid_of(m.entityIdMSB, m.entityIdLSB)
        return Item(field_name, msg, ("DATA", str(device)))
    kind = BY_FIELD[field_name]
    body: dict[str, Any] = json.loads(m.entity)
    if kind.entity_type == "RELATION":
        found = relation_key(body)
        assert found is not None
        src, dst, rel_type, _ = found
        return Item(field_name, msg, ("RELATION", describe_relation(src, dst, rel_type)),
                    [src, dst])
    if kind.has_id_halves:
        entity_id = uuid_of(m.idMSB, m.idLSB)
    else:
        raw_id = body[_ID_FIELD[kind.entity_type]]
        entity_id = uuid.UUID(raw_id["id"] if isinstance(raw_id, dict) else raw_id)
    refs = [r for r in hard_references(kind.entity_type, body) if r.kind in WAITABLE]
    return Item(field_name, msg, (kind.entity_type, str(entity_id)), refs,
                provides(kind.entity_type, entity_id, body))


def shuffled(items: list[Item], rng: random.Random) -> list[Item]:
    """The sync order reversed (every dependant before what it depends on), then each item
    moved by up to 8 places at random: an order no cloud would send, dependants mostly first."""
    order = list(reversed(items))
    keyed = [(i + rng.uniform(-8, 8), n, item) for n, (i, item) in enumerate(enumerate(order))]
    return [item for _, _, item in sorted(keyed, key=lambda t: (t[0], t[1]))]


def one_of_two_arrived(order: list[Item], by_provided: dict[Ref, Item]) -> list[Item]:
    """The order with one dashboard of two tenant widget types moved half way, the first of
    its widget types right after it and the second last: from then on until the end, it waits
    for one reference while the other has arrived."""
    dashboard = next(i for i in order if i.key[0] == "DASHBOARD" and len(i.refs) == 2)
    first, second = (by_provided[r] for r in dashboard.refs)
    rest = [i for i in order if i not in (dashboard, first, second)]
    middle = len(rest) // 2
    return [*rest[:middle], dashboard, first, *rest[middle:], second]


class Model:
    """What the edge should hold after each payload: an entity or relation whose references
    are not all present is held (waiting for those missing then); an applied one provides its
    refs and releases the held ones whose references are now all present."""

    def __init__(self) -> None:
        self.present: set[Ref] = set()
        self.held: dict[tuple[str, str], tuple[Item, frozenset[Ref]]] = {}

    def feed(self, item: Item) -> None:
        if item.list_field == "entityData":
            return  # not an entity of the graph: never held
        missing = frozenset(r for r in item.refs if r not in self.present)
        if missing:
            self.held[item.key] = (item, missing)
            return
        self.held.pop(item.key, None)
        self._apply(item)

    def _apply(self, item: Item) -> None:
        queue = [item]
        while queue:
            done = queue.pop()
            self.present.update(done.provides)
            ready = [k for k, (held, _) in self.held.items()
                     if all(r in self.present for r in held.refs)]
            for k in ready:
                queue.append(self.held.pop(k)[0])


@pytest.fixture
def fake() -> Iterator[FakeCloud]:
    cloud = FakeCloud(uplinks="ack", hold_sync=True, random_ids=False).start()
    yield cloud
    cloud.stop()


def _held_now(data_dir: Path) -> dict[tuple[str, str], frozenset[Ref]]:
    held = edge_view(data_dir, with_log=False).held
    return {(h.entity_type, h.what if h.id is None else str(h.id)): frozenset(h.waiting_for)
            for h in held}


def test_a_shuffled_full_sync_converges_holding_dependants_until_their_references_come(
        tmp_path: Path, fake: FakeCloud, procs: Any) -> None:
    pop = populate(tmp_path / "cloud", routing_key=RK, secret=SECRET, spec=SPEC,
                   extras=Extras(asset_views=2, shared_attributes=10), seed=SEED)
    with quiet_product_logs():
        store = CloudStore(tmp_path / "cloud")
        try:
            edge_record = store.edge_by_id(pop.edge_id)
            assert edge_record is not None
            entries = list(full_sync.entries(store, edge_record, 1_764_921_600_000))
        finally:
            store.close()
    items = [_item(f, raw) for f, raw in entries]
    by_provided = {ref: item for item in items for ref in item.provides}
    order = one_of_two_arrived(shuffled(items, random.Random(SEED)), by_provided)
    sent_at = {id(item): n for n, item in enumerate(order)}
    early = [item for item in order
             if any(sent_at[id(by_provided[r])] > sent_at[id(item)]
                    for r in item.refs if r in by_provided)]
    assert len(early) > len(items) // 3, "the order must put many dependants first"
    kinds_early = {item.key[0] for item in early}
    assert {"DEVICE", "DEVICE_CREDENTIALS", "RELATION", "ENTITY_VIEW", "ASSET",
            "DASHBOARD", "RULE_CHAIN_METADATA"} <= kinds_early, kinds_early

    agent = procs(Agent(tmp_path / "edge", env={
        "CLOUD_ROUTING_KEY": RK, "CLOUD_ROUTING_SECRET": SECRET, "CLOUD_RPC_HOST": "127.0.0.1",
        "CLOUD_RPC_PORT": str(fake.port), "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
        "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000"}))
    agent.start()
    fake.wait_for(lambda: fake.sync_requests, timeout=DEADLINE_S, what="the edge's sync request")
    assert fake.sync_requests[0][1] is True  # a new store asks for a full sync

    model = Model()
    sent: list[int] = []
    held_kinds: set[str] = set()
    stale: list[str] = []
    partly: list[tuple[str, str]] = []

    def send(item: Item) -> None:
        msg = edge_pb2.DownlinkMsg()
        msg.CopyFrom(item.msg)
        msg.downlinkMsgId = fake.new_downlink_id()
        fake.send_downlink(msg)
        sent.append(msg.downlinkMsgId)
        model.feed(item)

    def all_acked() -> bool:
        return all(any(a.success for a in fake.acks_for(i)) for i in sent)

    def check_held(where: str) -> None:
        """With every sent downlink acknowledged: the edge holds exactly what the model holds,
        each waiting for what it lacked when held, and its status says so."""
        fake.wait_for(all_acked, timeout=DEADLINE_S, what=f"{where}: every downlink acknowledged")
        failed = [a for _, a in fake.downlink_acks if not a.success]
        assert failed == [], failed[:3]
        expected = {k: missing for k, (_, missing) in model.held.items()}
        held = _held_now(agent.data_dir)
        assert set(held) == set(expected), where
        status = edge_status(agent)["graph"]["held"]
        assert status["count"] == len(expected), where
        assert len(status["first"]) == min(len(expected), 20), where
        shown = {(h["entity_type"], h["what"] if h["id"] is None else h["id"]):
                 frozenset(h["waiting_for"]) for h in status["first"]}
        for k, waiting in held.items():
            lacking = frozenset(r for r in expected[k] if r not in model.present)
            # every reference still missing is named; nothing it never lacked is
            assert lacking and lacking <= waiting <= expected[k], (where, k, waiting, lacking)
            if k in shown:
                assert shown[k] == {str(r) for r in waiting}, (where, k)
            if lacking != expected[k]:
                partly.append(k)  # some of what it lacked has arrived, not all
            arrived = sorted(str(r) for r in waiting - lacking)
            if arrived:  # checked at the end, so the rest still runs
                stale.append(f"{where}: {k} still named as waiting for {arrived}, on the edge")
        held_kinds.update(kind for kind, _ in expected)

    checkpoints = {len(order) // 4: "a quarter", len(order) // 2: "half way",
                   len(order) - 12: "twelve before the end"}
    for n, item in enumerate(order, start=1):
        send(item)
        if n in checkpoints:
            check_held(checkpoints[n])
    check_held("all sent")
    assert partly, "no checkpoint saw an entity with part of its references arrived"
    assert model.held == {}
    assert {"DEVICE", "DEVICE_CREDENTIALS", "RELATION", "ENTITY_VIEW", "ASSET", "DASHBOARD",
            "RULE_CHAIN_METADATA"} <= held_kinds, held_kinds
    fake.release_sync()
    fake.wait_for(lambda: fake.sync_completed_ids and any(
        a.success for a in fake.acks_for(fake.sync_completed_ids[-1])),
        timeout=DEADLINE_S, what="the SyncCompletedMsg acknowledged")
    wait_until(lambda: edge_status(agent)["sync"]["last_full_ms"] is not None,
               timeout=DEADLINE_S, what="the full sync recorded as completed")
    failed = [a for _, a in fake.downlink_acks if not a.success]
    assert failed == [], failed[:3]

    cloud = cloud_view(tmp_path / "cloud", pop.edge_id)
    edge = edge_view(agent.data_dir)
    assert graph_diff(cloud, edge) == []
    assert edge.shared == cloud.shared == pop.shared
    assert edge.held == []
    status = edge_status(agent)
    assert status["graph"]["held"] == {"count": 0, "first": []}
    assert not status["sync"]["full_in_progress"]
    assert order_violations(edge.log, edge.entities) == []
    assert added_twice(edge.log) == {}
    added = {(e.entity_type, e.id) for e in edge.log if e.action == "ADDED"}
    assert len(added) == len(edge.entities) + len(edge.relations)
    assert [e for e in edge.log if e.action != "ADDED"] == []
    assert stale == []
