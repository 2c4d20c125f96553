"""A QoS 1 publish storm against a real `edge-sync run`: one real MQTT client (paho-mqtt, through
tests.helpers.mqtt_device.MqttDevice) per device, each on its own thread, each keeping a window
of QoS 1 telemetry publishes `{"v": n}` in flight (n counting up per device), and reconnecting
(a new connection) whenever the agent goes away, until told to stop.

What a client does across connections, the way a device with a clean session does:

- A value whose PUBACK came is never published again.
- A value published on a connection that ended before its PUBACK came is *not* published again
  either: it is recorded as `maybe` (it may have been committed before the connection ended)
  and the client goes on with the next value. MQTT 3.1.1 QoS 1 is at least once, and the edge
  does not deduplicate across connections (a clean session keeps no packet ids), so a resend of
  a publish committed just before a kill would rightly be stored twice; by not resending, the
  storm can demand more of the edge: an acknowledged value exactly once, any other at most once.
- On each connection the PUBACKs must come in the order of the publishes (MQTT 3.1.1 §4.6);
  a client that sees otherwise fails the storm.

`LogCursor` checks the agent's event log after each kill against what the clients saw in that
run (only the events added since the previous check are read), and `check_storm_log` checks the
whole log at the end. Both call an acknowledged value lost, duplicated or out of order at once.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, StoredEvent
from tests.helpers.agent import Agent, read_counts, read_log
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.wait import wait_until

__all__ = ["LogCursor", "Progress", "Storm", "StormClient", "check_storm_log"]

CONNECT_TIMEOUT_S = 10.0
"""How long a client waits for CONNACK once its TCP connection is accepted."""
RETRY_S = 0.05
"""The pause between two connection attempts while the agent is down."""
NOTICE_S = 0.05
"""How often a client with a full window looks whether its connection has ended."""
DRAIN_S = 20.0
"""How long a client that was told to stop waits for the PUBACKs of what it has in flight."""


class Progress:
    """What every client did, for the controller to wait on: one condition, notified on each
    PUBACK, each CONNACK and each connection's end."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.acks = 0
        self.connected = 0
        self.ended = 0
        self.failed = 0
        self.busy = 0  # clients between the start of a connection attempt and its accounting
        self.held = False  # while True no client starts a connection attempt

    def add(self, *, acks: int = 0, connected: int = 0, ended: int = 0, failed: int = 0,
            busy: int = 0) -> None:
        with self.cond:
            self.acks += acks
            self.connected += connected
            self.ended += ended
            self.failed += failed
            self.busy += busy
            self.cond.notify_all()


@dataclass
class Connection:
    """One connection of a client: its publishes in order, (packet id, value)."""

    dev: MqttDevice
    sent: list[tuple[int, int]] = field(default_factory=list)
    acks: int = 0


