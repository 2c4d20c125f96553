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
        """Whether the session holds anything that must outlive an idle entity (open requests
        or live waiters): such an entity is not passivated."""
        self.prune()
        return bool(len(self.rpc) or self.rpc_waiters or self.attribute_waiters
                    or self.fetch_waiters)

    def next_rpc_waiter(self) -> Subscriber | None:
        """The oldest waiter still waiting, claimed for one request."""
        while self.rpc_waiters:
            waiter = self.rpc_waiters.popleft()
            if waiter.claim():
                return waiter
        return None

    def publish_attributes(self, update: dict[str, Any]) -> int:
        """Hand a shared attribute update to every waiting long poll; how many took it."""
        waiters, self.attribute_waiters = self.attribute_waiters, []
        taken = 0
        for waiter in waiters:
            if waiter.claim():
                waiter.resolve(update)
                taken += 1
        return taken

    def wake_fetchers(self) -> int:
        """Shared attributes came from the cloud: every waiting request reads the store again."""
        waiters, self.fetch_waiters = self.fetch_waiters, []
        woken = 0
        for waiter in waiters:
            if waiter.claim():
                waiter.resolve(True)
                woken += 1
        return woken

    def prune(self) -> None:
        """Forget waiters that stopped waiting (timed out, disconnected)."""
        if any(not w.live for w in self.rpc_waiters):
            self.rpc_waiters = deque(w for w in self.rpc_waiters if w.live)
        self.attribute_waiters = [w for w in self.attribute_waiters if w.live]
        self.fetch_waiters = [w for w in self.fetch_waiters if w.live]
