"""Erlang/OTP-style supervision for pykka actors and thread-backed services.

This module owns the rules of the supervision tree: child specs, restart types (permanent,
transient, temporary), the three restart strategies, restart intensity and escalation. It does
not own what the children do, and it never configures loguru sinks.

A child is started by its spec's ``start`` function, which receives an ``ExitReporter`` and
returns a handle that can stop it. The child calls its reporter exactly once when it exits on
its own: with the exception after an abnormal exit, with ``None`` after a normal one. Every
report names the incarnation it came from and goes into one queue, so all supervision decisions
are taken one at a time on the supervisor's own thread; reports from incarnations that were
already replaced or are being stopped are ignored.

When restarts happen more often than the ``Intensity`` allows, the supervisor gives up: it
stops every child in reverse start order, sets ``exit_code`` 3 and reports ``SupervisorGaveUp``
to its own reporter, so a parent supervisor restarts it (escalation) or the entry point exits
non-zero and systemd or supervisord restarts the process.

``SupervisedActor`` and ``actor_child`` connect pykka actors to this: pykka has no links, so
the actor's hooks report its exit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import functools
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import pykka
from loguru import logger
from pykka.messages import _ActorStop  # private, no public equivalent: see _is_stop_request

from edge_sync.errors import Restarting, SupervisorGaveUp, Unavailable

__all__ = [
    "Child",
    "ChildSpec",
    "ExitReporter",
    "Intensity",
    "Restart",
    "Strategy",
    "SupervisedActor",
    "Supervisor",
    "SupervisorGaveUp",
    "actor_child",
]

# the start gates of the actors a Supervisor's _start_slot creates (on its thread), one per slot
# on the path from the root: they are constructed on the thread that calls the spec's start, so
# SupervisedActor.__init__ finds them here
_starting = threading.local()

_EXIT_STOPPED = 0
_EXIT_GAVE_UP = 3

ExitReporter: TypeAlias = Callable[[BaseException | None], None]
"""How a child says it exited on its own: the exception, or None for a normal exit."""


class Restart(enum.Enum):
    """When a child that exited is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit (an exception)
    TEMPORARY = "temporary"  # never; the child is removed


class Strategy(enum.Enum):
    """Which children are restarted when one of them exits."""

    ONE_FOR_ONE = "one_for_one"  # only that child
    REST_FOR_ONE = "rest_for_one"  # that child and the ones started after it
    ONE_FOR_ALL = "one_for_all"  # all children


