"""The link's states and the transitions allowed between them (the offline state machine of a
store-and-forward link: connected / processing / draining map onto CONNECTED; disconnected /
queuing onto BACKOFF), and whether a connect asks for a full or an incremental sync.
Every transition is checked and logged once by LinkStateMachine."""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from edge_sync.link.offline import Offline
from edge_sync.storage.graph_store import SyncState


@dataclass(frozen=True, slots=True)
class RequestSync:
    """To the ConnectionActor: ask the cloud for a sync now (an operator's request). A full one
    is recorded durably first (the next connect asks for it if the link is down, or goes down
    before it completes). With the link CONNECTED, SyncRequestMsg goes on the current stream at
    once; while a sync runs, or within a second of its completion, the request is held and sent
    a second after that sync completes (link/held_sync.py)."""

    full: bool
    reason: str


def edge_version() -> str:
    """This edge's version (the installed package's): a full sync follows a change of it."""
    import edge_sync

    return str(edge_sync.__version__)


def sync_mode(*, stored_edge: uuid.UUID, connected_edge: uuid.UUID, state: SyncState,
              version: str, offline: Offline | None = None) -> tuple[bool, str]:
    """(full, why) for the SyncRequestMsg of an accepted connect: full on the first connect or
    a changed identity (as ThingsBoard Edge does), and whenever the entity graph may not match
    the cloud: a store that never completed a full sync, another edge version than the one of
    the last full sync, damage found, a full sync that did not complete (a crash or a lost
    stream in the middle), a long time offline (``offline``: link/offline.py's verdict, None
    when no contact is recorded or the rule is off), or an operator's request. Else
    incremental (its reason says how long the edge was offline, when known)."""
    nil = uuid.UUID(int=0)
    if stored_edge == nil:
        return True, "first connect (no edge identity stored)"
    if connected_edge != stored_edge:
        return True, f"edge identity changed ({stored_edge} -> {connected_edge})"
    if state.in_progress:
        return True, "the previous full sync did not complete"
    if state.completed_version is None:
        return True, "this store has never completed a full sync"
    if state.completed_version != version:
        return True, (f"edge version changed since the last full sync "
                      f"({state.completed_version} -> {version})")
    if state.damaged is not None:
        return True, f"the store was found damaged ({state.damaged})"
    if offline is not None and offline.full:
        return True, offline.reason
    if state.requested is not None:
        return True, f"requested: {state.requested}"
    why = f"the last full sync completed at version {version}"
    return False, why if offline is None else f"{why}; {offline.reason}"


class LinkState(enum.StrEnum):
    DISCONNECTED = "DISCONNECTED"  # not started yet, or stopped
    CONNECTING = "CONNECTING"  # stream open, ConnectRequestMsg sent, waiting for the answer
    SYNCING = "SYNCING"  # accepted; SyncRequestMsg sent, waiting for SyncCompletedMsg
    CONNECTED = "CONNECTED"  # uplink flowing (processing, or draining a backlog)
    BACKOFF = "BACKOFF"  # the link failed; waiting before the next attempt
    AUTH_FAILED = "AUTH_FAILED"  # bad credentials; retrying only at the maximum backoff


_ALLOWED: dict[LinkState, frozenset[LinkState]] = {
    LinkState.DISCONNECTED: frozenset({LinkState.CONNECTING}),
    LinkState.CONNECTING: frozenset(
        {LinkState.SYNCING, LinkState.BACKOFF, LinkState.AUTH_FAILED, LinkState.DISCONNECTED}),
    LinkState.SYNCING: frozenset(
        {LinkState.CONNECTED, LinkState.BACKOFF, LinkState.DISCONNECTED}),
    LinkState.CONNECTED: frozenset({LinkState.BACKOFF, LinkState.DISCONNECTED}),
    LinkState.BACKOFF: frozenset({LinkState.CONNECTING, LinkState.DISCONNECTED}),
    LinkState.AUTH_FAILED: frozenset({LinkState.CONNECTING, LinkState.DISCONNECTED}),
}


class IllegalTransition(RuntimeError):
    pass


class LinkStateMachine:
    def __init__(self, on_change: Callable[[LinkState, LinkState, str], None] | None = None):
        self.state = LinkState.DISCONNECTED
        self._on_change = on_change
        self.transitions = 0

    def to(self, new: LinkState, reason: str) -> None:
        old = self.state
        if new is old:
            return
        if new not in _ALLOWED[old]:
            raise IllegalTransition(f"link: {old} -> {new} is not allowed ({reason})")
        self.state = new
        self.transitions += 1
        level = "WARNING" if new in (LinkState.BACKOFF,) else (
            "ERROR" if new is LinkState.AUTH_FAILED else "INFO")
        logger.bind(component="link", old_state=old.value, state=new.value).log(
            level, "link {} -> {}: {}", old.value, new.value, reason)
        if self._on_change:
            self._on_change(old, new, reason)


class StatusBoard:
    """The link's latest status snapshot: replaced whole by the ConnectionActor (one writer),
    read by status views on any thread. The actor publishes only when something changes (it
    does not tick), so the countdown to the next connection attempt and the time the link has
    been down are computed at each read from the instants published with the snapshot."""

    def __init__(self) -> None:
        self._published: tuple[dict[str, object], float | None, float | None,
                               Callable[[], float]] = (
            {"state": LinkState.DISCONNECTED.value}, None, None, time.monotonic)

    def publish(self, snapshot: dict[str, object], *, next_attempt_at: float | None = None,
                down_since: float | None = None,
                monotonic: Callable[[], float] = time.monotonic) -> None:
        """Replace the snapshot; next_attempt_at and down_since (on ``monotonic``'s clock) fill
        ``next_attempt_in_s`` and ``down_for_s`` at every read."""
        self._published = (snapshot, next_attempt_at, down_since, monotonic)

    @property
    def value(self) -> dict[str, object]:
        snapshot, next_attempt_at, down_since, monotonic = self._published
        if next_attempt_at is None and down_since is None:
            return snapshot
        now = monotonic()
        out = dict(snapshot)
        if next_attempt_at is not None:
            out["next_attempt_in_s"] = round(max(0.0, next_attempt_at - now), 1)
        if down_since is not None:
            out["down_for_s"] = round(max(0.0, now - down_since), 1)
        return out

    @value.setter
    def value(self, snapshot: dict[str, object]) -> None:
        self.publish(snapshot)
