"""Order per entity, end to end: a whole EdgeApp (4 shards, LMDB in tmp_path, ports 0), many
devices posting concurrently through the in-process API and the HTTP device API. For every
device the log must hold its creation first, then exactly its telemetry, in the order it was
sent, however the devices' requests interleave.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Device, Lane, Status, StoredEvent

DEADLINE = 10.0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_ACTORS_SHARDS": "4", "EDGE_MQTT_ENABLED": "false",
    })
    edge = EdgeApp(cfg).start()
    yield edge
    edge.stop(timeout=30)


def create_devices(app: EdgeApp, prefix: str, n: int) -> list[Device]:
    made = [app.service.create_device(f"{prefix}-{i}") for i in range(n)]
    for _, fut in made:
        assert len(fut.result(DEADLINE)) == 2
    return [d for d, _ in made]


def device_events(app: EdgeApp, device_id: uuid.UUID) -> list[StoredEvent]:
    with app.store.read() as txn:
        return list(EventLog(app.store).iter_events(txn, entity_id=device_id))


def assert_device_log(app: EdgeApp, device: Device, counters: list[int]) -> list[StoredEvent]:
    """The device's log: ADDED, CREDENTIALS_UPDATED, then one TIMESERIES_UPDATED per counter, in
    exactly this order (seq order), nothing else."""
    events = device_events(app, device.id)
    assert [e.action for e in events[:2]] == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    assert [e.lane for e in events[:2]] == [Lane.HIGH, Lane.HIGH]
    assert events[1].body["credentialsId"] == device.token
    data = events[2:]
    assert all(e.action == Action.TIMESERIES_UPDATED and e.status is Status.PENDING for e in data)
    assert [e.body["values"]["c"] for e in data] == counters
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    return data


def wait_all(futures: list[Future[Any]], deadline: float = DEADLINE) -> None:
    _done, not_done = concurrent.futures.wait(futures, timeout=deadline)
    assert not not_done, f"{len(not_done)} replies still open after {deadline}s"


def run_threads(n: int, target: Any) -> None:
    """Run target(index) on n threads started together; re-raise the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=DEADLINE)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"poster-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} still running"
    if errors:
        raise errors[0]


# -- in-process API ---------------------------------------------------------------------------------


def test_sequential_requests_per_device_from_8_threads_keep_order(app: EdgeApp) -> None:
    devices = create_devices(app, "seq", 50)
    per_device = 40
    mine = {t: devices[t::8] for t in range(8)}  # each device belongs to one thread
    seqs: dict[uuid.UUID, list[range]] = {d.id: [] for d in devices}

    def post(t: int) -> None:
        for c in range(per_device):
            # One request in flight per device, the thread's devices interleaved.
            round_ = [(d, app.service.post_telemetry(d.token, {"c": c})) for d in mine[t]]
            for d, fut in round_:
                seqs[d.id].append(fut.result(DEADLINE))

    run_threads(8, post)
    for d in devices:
        data = assert_device_log(app, d, list(range(per_device)))
        assert [range(e.seq, e.seq + 1) for e in data] == seqs[d.id]
    with app.store.read() as txn:
        counts = EventLog(app.store).counts(txn)
    assert (counts.total, counts.pending_high, counts.pending_normal) == (
        50 * (per_device + 2), 100, 50 * per_device)
    assert app.supervisor.restarts("queue") == 0


def test_pipelined_requests_per_device_keep_send_order(app: EdgeApp) -> None:
    """Each device fires all its requests without waiting: order then rests on one entity
    living on one shard with a FIFO mailbox, and on the queue keeping arrival order."""
    devices = create_devices(app, "pipe", 24)
    per_device = 40
    mine = {t: devices[t::6] for t in range(6)}
    futures: dict[uuid.UUID, list[Future[range]]] = {d.id: [] for d in devices}

    def post(t: int) -> None:
        for c in range(per_device):
            for d in mine[t]:
                futures[d.id].append(app.service.post_telemetry(d.token, {"c": c}))

    run_threads(6, post)
    wait_all([f for fs in futures.values() for f in fs])
    for d in devices:
        data = assert_device_log(app, d, list(range(per_device)))
        assert [f.result() for f in futures[d.id]] == [range(e.seq, e.seq + 1) for e in data]