class Child(Protocol):
    """A running incarnation of a child, as its supervisor sees it."""

    def stop(self, *, timeout: float) -> None:
        """Stop the child and wait up to timeout seconds. Called on the supervisor's thread."""
        ...


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child and what to do when it exits."""

    id: str
    start: Callable[[ExitReporter], Child]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0


@dataclass(frozen=True)
class Intensity:
    """More than max_restarts restarts within within_seconds make the supervisor give up."""

    max_restarts: int = 5
    within_seconds: float = 30.0


@dataclass(frozen=True)
class _Exited:
    """A child incarnation ended on its own (reason None: a normal exit)."""

    child_id: str
    incarnation: int
    reason: BaseException | None


@dataclass(frozen=True)
class _StopRequested:
    """Supervisor.stop() was called."""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"
    GAVE_UP = "gave up"


_TRANSITIONS: dict[_State, frozenset[_State]] = {
    _State.NEW: frozenset({_State.RUNNING, _State.STOPPED}),
    _State.RUNNING: frozenset({_State.STOPPED, _State.GAVE_UP}),
    _State.STOPPED: frozenset(),
    _State.GAVE_UP: frozenset(),
}


@dataclass
class _Slot:
    """One child under supervision. incarnation 0 means no live incarnation: reports are stale."""

    spec: ChildSpec
    incarnation: int = 0
    handle: Child | None = None


class Supervisor:
    """Starts children, restarts them by strategy and gives up when they fail too often.

    A Supervisor is itself a Child, so a ChildSpec's start can return one (nested supervisors).
    Its decisions run on its own thread, which ends when it stops or gives up; like pykka's
    actor threads it is not a daemon, so the entry point stops the supervisor before exiting.
    """

    def __init__(
        self,
        name: str,
        specs: Sequence[ChildSpec],
        *,
        strategy: Strategy,
        intensity: Intensity,
        clock: Callable[[], float] = time.monotonic,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        """``on_restart``: called with the child's id after each restart of a child (the
        agent's ``edge_sync_supervisor_restarts_total{child}``), on the supervision thread."""
        ids = [spec.id for spec in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"supervisor {name}: duplicate child ids in {ids}")
        self.name = name
        self._strategy = strategy
        self._intensity = intensity
        self._clock = clock
        self._on_restart = on_restart
        self._log = logger.bind(supervisor=name)
        # Children in start order. Changed only by start() before the supervision thread
        # exists, then only on that thread; _lock makes handles safe to read from others.
        self._slots = [_Slot(spec) for spec in specs]
        self._restart_counts = dict.fromkeys(ids, 0)
        self._restart_times: deque[float] = deque()
        self._incarnations = itertools.count(1)
        self._inbox: queue.SimpleQueue[_Exited | _StopRequested] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._exit_code: int | None = None
        self._done = threading.Event()
        self._report_exit: ExitReporter | None = None
        self._thread: threading.Thread | None = None

    # -- public surface (any thread) ------------------------------------------------------------

    def start(self, report_exit: ExitReporter | None = None) -> Supervisor:
        """Start the children in spec order, then the supervision thread. Runs on the caller's
        thread. If a child's start raises, the children already started are stopped in reverse
        order and the exception propagates; the supervisor is then stopped (exit_code None)."""
        with self._lock:
            self._set_state(_State.RUNNING)
        self._report_exit = report_exit
        for index, slot in enumerate(self._slots):
            try:
                self._start_slot(slot, restart=False)
            except Exception as exc:
                self._log.bind(child=slot.spec.id).error(
                    "{} failed to start: {!r}; stopping the children already started",
                    slot.spec.id,
                    exc,
                )
                slot.incarnation = 0
                # the children started wait in on_start for the parent's slot (a nested
                # supervisor): let them on, or each would answer its stop only at its timeout
                for gate in getattr(_starting, "gates", ()):
                    gate.set()
                for started in reversed(self._slots[:index]):
                    self._stop_slot(started)
                with self._lock:
                    self._set_state(_State.STOPPED)
                self._done.set()
                raise
        # Not a daemon, like pykka's actor threads: threads that a restart starts inherit that.
        self._thread = threading.Thread(target=self._run, name=f"supervisor-{self.name}")
        self._thread.start()
        self._log.info("supervisor {} running {} children", self.name, len(self._slots))
        return self

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop the children in reverse start order, each within its own shutdown_timeout, and
        wait up to timeout seconds for that. Idempotent; nothing is reported to report_exit.
        The children are stopped on the supervision thread; the caller only waits."""
        with self._lock:
            if self._state is _State.NEW:
                self._set_state(_State.STOPPED)
                self._exit_code = _EXIT_STOPPED
                self._done.set()
                return
            if self._state is not _State.RUNNING:
                return
        self._inbox.put(_StopRequested())
        if threading.current_thread() is self._thread:
            return
        if not self._done.wait(timeout):
            self._log.warning("supervisor {} still stopping after {}s", self.name, timeout)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the supervisor stopped or gave up; return exit_code (None on timeout)."""
        self._done.wait(timeout)
        return self.exit_code

    @property
    def exit_code(self) -> int | None:
        """0 after stop(), 3 after giving up, None while running (or after a failed start)."""
        with self._lock:
            return self._exit_code

    def child(self, child_id: str) -> Child | None:
        """The child's current incarnation, or None while it is not running."""
        with self._lock:
            return next((s.handle for s in self._slots if s.spec.id == child_id), None)

    def healthy(self) -> bool:
        """Running (neither stopped nor given up), its supervision thread alive, and every child
        has a live incarnation (a nested supervisor: healthy itself). False for the moment a
        child is being restarted. The service manager's watchdog is fed only while the root
        supervisor answers True (edge_sync.service_notify)."""
        with self._lock:
            if self._state is not _State.RUNNING:
                return False
            handles = [slot.handle for slot in self._slots]
        if self._thread is None or not self._thread.is_alive():
            return False
        return all(h is not None and (not isinstance(h, Supervisor) or h.healthy())
                   for h in handles)

    def restarts(self, child_id: str) -> int:
        """How many times the child was restarted (KeyError for an id not in the specs)."""
        with self._lock:
            return self._restart_counts[child_id]

    # -- supervision thread ---------------------------------------------------------------------

    def _run(self) -> None:
        """Take supervision decisions one at a time; runs on the supervision thread."""
        while True:
            event = self._inbox.get()
            if isinstance(event, _StopRequested):
                self._finish(_State.STOPPED, _EXIT_STOPPED)
                self._log.info("supervisor {} stopped", self.name)
                self._done.set()
                return
            if not self._on_exited(event):
                return

    def _on_exited(self, event: _Exited) -> bool:
        """Apply the child's restart type, intensity and strategy. False once it gave up."""
        slot = next((s for s in self._slots if s.spec.id == event.child_id), None)
        log = self._log.bind(child=event.child_id)
        if slot is None or slot.incarnation != event.incarnation:
            log.debug("ignored a report from stale incarnation {}", event.incarnation)
            return True
        slot.incarnation = 0
        with self._lock:
            slot.handle = None
        spec = slot.spec
        how = "normally" if event.reason is None else f"with {event.reason!r}"
        if spec.restart is Restart.TEMPORARY or (spec.restart is Restart.TRANSIENT and event.reason is None):
            with self._lock:
                self._slots.remove(slot)
            log.info("{} exited {}; not restarted ({})", spec.id, how, spec.restart.value)
            return True
        restarts = self._count_restart()
        if restarts > self._intensity.max_restarts:
            self._give_up(spec.id, restarts)
            return False
        log.warning(
            "{} exited {}; restarting ({}, restart {} within {}s)",
            spec.id,
            how,
            self._strategy.value,
            restarts,
            self._intensity.within_seconds,
        )
        self._restart(slot)
        return True

    def _count_restart(self) -> int:
        """Record a restart now; return how many fall within the intensity window."""
        now = self._clock()
        window = self._restart_times
        while window and now - window[0] >= self._intensity.within_seconds:
            window.popleft()
        window.append(now)
        return len(window)

    def _restart(self, failed: _Slot) -> None:
        """Stop the failed child's group in reverse order, then start it in order. A start that
        raises is queued as that incarnation's failure, so it counts towards intensity."""
        if self._strategy is Strategy.ONE_FOR_ONE:
            group = [failed]
        elif self._strategy is Strategy.REST_FOR_ONE:
            group = self._slots[self._slots.index(failed) :]
        else:
            group = list(self._slots)
        for slot in reversed(group):
            if slot is not failed:
                self._stop_slot(slot)
        for slot in group:
            try:
                self._start_slot(slot, restart=True)
            except Exception as exc:
                self._log.bind(child=slot.spec.id).warning("restart of {} failed: {!r}", slot.spec.id, exc)
                self._inbox.put(_Exited(slot.spec.id, slot.incarnation, exc))
                return

    def _give_up(self, child_id: str, restarts: int) -> None:
        """Stop everything, exit with code 3 and escalate to report_exit."""
        message = (
            f"supervisor {self.name} gave up: {child_id} failed, {restarts} restarts within "
            f"{self._intensity.within_seconds}s exceed the limit of {self._intensity.max_restarts}"
        )
        self._log.bind(child=child_id).error(message)
        self._finish(_State.GAVE_UP, _EXIT_GAVE_UP)
        if self._report_exit is not None:
            self._report_exit(SupervisorGaveUp(message))
        self._done.set()

    def _finish(self, state: _State, exit_code: int) -> None:
        """Stop every child in reverse start order and enter the final state."""
        for slot in reversed(self._slots):
            self._stop_slot(slot)
        with self._lock:
            self._set_state(state)
            self._exit_code = exit_code

    # -- helpers (supervision thread, or start() before it exists) -------------------------------

    def _start_slot(self, slot: _Slot, *, restart: bool) -> None:
        """Start a new incarnation of the slot's child; the spec's start may raise."""
        child_id = slot.spec.id
        incarnation = next(self._incarnations)
        slot.incarnation = incarnation

        def report_exit(reason: BaseException | None) -> None:
            """Queue this incarnation's exit; runs on the child's thread."""
            self._inbox.put(_Exited(child_id, incarnation, reason))

        # the actors this start creates run on_start only once the slot holds their handle
        # (SupervisedActor): what they tell at once may be answered through child(child_id).
        # A nested supervisor's actors wait for every slot on their path, its parent's too:
        # an Address resolves them from the root, and until the root's slot holds the nested
        # supervisor, what is told to them is refused; had they started, what they read at
        # start would miss what was written meanwhile (a downlink's RPC request, whose
        # notification was refused)
        gate, outer = threading.Event(), getattr(_starting, "gates", ())
        _starting.gates = (*outer, gate)
        try:
            handle = slot.spec.start(report_exit)
            with self._lock:
                slot.handle = handle
                if restart:
                    self._restart_counts[child_id] += 1
        finally:
            _starting.gates = outer
            gate.set()
        if restart and self._on_restart is not None:
            self._on_restart(child_id)
        self._log.bind(child=child_id).info("started {}", child_id)

    def _stop_slot(self, slot: _Slot) -> None:
        """Stop the slot's running incarnation, if any; its reports are stale from now on."""
        slot.incarnation = 0
        with self._lock:
            handle, slot.handle = slot.handle, None
        if handle is None:
            return
        log = self._log.bind(child=slot.spec.id)
        try:
            handle.stop(timeout=slot.spec.shutdown_timeout)
        except Exception as exc:
            log.warning("{} did not stop cleanly: {!r}", slot.spec.id, exc)
        else:
            log.info("stopped {}", slot.spec.id)

    def _set_state(self, new: _State) -> None:
        """Guarded state transition; the caller holds _lock."""
        if new not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"supervisor {self.name} cannot go from {self._state.value} to {new.value}")
        self._state = new