class StormClient(threading.Thread):
    """One device's client. Its lists are appended by its own thread only, when a connection
    has ended (read them once the controller saw that connection end)."""

    def __init__(self, name: str, device_id: uuid.UUID, token: str, port: int, *, window: int,
                 progress: Progress) -> None:
        super().__init__(name=f"storm-{name}", daemon=True)
        self.device = name
        self.device_id = device_id
        self.token = token
        self.port = port
        self.window = window
        self.progress = progress
        self.acked: list[int] = []  # values PUBACKed, in publishing order
        self.maybe: list[int] = []  # values published on a connection that ended without PUBACK
        self.next_value = 0
        self.connections = 0  # connections that got CONNACK 0
        self.ended = 0  # of them, ended and accounted (acked / maybe updated)
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stopping = False

    # -- the controller's side -------------------------------------------------------------------

    def stop(self) -> None:
        """Publish no more; the current connection's window is drained (every publish in it
        acknowledged), then the client disconnects and the thread ends."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        with self.progress.cond:
            self.progress.cond.notify_all()

    # -- the client's thread ---------------------------------------------------------------------

    def run(self) -> None:
        p = self.progress
        try:
            while True:
                # busy from before the TCP connect until the connection is accounted for: with
                # attempts held and no client busy, no connection can appear or end, nor any
                # list change
                with p.cond:
                    p.cond.wait_for(lambda: self._stopping or not p.held)
                    if self._stopping:
                        return
                    p.busy += 1
                    p.cond.notify_all()
                try:
                    dev = self._connect()
                    if dev is not None:
                        self._serve(Connection(dev))
                finally:
                    self.progress.add(busy=-1)
                if dev is None:
                    with self._cond:  # no CONNACK (refused, or closed before it): again, soon
                        self._cond.wait_for(lambda: self._stopping, RETRY_S)
        except BaseException as exc:  # reported by Storm.stop
            self.error = exc
            self.progress.add(failed=1)

    def _connect(self) -> MqttDevice | None:
        """A connection with CONNACK 0, or None (refused, or closed before CONNACK)."""
        dev = MqttDevice(self.port, self.token)
        try:
            reason = dev.connect(timeout=CONNECT_TIMEOUT_S)
        except OSError:  # refused: the agent is down or not listening yet
            reason = None
        if reason is not None and reason == 0:
            return dev
        dev.close()
        if reason is not None:
            raise AssertionError(f"{self.device}: CONNACK {reason} from the agent")
        return None

    def _serve(self, conn: Connection) -> None:
        dev = conn.dev

        def on_ack(_mid: int) -> None:  # paho's thread, PUBACKs in arrival order
            with self._cond:
                conn.acks += 1
                self._cond.notify_all()
            self.progress.add(acks=1)

        dev.on_ack = on_ack
        self.connections += 1
        self.progress.add(connected=1)
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: (self._stopping or dev.disconnected.is_set()
                                 or len(conn.sent) - conn.acks < self.window), NOTICE_S)
                    room = self.window - (len(conn.sent) - conn.acks)
                    stopping = self._stopping
                if dev.disconnected.is_set():
                    break
                if stopping:
                    with self._cond:
                        self._cond.wait_for(
                            lambda: conn.acks == len(conn.sent) or dev.disconnected.is_set(),
                            DRAIN_S)
                    break
                for _ in range(room):  # never while holding _cond: paho calls on_ack holding its lock
                    value = self.next_value
                    self.next_value += 1
                    info = dev.publish(TELEMETRY, {"v": value})
                    conn.sent.append((info.mid, value))
        finally:
            dev.close()  # after this no callback of this connection runs any more
            self._account(conn)

    def _account(self, conn: Connection) -> None:
        acked_mids = conn.dev.acked_ids()
        count = len(acked_mids)
        expected = [mid for mid, _ in conn.sent[:count]]
        if acked_mids != expected:
            raise AssertionError(f"{self.device}: PUBACKs out of publishing order on connection "
                                 f"{self.connections}: {acked_mids[:20]} vs {expected[:20]}")
        self.acked += [value for _, value in conn.sent[:count]]
        self.maybe += [value for _, value in conn.sent[count:]]
        self.ended += 1
        self.progress.add(ended=1)


class Storm:
    """The clients of a set of devices provisioned on the agent (through its admin API)."""

    def __init__(self, agent: Agent, devices: int, *, window: int, prefix: str = "storm") -> None:
        self.progress = Progress()
        self.clients: list[StormClient] = []
        for i in range(devices):
            name = f"{prefix}-{i}"
            device_id, token = agent.create_device(name)
            self.clients.append(StormClient(name, uuid.UUID(device_id), token, agent.mqtt_port,
                                            window=window, progress=self.progress))

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def wait(self, what: str, predicate: Callable[[Progress], bool], *, timeout: float) -> None:
        """Wait on the progress condition; fail at once when a client failed."""
        p = self.progress

        def check() -> bool:
            if p.failed:
                raise AssertionError(f"a storm client failed: {self.errors()}")
            return predicate(p)

        wait_until(check, timeout=timeout, condition=p.cond, what=what,
                   show=lambda: {"acks": p.acks, "connected": p.connected, "ended": p.ended,
                                 "busy": p.busy})

    def wait_connected(self, total: int, *, timeout: float) -> None:
        self.wait(f"{total} connections accepted in all", lambda p: p.connected >= total,
                  timeout=timeout)

    def hold(self, *, timeout: float) -> None:
        """No new connection attempts; wait until every client's connection (or attempt) has
        ended and is accounted for. After a kill: the lists are what the killed run saw."""
        with self.progress.cond:
            self.progress.held = True
        self.wait("every client's connection ended", lambda p: p.busy == 0, timeout=timeout)

    def release(self) -> None:
        """Clients connect again (they retry until the agent listens)."""
        with self.progress.cond:
            self.progress.held = False
            self.progress.cond.notify_all()

    def wait_acks(self, total: int, *, timeout: float) -> None:
        self.wait(f"{total} PUBACKs in all", lambda p: p.acks >= total, timeout=timeout)

    def stop(self, *, timeout: float) -> None:
        """Every client drains its window, disconnects and ends; re-raise what went wrong."""
        for client in self.clients:
            client.stop()
        for client in self.clients:
            client.join(timeout)
        assert not any(c.is_alive() for c in self.clients), "a storm client did not end"
        assert self.errors() == [], self.errors()

    def errors(self) -> list[str]:
        return [f"{c.device}: {c.error!r}" for c in self.clients if c.error is not None]

    def acked_total(self) -> int:
        return sum(len(c.acked) for c in self.clients)

    def maybe_total(self) -> int:
        return sum(len(c.maybe) for c in self.clients)


def telemetry_values(events: list[StoredEvent]) -> dict[uuid.UUID, list[int]]:
    """Per device, the `v` of its telemetry events in seq order."""
    out: dict[uuid.UUID, list[int]] = {}
    for e in events:
        if e.action == Action.TIMESERIES_UPDATED:
            out.setdefault(e.entity_id, []).append(e.body["values"]["v"])
    return out


@dataclass
class Marks:
    """How far into a client's acked and maybe lists the previous check went."""

    acked: int = 0
    maybe: int = 0


