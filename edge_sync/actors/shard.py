"""Shard actors and the EntityRouter.

A fixed number of pykka shard actors host the entity actors: the router picks a shard by a
stable hash of the entity id (CRC-32, the same across runs and processes), the shard activates
the entity on first use and passivates it when idle (virtual actors, as in Orleans).

An entity with open server-side RPC requests, devices waiting on it or open rule windows is not
passivated. At start a shard loads the open RPC requests of its devices and the saved rule state
of its entities from the store (both survive a restart) and keeps one deadline timer armed for
the earliest deadline among its entities (an RPC's expirationTime, a rule window's close).
"""

from __future__ import annotations

import contextlib
import heapq
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import pykka
from loguru import logger

from edge_sync.actors.address import Address, fail_subscriber
from edge_sync.actors.deadline_timer import DeadlineTimer
from edge_sync.actors.entity import EntityActor, OrphanedWindows
from edge_sync.actors.messages import (
    ENTITY_COMMANDS,
    GRAPH_COMMANDS,
    Crash,
    EntityCommand,
    ExpireRpcs,
    PassivateIdle,
    ProvisionDevice,
    RpcQueued,
    RuleChainChanged,
)
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.ticker import Ticker
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.errors import InjectedFault, Restarting, Unavailable
from edge_sync.metrics import Metrics
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Status
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.supervisor import ExitReporter, SupervisedActor

FAILURE_LINES = uuid.UUID(int=0)
"""The deadline heap's key of the rule failure lines due (no entity has this id)."""


def shard_of(entity_id: uuid.UUID, shards: int) -> int:
    """Stable shard index of an entity."""
    return zlib.crc32(entity_id.bytes) % shards


def entity_of(command: EntityCommand) -> uuid.UUID:
    if isinstance(command, ProvisionDevice):
        return command.device.id
    if isinstance(command, GRAPH_COMMANDS):
        return command.entity_id
    if isinstance(command, ENTITY_COMMANDS):
        return command.device_id
    raise TypeError(f"not an entity command: {command!r}")