class SupervisedActor(pykka.ThreadingActor):
    """Base class for actors under a Supervisor.

    The actor reports its exit exactly once: the exception after an unhandled failure (in
    on_start, on_receive, on_stop or on_failure), None after it stopped itself. Before an
    abnormal exit it logs the failure once and calls fail_pending_messages(). Before any exit
    its inbox is closed: what waits in it, and what is put in it later, is refused (its reply
    fails with Unavailable, ``refuse``), so no sender waits on a message nobody will read. A
    stop requested by the supervisor is not reported (actor_child filters it).

    Subclasses override on_start, on_stop and on_failure as with any pykka actor; calling
    super() is not needed, because __init_subclass__ wraps each override so the exit is still
    reported. on_failure also runs after a failed on_start (pykka itself runs no hook then), so
    an actor releases what its incarnation holds (timers, streams, channels) in on_stop and
    on_failure both, whatever point its start reached.
    """

    def __init__(self, report_exit: ExitReporter) -> None:
        super().__init__()
        self._report_exit = report_exit
        self._exit_reported = False
        # what a message put in the closed inbox is answered with (set as the inbox closes)
        self._refusal: Unavailable | None = None
        # started by a Supervisor: set once its slot (and each enclosing one) holds this
        # incarnation (_start_slot)
        self._registered: tuple[threading.Event, ...] = getattr(_starting, "gates", ())

    @property
    def label(self) -> str:
        """How the log lines and the errors of this actor name it (a subclass: its role)."""
        return type(self).__name__

    def _create_actor_inbox(self) -> _Inbox:  # type: ignore[override]
        """pykka's hook (its own: a static method): a closable inbox (_Inbox)."""
        return _Inbox(self._refuse_late)

    def on_start(self) -> None:
        """Runs on the actor's thread first; waits until the supervisor has the incarnation."""
        self._await_registration()

    def _await_registration(self) -> None:
        """An actor started by a Supervisor runs on_start only once the supervisor's slot holds
        it. on_start often reaches out at once (the link connects, and the downlink applied
        is answered to the link through the supervisor's child("connection")): before,
        on a loaded machine, such an answer could find no running child and be dropped.
        Under a nested supervisor it waits for its parent's slot too (_start_slot)."""
        for gate in self._registered:
            gate.wait()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, guard in _HOOK_GUARDS.items():
            hook = cls.__dict__.get(name)
            if hook is not None:
                setattr(cls, name, functools.wraps(hook)(guard(hook)))

    def on_stop(self) -> None:
        """Runs on the actor's thread as it stops; reports a normal exit."""
        self._exited(None)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Runs on the actor's thread after an unhandled exception, before the actor dies."""
        self._exited(exception_value)

    def fail_pending_messages(self, exc: BaseException) -> None:
        """After an abnormal exit: close the inbox and refuse what waits in it (``refuse``).

        Runs on the actor's thread, before it dies. Subclasses may extend it (calling super())
        to fail work they buffered themselves.
        """
        self._close_inbox(Restarting(f"{self.label} restarting: {exc}"), "failed")

    def refuse(self, message: Any, error: Unavailable) -> bool:
        """Answer a message this incarnation will not handle: its ``reply`` (a concurrent or
        pykka Future) fails with ``error``, unless it is done already. Whether a sender was
        waiting on it and is now answered (a timer tick or the actor's own flush has nobody
        waiting: not counted as refused). Subclasses extend it (calling super()) for other
        ways a sender waits (ShardActor: a device's poll)."""
        return _fail_future(getattr(message, "reply", None), error)

    def _close_inbox(self, error: Unavailable, how: str) -> None:
        """Close the inbox and refuse every message in it with ``error``; a message put in it
        from now on (its sender found the actor alive an instant before it stopped) is refused
        at once on the sender's thread. pykka itself answers only the asks left in an inbox
        (ActorDeadError); a told message's reply was left unanswered, and its sender waited
        for its own timeout. One line when messages were refused."""
        self._refusal = error
        inbox = self.actor_inbox
        pending = inbox.close() if isinstance(inbox, _Inbox) else []
        refused = sum(self._refuse_envelope(envelope, error) for envelope in pending)
        if refused:
            logger.bind(actor=self.label, messages=refused).warning(
                "{} {} with {} requests waiting in its inbox: answered Unavailable (HTTP 503, "
                "try again)", self.label, how, refused)

    def _refuse_late(self, envelope: Any) -> None:
        """A message put in the closed inbox; runs on its sender's thread."""
        self._refuse_envelope(envelope, self._refusal or Restarting(f"{self.label} stopped"))

    def _refuse_envelope(self, envelope: Any, error: Unavailable) -> bool:
        """Refuse one envelope; a stop request is answered as pykka answers it once the actor
        stopped (done). Whether a waiting sender was answered Unavailable."""
        if _is_stop_request(envelope.message):
            if envelope.reply_to is not None:
                with contextlib.suppress(queue.Full):  # pykka's "already set"
                    envelope.reply_to.set(None)
            return False
        refused = self.refuse(envelope.message, error)
        return _fail_future(envelope.reply_to, error) or refused

    def _exited(self, reason: BaseException | None) -> None:
        """Report the exit once, after the inbox is closed and what it held refused; runs on
        the actor's thread."""
        if self._exit_reported:
            return
        self._exit_reported = True
        try:
            if reason is not None:
                name = type(self).__name__
                logger.bind(actor=name).opt(exception=reason).error("{} failed: {!r}", name, reason)
                self.fail_pending_messages(reason)
            else:
                self._close_inbox(Restarting(f"{self.label} stopped"), "stopped")
        finally:
            self._report_exit(reason)