_names = itertools.count()


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, bool, bool]]]:
    """(devices, [(device index, entries in the request, ts/values shape, wait for it)])."""
    n_devices = draw(st.integers(min_value=1, max_value=6))
    ops = draw(st.lists(
        st.tuples(st.integers(min_value=0, max_value=n_devices - 1),
                  st.integers(min_value=1, max_value=6), st.booleans(), st.booleans()),
        min_size=1, max_size=40,
    ))
    return n_devices, ops


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_random_interleavings_and_list_bodies_keep_per_device_order(
    app: EdgeApp, scenario: tuple[int, list[tuple[int, int, bool, bool]]]
) -> None:
    n_devices, ops = scenario
    devices = create_devices(app, f"hyp{next(_names)}", n_devices)  # fresh devices per example
    next_counter = [0] * n_devices
    sent: list[tuple[int, list[int], Future[range]]] = []
    for index, size, with_ts, wait in ops:
        counters = list(range(next_counter[index], next_counter[index] + size))
        next_counter[index] += size
        body: Any = [{"ts": 1000 + c, "values": {"c": c}} if with_ts else {"c": c}
                     for c in counters]
        if size == 1 and not with_ts:
            body = body[0]  # the plain-object shape
        fut = app.service.post_telemetry(devices[index].token, body)
        sent.append((index, counters, fut))
        if wait:
            fut.result(DEADLINE)
    wait_all([f for _, _, f in sent])
    for index, d in enumerate(devices):
        data = assert_device_log(app, d, list(range(next_counter[index])))
        by_seq = {e.seq: e for e in data}
        for i, counters, fut in sent:
            if i != index:
                continue
            # One request is one atomic Append: consecutive seqs, its entries in body order.
            got = fut.result()
            assert len(got) == len(counters)
            assert [by_seq[s].body["values"]["c"] for s in got] == counters


# -- HTTP device API ------------------------------------------------------------------------------


def http_post(port: int, token: str, body: Any) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/{token}/telemetry", data=raw,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_http_device_api_keeps_per_device_order(app: EdgeApp) -> None:
    devices = create_devices(app, "http", 10)
    per_device = 20
    statuses: dict[uuid.UUID, list[int]] = {d.id: [] for d in devices}

    def post(i: int) -> None:
        d = devices[i]
        c = 0
        while c < per_device:
            if c % 5 == 4 and c + 1 < per_device:  # now and then two entries in one list body
                body: Any = [{"ts": 1, "values": {"c": c}}, {"c": c + 1}]
                c += 2
            else:
                body = {"c": c}
                c += 1
            status, _ = http_post(app.http_port, d.token, body)
            statuses[d.id].append(status)

    run_threads(len(devices), post)
    for d in devices:
        assert set(statuses[d.id]) == {200}
        assert_device_log(app, d, list(range(per_device)))
    assert app.metrics.snapshot()['edge_sync_device_requests_total{protocol="http",code="200"}'] == sum(
        len(s) for s in statuses.values())


def test_http_rejections_write_nothing(app: EdgeApp) -> None:
    (d,) = create_devices(app, "rej", 1)
    assert http_post(app.http_port, d.token, {"c": 0})[0] == 200
    status, body = http_post(app.http_port, d.token, b"{not json")
    assert status == 400 and json.loads(body)["error"] == "bad request"
    status, body = http_post(app.http_port, "no-such-token", {"c": 1})
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    status, body = http_post(app.http_port, d.token, b'{"c": NaN}')
    assert status == 400 and "not a finite number" in json.loads(body)["message"]
    assert http_post(app.http_port, d.token, {"c": 1})[0] == 200
    assert_device_log(app, d, [0, 1])


def test_http_large_valid_body_under_the_limit_is_accepted(app: EdgeApp) -> None:
    """A body arriving in many TCP segments is read to its end, not cut at the first one."""
    (d,) = create_devices(app, "big", 1)
    body = json.dumps({"c": 0, "blob": "z" * 900_000}).encode()
    assert len(body) < app.cfg.http.max_body_bytes
    statuses = [http_post(app.http_port, d.token, body)[0] for _ in range(5)]
    assert statuses == [200] * 5
    events = device_events(app, d.id)[2:]
    assert [len(e.body["values"]["blob"]) for e in events] == [900_000] * 5
    status, reply = http_post(app.http_port, d.token, json.dumps({"blob": "z" * 1_100_000}).encode())
    assert status == 413 and json.loads(reply)["error"] == "payload too large"
    assert len(device_events(app, d.id)) == 7