class ShardActor(SupervisedActor):
    def __init__(
        self,
        report_exit: ExitReporter,
        index: int,
        queue: Address,
        *,
        passivate_after_s: float,
        store: LmdbStore | None = None,
        shards: int = 1,
        clock: Clock = SYSTEM_CLOCK,
        metrics: Metrics | None = None,
        rules: Callable[[int], ShardRules] | None = None,
        address: Address | None = None,
    ) -> None:
        super().__init__(report_exit)
        self.index = index
        # this shard's address, whatever its incarnation: what a commit made durable reaches
        # the incarnation running when it lands (``_tell_self`` reaches only this one)
        self._address = address
        # this incarnation's view of the rule chain in force (its scripts compile on this thread)
        self._rules = rules(index) if rules is not None and store is not None else None
        self._queue = queue
        self._passivate_after = passivate_after_s
        self._store = store
        self._events = EventLog(store) if store is not None else None
        self._shards = shards
        self._clock = clock
        self._rpc_family = metrics.counter(
            "edge_sync_rpc_requests_total", "server-side RPC requests by the status they reached",
            ("status",)) if metrics is not None else None
        self._entities: dict[uuid.UUID, EntityActor] = {}
        self._ticker: Ticker | None = None
        self._timer: DeadlineTimer | None = None
        # one deadline per entity, its earliest: the heap holds (ms, entity) pairs, some stale
        # (superseded by an earlier one of the same entity; skipped when popped, and compacted
        # away when they outnumber the live ones), so it grows with the entities that have open
        # requests, not with the request rate times the expiration horizon
        self._deadlines: list[tuple[int, uuid.UUID]] = []
        self._scheduled: dict[uuid.UUID, int] = {}  # the live entry of each entity
        self._log = logger.bind(component="shard", shard=index)

    def on_start(self) -> None:
        """Actor thread: start the passivation timer and the RPC deadline timer, load the open
        RPC requests of this shard's devices."""
        ref = self.actor_ref
        interval = max(1.0, self._passivate_after / 2)
        self._ticker = Ticker(f"passivate-{self.index}", interval, lambda: ref.tell(PassivateIdle()))
        self._ticker.start()
        self._timer = DeadlineTimer(f"rpc-{self.index}", lambda: ref.tell(ExpireRpcs()))
        if self._store is not None:
            with self._store.read() as txn:
                pending = RpcStore(self._store).open_requests(txn)
            by_device: dict[uuid.UUID, list[Any]] = {}
            for r in pending:
                if shard_of(r.device_id, self._shards) == self.index:
                    by_device.setdefault(r.device_id, []).append(r)
            for device_id, requests in by_device.items():
                self._handle(RpcQueued(device_id, tuple(requests)))
            if by_device:
                self._log.bind(devices=len(by_device)).info(
                    "open RPC requests of {} devices loaded", len(by_device))
            self._load_rule_states()

    def _load_rule_states(self, *, at_start: bool = True) -> None:
        """The entities of this shard with saved rule state are activated and bound to the
        chain in force (an entity active already keeps the state it has in memory): their open
        windows close on time (from the store: a kill -9 mid-window loses and repeats nothing),
        and those overdue (their deadline passed while the agent was down, or while no chain
        was in force) close now. At start one line says what was restored."""
        if self._rules is None:
            return
        mine = [eid for eid in self._rules.entities_with_state()
                if shard_of(eid, self._shards) == self.index]
        now = time.monotonic()
        now_ms = self._clock.now_ms()
        windows = held = overdue = overdue_held = 0
        orphans = OrphanedWindows()  # one line for the shard, each entity at DEBUG
        for entity_id in mine:
            entity = self._activate(entity_id, now)
            opened, kept, due, due_kept = entity.load_rules(now_ms, orphans)
            windows, held = windows + opened, held + kept
            overdue, overdue_held = overdue + due, overdue_held + due_kept
            after = entity.next_deadline()
            if after is not None and after <= now_ms:
                entity.expire_due()  # overdue: closed now, not on the timer's next turn
                after = entity.next_deadline()
            if after is not None:
                self._schedule(after, entity_id)
        orphans.log(self.index)
        self._schedule_failure_lines()  # windows closed now may have failed
        if mine and at_start:
            closed = (f"{overdue} overdue (their deadline passed while the agent was down): "
                      f"closed now" if self._rules.engine() is not None else
                      f"{overdue} overdue: they close when a rule chain is in force")
            self._log.bind(entities=len(mine), windows=windows, held_messages=held,
                           overdue=overdue, overdue_messages=overdue_held).info(
                "rule state of {} entities loaded: {} open rule windows ({} held messages), {}",
                len(mine), windows, held, closed)

    def on_stop(self) -> None:
        """Actor thread."""
        self._wind_down("stopping")

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        """Actor thread, after an unhandled exception: the entities (and who waits on them) are
        lost with this incarnation; its successor loads the open RPC requests again."""
        self._wind_down("restarting")

    @property
    def label(self) -> str:
        return f"shard-{self.index}"

    def refuse(self, message: Any, error: Unavailable) -> bool:
        """A poll in the inbox as the shard exits is answered too, not only a reply."""
        polled = fail_subscriber(getattr(message, "subscriber", None),
                                 Restarting(f"{error}; poll again"))
        return super().refuse(message, error) or polled

    def _wind_down(self, why: str) -> None:
        """Stop the timers, and answer every device waiting on an entity of this shard at once
        (503, "poll again"): nobody would wake them once this incarnation is gone."""
        if self._ticker:
            self._ticker.stop()
        if self._timer:
            self._timer.stop()
        error = Restarting(f"shard-{self.index} is {why}; poll again")
        told = sum(entity.abandon_waiters(error) for entity in self._entities.values())
        if told:
            self._log.bind(polls=told).warning("{} waiting polls answered: shard {}", told, why)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PassivateIdle):
            self._passivate(time.monotonic())
            return None
        if isinstance(message, ENTITY_COMMANDS):
            self._handle(message)
            return None
        if isinstance(message, ExpireRpcs):
            self._expire()
            return None
        if isinstance(message, RuleChainChanged):
            self._load_rule_states(at_start=False)
            return None
        if isinstance(message, Crash):
            raise InjectedFault(f"shard-{self.index}: {message.reason}")
        self._log.warning("shard: unknown message {!r}", type(message).__name__)
        return None

    def _handle(self, message: EntityCommand) -> None:
        now = time.monotonic()
        entity_id = entity_of(message)
        entity = self._activate(entity_id, now)
        entity.handle(message, now)
        after = entity.next_deadline()
        if after is not None:
            self._schedule(after, entity_id)
        self._schedule_failure_lines()

    def _schedule_failure_lines(self) -> None:
        """Wake when a minute of rule failures not logged ends (their line is due), after
        anything that may have run the chain: a command, windows closed (on time, or overdue
        when loaded), the lines logged. O(1)."""
        if self._rules is not None:
            lines_due = self._rules.failure_lines_due()
            if lines_due is not None:
                self._schedule(lines_due, FAILURE_LINES)

    def _activate(self, entity_id: uuid.UUID, now: float) -> EntityActor:
        entity = self._entities.get(entity_id)
        if entity is None:
            entity = self._entities[entity_id] = EntityActor(
                entity_id, self._queue, now, now_ms=self._clock.now_ms, tell_self=self._tell_self,
                tell_shard=self._address.tell if self._address is not None else None,
                count_rpc=self._count_rpc if self._rpc_family is not None else None,
                event_pending=self._event_pending if self._store is not None else None,
                rules=self._rules)
            self._log.bind(entity=str(entity_id)).trace("entity activated")
        return entity

    def _tell_self(self, message: Any) -> None:
        """Any thread (an entity's commit callbacks, on the queue's thread): tell this
        incarnation about its own entities. Once it is gone the message is dropped: it was
        about the state this incarnation held in memory, and its successor reads the store.
        (Raised on, the callback stopped short of answering its sender, who then waited for
        its timeout although the change was committed.)"""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _event_pending(self, seq: int) -> bool:
        """Whether event ``seq`` still waits in the queue (purged or dead-lettered: no)."""
        assert self._store is not None and self._events is not None
        with self._store.read() as txn:
            event = self._events.get(txn, seq)
        return event is not None and event.status is Status.PENDING

    def _count_rpc(self, status: str) -> None:
        if self._rpc_family is not None:
            self._rpc_family.labels(status=status).inc()

    def _schedule(self, deadline_ms: int, entity_id: uuid.UUID) -> None:
        """Wake the entity at ``deadline_ms``, unless it is to be woken no later already (then
        it is woken then, and asked for its next deadline)."""
        current = self._scheduled.get(entity_id)
        if current is not None and current <= deadline_ms:
            return
        self._scheduled[entity_id] = deadline_ms
        heapq.heappush(self._deadlines, (deadline_ms, entity_id))
        if len(self._deadlines) > 2 * len(self._scheduled) + 64:
            self._deadlines = [(ms, eid) for eid, ms in self._scheduled.items()]
            heapq.heapify(self._deadlines)
        if self._timer is not None and self._deadlines[0][0] == deadline_ms:
            self._timer.arm(max(0.0, (deadline_ms - self._clock.now_ms()) / 1000))

    def _expire(self) -> None:
        """Entities whose deadline has come report their expired requests."""
        now_ms = self._clock.now_ms()
        due: list[uuid.UUID] = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            deadline_ms, entity_id = heapq.heappop(self._deadlines)
            if self._scheduled.get(entity_id) == deadline_ms:  # else superseded: stale
                del self._scheduled[entity_id]
                due.append(entity_id)
        for entity_id in due:
            if entity_id == FAILURE_LINES and self._rules is not None:
                self._rules.log_failure_lines(now_ms)
                continue
            entity = self._entities.get(entity_id)
            if entity is None:
                continue
            entity.expire_due()
            nxt = entity.next_deadline()
            if nxt is not None:
                self._schedule(nxt, entity_id)
        self._schedule_failure_lines()  # after the lines logged, or windows that failed
        if self._timer is not None and self._deadlines:
            self._timer.arm(max(0.0, (self._deadlines[0][0] - now_ms) / 1000))

    def _passivate(self, now: float) -> None:
        idle = [eid for eid, e in self._entities.items()
                if now - e.last_used > self._passivate_after and not e.busy]
        for eid in idle:
            del self._entities[eid]
        if idle:
            self._log.bind(count=len(idle), active=len(self._entities)).debug("entities passivated")


class EntityRouter:
    """Routes entity commands to their shard. Any thread."""

    def __init__(self, shards: Sequence[Address]) -> None:
        if not shards:
            raise ValueError("at least one shard")
        self._shards = tuple(shards)

    def tell(self, command: EntityCommand) -> None:
        self._shards[shard_of(entity_of(command), len(self._shards))].tell(command)