class LogCursor:
    """Checks, after each run of the agent, the events that run added to the log (call it with
    the agent dead and every client's connection ended):

    - the log grew by exactly the new events: seqs strictly increasing above every seq seen
      before, total = previous total + new, next_seq right after the last;
    - the new events are telemetry of the storm's devices only;
    - per device, the new values are strictly increasing and above every value logged before
      (in publishing order, none twice); every value acknowledged in that run is among them,
      and each of them was published in that run (acknowledged, or ended without PUBACK).

    Returns (acknowledged, present without PUBACK, absent without PUBACK) of that run."""

    def __init__(self, data_dir: Path, storm: Storm) -> None:
        self.data_dir = data_dir
        self.storm = storm
        self.max_seq = 0
        self.total = 0
        self.last_value: dict[uuid.UUID, int] = {}
        self.marks = {c.device_id: Marks() for c in storm.clients}

    def start_at_current_end(self) -> None:
        """Begin after what the log holds now (the devices' creation events)."""
        counts = read_counts(self.data_dir)
        self.total = counts.total
        self.max_seq = counts.next_seq - 1

    def check_run(self, label: str) -> tuple[int, int, int]:
        new = self._read_new()
        counts = read_counts(self.data_dir)
        seqs = [e.seq for e in new]
        assert seqs == sorted(set(seqs)), f"{label}: seqs not strictly increasing"
        assert not seqs or seqs[0] > self.max_seq, f"{label}: a new event got an old seq"
        assert counts.total == self.total + len(new), \
            f"{label}: the log holds {counts.total} events, {self.total} before + {len(new)} new"
        if seqs:
            assert counts.next_seq == seqs[-1] + 1, f"{label}: next_seq {counts.next_seq}"
        clients = {c.device_id: c for c in self.storm.clients}
        others = {(str(e.entity_id), e.action) for e in new
                  if e.entity_id not in clients or e.action != Action.TIMESERIES_UPDATED}
        assert others == set(), f"{label}: unexpected events {sorted(others)[:5]}"
        logged = telemetry_values(new)
        acked_n = present_n = absent_n = 0
        for device_id, client in clients.items():
            mark = self.marks[device_id]
            acked = client.acked[mark.acked:]
            maybe = client.maybe[mark.maybe:]
            values = logged.get(device_id, [])
            where = f"{label}, {client.device}"
            assert values == sorted(set(values)), f"{where}: duplicated or out of order: {values}"
            before = self.last_value.get(device_id, -1)
            assert not values or values[0] > before, \
                f"{where}: value {values[0]} logged after {before}"
            lost = sorted(set(acked) - set(values))
            assert lost == [], f"{where}: PUBACKed but not in the log: {lost[:20]}"
            never = sorted(set(values) - set(acked) - set(maybe))
            assert never == [], f"{where}: in the log but not published in this run: {never[:20]}"
            present = len(set(maybe) & set(values))
            assert len(values) == len(acked) + present, where
            acked_n += len(acked)
            present_n += present
            absent_n += len(maybe) - present
            if values:
                self.last_value[device_id] = values[-1]
            self.marks[device_id] = Marks(len(client.acked), len(client.maybe))
        self.total = counts.total
        if seqs:
            self.max_seq = seqs[-1]
        return acked_n, present_n, absent_n

    def _read_new(self) -> list[StoredEvent]:
        store = LmdbStore(self.data_dir, readonly=True)
        try:
            with store.read() as txn:
                return list(EventLog(store).iter_events(txn, after_seq=self.max_seq))
        finally:
            store.close()


