"""One device's session state, transport-neutral: its open RPC requests, who waits for the next
one, who waits for shared attribute updates, who waits for an answer from the cloud, and when to
ask the cloud again. It belongs to the device's entity actor (one thread); subscribers are
resolved from there (they are safe to resolve from any thread).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from edge_sync.devices.fetch import FetchPolicy
from edge_sync.devices.rpc import RpcBook
from edge_sync.devices.subscribers import Subscriber


class DeviceSession:
    __slots__ = ("attribute_waiters", "fetch", "fetch_waiters", "rpc", "rpc_waiters")

    def __init__(self) -> None:
        self.rpc = RpcBook()
        self.rpc_waiters: deque[Subscriber] = deque()
        self.attribute_waiters: list[Subscriber] = []
        self.fetch_waiters: list[Subscriber] = []
        self.fetch = FetchPolicy()

    @property
    def busy(self) -> bool:
        """Whether the session holds anything that must outlive an idle entity (open requests,
        records to try again, or live waiters): such an entity is not passivated."""
        self.prune()
        return bool(len(self.rpc) or self.rpc.unrecorded_count or self.rpc_waiters or self.attribute_waiters
                    or self.fetch_waiters)

    def next_rpc_waiter(self) -> Subscriber | None:
        """The newest waiter still waiting, claimed for one request. The newest, because an
        older waiter of the same device is the likelier to be gone unnoticed: its device has
        polled or subscribed again since (an HTTP client that gave up, or a connection left
        half-open when the device reconnected under another client id, alive for the server
        until 1.5 times its keep-alive has passed). A long poll is done with its one request
        and leaves the line; a subscriber that stays live after a claim (a connected
        transport's standing subscription) keeps its place at the newest end, so every request
        goes to it until a newer waiter comes or it ends. (It used to go to the back of the
        line: with two subscribed connections of one device every other request went to the
        older one, DELIVERED to a dead socket and then TIMEOUT. ThingsBoard keeps one session
        per device and closes the older ones.)"""
        waiters = self.rpc_waiters
        while waiters:
            waiter = waiters[-1]
            if waiter.claim():
                if not waiter.live:  # a long poll: one request
                    waiters.pop()
                return waiter
            waiters.pop()  # gone: timed out, disconnected, closed
        return None

    def publish_attributes(self, update: dict[str, Any]) -> int:
        """Hand a shared attribute update to every waiting subscriber; how many took it. Long
        polls are done with it; subscriptions stay."""
        return _hand_out(self.attribute_waiters, update)

    def wake_fetchers(self) -> int:
        """Shared attributes came from the cloud: every waiting request reads the store again."""
        return _hand_out(self.fetch_waiters, True)

    def prune(self) -> None:
        """Forget waiters that stopped waiting (timed out, disconnected)."""
        if any(not w.live for w in self.rpc_waiters):
            self.rpc_waiters = deque(w for w in self.rpc_waiters if w.live)
        self.attribute_waiters = [w for w in self.attribute_waiters if w.live]
        self.fetch_waiters = [w for w in self.fetch_waiters if w.live]


def _hand_out(waiters: list[Subscriber], value: Any) -> int:
    """Resolve every subscriber of ``waiters`` that takes ``value``; keep those still live."""
    taken = 0
    for waiter in waiters:
        if waiter.claim():
            waiter.resolve(value)
            taken += 1
    waiters[:] = [w for w in waiters if w.live]
    return taken