class _Inbox(queue.Queue[Any]):
    """A SupervisedActor's inbox, closed as the actor exits (``close``): what is put in it
    after that is handed to ``refuse`` at once, on the sender's thread. pykka's ActorRef.tell
    checks that the actor is alive and then puts, so without this a message could land, after
    that check, in an inbox nobody reads any more."""

    def __init__(self, refuse: Callable[[Any], None]) -> None:
        super().__init__()
        self._refuse = refuse
        self._closed = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Any thread; never blocks (the inbox is unbounded)."""
        with self.mutex:
            if not self._closed:
                self._put(item)
                self.unfinished_tasks += 1
                self.not_empty.notify()
                return
        self._refuse(item)

    def close(self) -> list[Any]:
        """Refuse what is put from now on; take out and return what waits, in order."""
        with self.mutex:
            self._closed = True
            pending = list(self.queue)
            self.queue.clear()
        return pending


def _guard_on_start(hook: Callable[[Any], None]) -> Callable[[SupervisedActor], None]:
    def on_start(self: SupervisedActor) -> None:
        self._await_registration()
        try:
            hook(self)
        except Exception as exc:
            # pykka calls neither on_stop nor on_failure after a failed on_start: on_failure
            # here releases what the start had begun (timers, streams); it reports the exit
            try:
                self.on_failure(type(exc), exc, exc.__traceback__)
            finally:
                self._exited(exc)
            raise

    return on_start


def _guard_on_stop(hook: Callable[[Any], None]) -> Callable[[SupervisedActor], None]:
    def on_stop(self: SupervisedActor) -> None:
        try:
            hook(self)
        except Exception as exc:
            self._exited(exc)
            raise
        self._exited(None)

    return on_stop


def _guard_on_failure(hook: Callable[..., None]) -> Callable[..., None]:
    def on_failure(
        self: SupervisedActor,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            hook(self, exception_type, exception_value, traceback)
        finally:
            self._exited(exception_value)

    return on_failure


_HOOK_GUARDS: dict[str, Callable[[Any], Callable[..., None]]] = {
    "on_start": _guard_on_start,
    "on_stop": _guard_on_stop,
    "on_failure": _guard_on_failure,
}


def _is_stop_request(message: object) -> bool:
    """Whether an inbox message is pykka's own stop request (ActorRef.stop()).

    pykka has no public way to tell: its stop message is the private ``_ActorStop``. This is the
    one place that uses it, so a pykka upgrade that renames it breaks here, visibly.
    """
    return isinstance(message, _ActorStop)


def _fail_future(future: object, error: Unavailable) -> bool:
    """Set ``error`` on a future that is not done yet; anything else is left alone. Whether
    it was set."""
    if isinstance(future, concurrent.futures.Future):
        try:
            future.set_exception(error)
        except concurrent.futures.InvalidStateError:  # done, or cancelled by its sender
            return False
        return True
    if isinstance(future, pykka.Future):
        try:
            future.set_exception((type(error), error, None))
        except queue.Full:  # pykka's "already set"
            return False
        return True
    return False


class _ActorChild:
    """A running SupervisedActor as its supervisor sees it: the ActorRef and how to stop it."""

    ref: pykka.ActorRef[Any]

    def __init__(self, report_exit: ExitReporter) -> None:
        self._report_exit = report_exit
        self._stopping = threading.Event()

    def report(self, reason: BaseException | None) -> None:
        """Pass the actor's exit on, unless it was asked to stop; runs on the actor's thread."""
        if not self._stopping.is_set():
            self._report_exit(reason)

    def stop(self, *, timeout: float) -> None:
        """Stop the actor and wait up to timeout seconds (pykka.Timeout after that)."""
        self._stopping.set()
        self.ref.stop(timeout=timeout)


def actor_child(
    actor_class: type[SupervisedActor], *args: Any, **kwargs: Any
) -> Callable[[ExitReporter], Child]:
    """A ChildSpec start function: ``actor_class.start(report_exit, *args, **kwargs)``.

    The returned Child has the ActorRef as ``.ref``; its stop() stops the actor and waits.
    """

    def start(report_exit: ExitReporter) -> Child:
        child = _ActorChild(report_exit)
        child.ref = actor_class.start(child.report, *args, **kwargs)
        return child

    return start