def check_storm_log(data_dir: Path, storm: Storm) -> list[StoredEvent]:
    """The whole log against everything the clients saw (clients stopped, agent not writing):

    - seqs strictly increasing, the counts' total and next_seq agree with the events;
    - exactly the storm's devices, each with ADDED and CREDENTIALS_UPDATED first, then only
      telemetry `{"v": n}`;
    - per device: the values strictly increasing (in publishing order, none twice), every
      acknowledged value there exactly once, every other one at most once and only if it was
      published; the number of telemetry events exactly acknowledged + present unacknowledged.
    """
    events = read_log(data_dir)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "seqs not strictly increasing"
    counts = read_counts(data_dir)
    assert counts.total == len(events)
    assert counts.next_seq == seqs[-1] + 1
    clients = {c.device_id: c for c in storm.clients}
    by_device: dict[uuid.UUID, list[StoredEvent]] = {}
    for e in events:
        by_device.setdefault(e.entity_id, []).append(e)
    assert set(by_device) == set(clients), "events of entities that are not the storm's devices"
    telemetry = 0
    for device_id, device_events in by_device.items():
        client = clients[device_id]
        actions = [e.action for e in device_events]
        assert actions[:2] == [Action.ADDED, Action.CREDENTIALS_UPDATED], client.device
        assert set(actions[2:]) <= {Action.TIMESERIES_UPDATED}, client.device
        assert all(set(e.body["values"]) == {"v"} for e in device_events[2:]), client.device
        values = [e.body["values"]["v"] for e in device_events[2:]]
        assert values == sorted(set(values)), f"{client.device}: duplicated or out of order"
        times = Counter(values)
        assert [v for v in client.acked if times[v] != 1] == [], \
            f"{client.device}: acknowledged values not there exactly once"
        assert len(client.acked) == len(set(client.acked)), f"{client.device}: acked twice"
        assert set(client.acked).isdisjoint(client.maybe), client.device
        never = sorted(set(values) - set(client.acked) - set(client.maybe))
        assert never == [], f"{client.device}: values never published: {never[:20]}"
        assert len(values) == len(client.acked) + len(set(client.maybe) & set(values))
        telemetry += len(values)
    assert len(events) == 2 * len(clients) + telemetry
    return events
